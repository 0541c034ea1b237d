"""Ground-truth labels: the CSV format, its validation, and which label a window gets.

CSV (README.md, "Train on your own data"): a header line ``source,start,end,label`` then one
row per labelled span ``[start, end)``. Times are either

- absolute epoch nanoseconds, written as integers (what ``streamfuse dataset``
  writes); any integer of 10^15 or more is read this way, or
- seconds (integer or decimal) from the first message of that source in the
  recordings given (for one recording per source: the recording's first message).

A file uses one of the two forms throughout. Rows of one source must be sorted
by ``start`` and must not overlap (rows of different sources may interleave).
Every problem is a :class:`LabelError` naming the file and line:
``labels.csv:17: overlaps line 16 (room1 ...)``.

Window labels (the boundary rule): a window ``[t0, t1)`` takes the label whose
spans cover most of it, and only when that label covers **more than half** of
the window; otherwise (a window on a boundary between two labels split 50/50,
or mostly unlabelled) it gets no label and is left out of training and
evaluation. Ties cannot pass the rule, so the outcome never depends on order.
"""

from __future__ import annotations

import bisect
import csv
import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Protocol, TypeVar

from streamfuse.clock import NS_PER_S
from streamfuse.config import read_text

ABSOLUTE_MIN = 10**15  # integers at least this large are epoch ns (1970-01-12 onwards)
HEADER = ["source", "start", "end", "label"]
# A label may end a little after the source's last message: its last audio block
# or frame covers time after its own t_ns.
RANGE_SLACK_NS = 1 * NS_PER_S


class LabelError(ValueError):
    """A bad label file or row; ``str()`` names ``file:line``."""


@dataclass(frozen=True)
class Span:
    """One labelled interval ``[start_ns, end_ns)`` of a source (absolute epoch ns)."""

    source: str
    start_ns: int
    end_ns: int
    label: str
    line: int = 0


@dataclass(frozen=True)
class _Row:
    source: str
    start: Decimal
    end: Decimal
    label: str
    line: int
    absolute: bool


def parse_rows(text: str, name: str = "labels.csv") -> list[_Row]:
    """Syntax, order and overlap checks; times still in the file's unit."""
    rows: list[_Row] = []
    reader = csv.reader(io.StringIO(text))
    header_seen = False
    form: bool | None = None  # True: absolute ns
    last: dict[str, _Row] = {}
    for fields in reader:
        line = reader.line_num
        if not fields or all(not f.strip() for f in fields):
            continue
        fields = [f.strip() for f in fields]
        if not header_seen:
            if [f.lower() for f in fields] != HEADER:
                raise LabelError(f"{name}:{line}: expected the header 'source,start,end,label', "
                                 f"got {','.join(fields)!r}")
            header_seen = True
            continue
        if len(fields) != 4:
            raise LabelError(f"{name}:{line}: expected 4 fields (source,start,end,label), "
                             f"got {len(fields)}")
        source, s_start, s_end, label = fields
        if not source:
            raise LabelError(f"{name}:{line}: empty source")
        if not label:
            raise LabelError(f"{name}:{line}: empty label")
        start, end = _number(s_start, name, line, "start"), _number(s_end, name, line, "end")
        absolute = _is_absolute(s_start, start) and _is_absolute(s_end, end)
        if form is None:
            form = absolute
        elif absolute != form:
            raise LabelError(f"{name}:{line}: mixes absolute t_ns and seconds "
                             f"(line {rows[0].line} uses {'t_ns' if form else 'seconds'})")
        if start < 0:
            raise LabelError(f"{name}:{line}: out of range: negative start {s_start}")
        if end <= start:
            raise LabelError(f"{name}:{line}: end {s_end} is not after start {s_start}")
        row = _Row(source, start, end, label, line, absolute)
        prev = last.get(source)
        if prev is not None:
            if start < prev.start:
                raise LabelError(f"{name}:{line}: unsorted: {source} starts at {s_start}, "
                                 f"before line {prev.line} ({prev.start}); "
                                 "sort rows by start within each source")
            if start < prev.end:
                raise LabelError(f"{name}:{line}: overlaps line {prev.line} "
                                 f"({source} [{prev.start}, {prev.end}) and [{s_start}, {s_end}))")
        last[source] = row
        rows.append(row)
    if not header_seen:
        raise LabelError(f"{name}:1: empty label file "
                         "(expected the header 'source,start,end,label')")
    return rows


def _number(s: str, name: str, line: int, what: str) -> Decimal:
    try:
        v = Decimal(s)
    except InvalidOperation:
        raise LabelError(f"{name}:{line}: {what} {s!r} is not a number") from None
    if not v.is_finite():
        raise LabelError(f"{name}:{line}: {what} {s!r} is not a finite number")
    return v


def _is_absolute(s: str, v: Decimal) -> bool:
    return s.lstrip("+-").isdigit() and v >= ABSOLUTE_MIN


def resolve(rows: Iterable[_Row], ranges: Mapping[str, tuple[int, int]],
            name: str = "labels.csv") -> list[Span]:
    """Absolute spans, checked against the recordings' ``{source: (first_t_ns, last_t_ns)}``.

    A row naming a source with no messages, or lying outside that source's
    time range (plus :data:`RANGE_SLACK_NS` at the end), is an error.
    """
    spans = []
    known = ", ".join(sorted(ranges)) or "none"
    for r in rows:
        if r.source not in ranges:
            raise LabelError(f"{name}:{r.line}: unknown source {r.source!r} "
                             f"(the recordings have {known})")
        first, last = ranges[r.source]
        if r.absolute:
            start, end = int(r.start), int(r.end)
        else:
            start = first + int((r.start * NS_PER_S).to_integral_value())
            end = first + int((r.end * NS_PER_S).to_integral_value())
        if start < first or end > last + RANGE_SLACK_NS:
            raise LabelError(f"{name}:{r.line}: out of range: [{start}, {end}) ns is outside "
                             f"{r.source}'s recordings [{first}, {last}] ns")
        spans.append(Span(r.source, start, end, r.label, r.line))
    return spans


def read_labels(path: str | Path, ranges: Mapping[str, tuple[int, int]]) -> list[Span]:
    """Read and fully validate a label CSV (raises :class:`LabelError`)."""
    p = Path(path)
    return resolve(parse_rows(read_text(p, LabelError), p.name), ranges, p.name)


class Labeller:
    """Answers which label a window gets (the majority rule of the module docstring)."""

    def __init__(self, spans: Iterable[Span] = ()) -> None:
        self._by_source: dict[str, list[Span]] = {}
        self._starts: dict[str, list[int]] = {}
        self.add(spans)

    def replace(self, source: str, spans: Iterable[Span]) -> None:
        """Make ``spans`` (disjoint) the whole of ``source``'s labels."""
        self._by_source[source] = sorted(spans, key=lambda s: s.start_ns)
        self._starts[source] = [s.start_ns for s in self._by_source[source]]

    def add(self, spans: Iterable[Span]) -> None:
        """Add spans (e.g. label messages as they are read)."""
        touched = set()
        for s in spans:
            self._by_source.setdefault(s.source, []).append(s)
            touched.add(s.source)
        for src in touched:
            self._by_source[src].sort(key=lambda s: s.start_ns)
            self._starts[src] = [s.start_ns for s in self._by_source[src]]

    @property
    def classes(self) -> list[str]:
        return sorted({s.label for lst in self._by_source.values() for s in lst})

    def coverage(self, source: str, t0: int, t1: int) -> dict[str, int]:
        """Nanoseconds of ``[t0, t1)`` covered by each label."""
        lst = self._by_source.get(source, [])
        out: dict[str, int] = {}
        # Spans are sorted and disjoint: only those starting before t1 and ending after t0 overlap.
        i = max(0, bisect.bisect_right(self._starts.get(source, []), t0) - 1)
        while i < len(lst) and lst[i].start_ns < t1:
            s = lst[i]
            overlap = min(t1, s.end_ns) - max(t0, s.start_ns)
            if overlap > 0:
                out[s.label] = out.get(s.label, 0) + overlap
            i += 1
        return out

    def label(self, source: str, t0: int, t1: int) -> str | None:
        """The label covering more than half of ``[t0, t1)``, else None."""
        cov = self.coverage(source, t0, t1)
        if not cov:
            return None
        best = max(cov, key=lambda k: cov[k])
        return best if 2 * cov[best] > (t1 - t0) else None


# ----------------------------------------------------------------------------- label messages

OPEN_END_NS = 1 << 62  # the end of an open-ended span until a later message ends it
# A CSV and a label stream may differ this much where their spans meet (a person labelling
# live presses a key a little late) before they are said to disagree.
AGREE_SLACK_NS = NS_PER_S // 2


class LabelStream:
    """Label messages (docs/protocol.md, "label") -> disjoint spans per source.

    Messages are pushed in ``t_ns`` order. Each one ends, at its ``t_ns``, every span of
    its source still running then; a span message adds ``[t_ns, t_end_ns)``, an
    open-ended one ``[t_ns, ...)`` (its end is :data:`OPEN_END_NS` until a later
    message or :meth:`finish` sets it), a stop adds nothing.
    """

    def __init__(self) -> None:
        self.spans: dict[str, list[Span]] = {}
        self.changed: set[str] = set()

    def push(self, source: str, t_ns: int, t_end_ns: int, label: str, *,
             stop: bool = False) -> None:
        kept = [s if s.end_ns <= t_ns else replace(s, end_ns=t_ns)
                for s in self.spans.get(source, []) if s.start_ns < t_ns]
        if not stop:
            kept.append(Span(source, t_ns, t_end_ns or OPEN_END_NS, label))
        self.spans[source] = kept
        self.changed.add(source)

    def finish(self, ranges: Mapping[str, tuple[int, int]]) -> list[Span]:
        """Every span, open-ended ones ended at their source's last message (``ranges``)."""
        out = []
        for source, lst in self.spans.items():
            last = ranges.get(source, (0, 0))[1]
            for s in lst:
                if s.end_ns == OPEN_END_NS:
                    s = replace(s, end_ns=max(last, s.start_ns))
                if s.end_ns > s.start_ns:
                    out.append(s)
        return sorted(out, key=lambda s: (s.source, s.start_ns))


def check_agree(csv_spans: Iterable[Span], stream_spans: Iterable[Span],
                name: str = "labels.csv") -> None:
    """Raise :class:`LabelError` where a CSV row and the label stream give a span two
    different labels for more than :data:`AGREE_SLACK_NS`."""
    stream = Labeller(stream_spans)
    for r in csv_spans:
        for label, ns in stream.coverage(r.source, r.start_ns, r.end_ns).items():
            if label != r.label and ns > AGREE_SLACK_NS:
                raise LabelError(
                    f"{name}:{r.line}: {r.source} [{r.start_ns}, {r.end_ns}) is {r.label!r} in "
                    f"the CSV but {label!r} for {ns / NS_PER_S:.3f} s of it in the recordings' "
                    "label stream")


class _Started(Protocol):
    @property
    def start(self) -> int: ...


R = TypeVar("R", bound=_Started)


def read_rows_by_source(paths: Sequence[Path], make: Callable[[dict[str, str]], R], *,
                        columns: Sequence[str] = ("source", "start", "end"),
                        error: type[ValueError] = ValueError) -> dict[str, list[R]]:
    """Each row of the CSV files ``paths`` made into ``make(row)`` (which has a ``start``),
    grouped by the row's ``source`` and sorted by ``start``. Raises ``error``
    naming the file and line: line 1 for the first of ``columns`` missing, a row's line
    where ``make`` raised ``TypeError`` or ``ValueError``."""
    out: dict[str, list[R]] = {}
    for path in paths:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise error(f"{path}:1: missing column {missing[0]!r}")
            for r in reader:
                try:
                    row = make(r)
                except (TypeError, ValueError) as e:
                    raise error(f"{path}:{reader.line_num}: {e}") from None
                out.setdefault(r["source"], []).append(row)
    for rows in out.values():
        rows.sort(key=lambda row: row.start)
    return out
