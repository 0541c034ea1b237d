"""Recordings + labels -> labelled, featurised windows (the trainer's and eval's input).

Windows come from :func:`streamfuse.align.offline.windows_from_messages` with
the config's ``[align]`` parameters: the same code and parameters as the live
aligner, so the trainer sees exactly the windows the daemon would (docs/architecture.md,
"Time"). Each window is labelled by :class:`streamfuse.train.labels.Labeller`
(a label must cover more than half of the window; other windows are counted as
``unlabelled`` and left out), then featurised once with the fusion package's
``collate`` + ``to_device`` on the CPU and kept in memory as one
:class:`~streamfuse.fusion.features.Features`.

Labels come from, in this order: the ``labels`` file given; else every
``labels.csv`` directly inside the directories given as recordings (the
``streamfuse dataset`` layout); else label messages (``<source>/label``)
inside the recordings (open-ended ones end at the source's next label message,
a stop, or the source's last message). A CSV is checked for syntax, order and
overlaps before anything is read, and against the recordings' sources and time
ranges after; when the recordings also carry label messages, a span the two label
differently is an error naming both (:func:`streamfuse.train.labels.check_agree`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from streamfuse import clock
from streamfuse.config import AlignConfig, read_text
from streamfuse.fusion.features import MODALITIES, Features, Preprocessing, collate, to_device
from streamfuse.progress import Progress
from streamfuse.train import labels as lab
from streamfuse.wire.schema import LabelHeader, Message, Window

log = logging.getLogger("streamfuse.train")

CAPTURE_STREAMS = ("video", "audio", "text")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FEATURISE_CHUNK = 256  # windows collated at a time (bounds the memory of raw windows)


class DataError(ValueError):
    """Recordings or labels that cannot make a data set (one clear line)."""


@dataclass
class WindowSet:
    """Featurised, labelled windows.

    features: CPU :class:`Features` of N windows; y: ``(N,)`` int64 class
    indices into ``classes``; keys: ``(source, t_start_ns)`` per window;
    summary: counts for the artifact manifest and reports.
    """

    features: Features
    y: torch.Tensor
    keys: list[tuple[str, int]]
    classes: list[str]
    summary: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.y.shape[0])


def class_order(names: Iterable[str]) -> list[str]:
    """Number words (zero..nine) or integers in numeric order, anything else alphabetically."""
    names = sorted(set(names))
    if names and all(n in NUMBER_WORDS for n in names):
        return sorted(names, key=NUMBER_WORDS.index)
    if names and all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return names


# ----------------------------------------------------------------------------- features


def concat_features(parts: Sequence[Features]) -> Features:
    """Rows of several :class:`Features` in order (token offsets shifted)."""
    if not parts:
        raise ValueError("nothing to concatenate")
    offsets, shift = [], 0
    for p in parts:
        offsets.append(p.offsets + shift)
        shift += int(p.tokens.numel())
    return Features(frames=torch.cat([p.frames for p in parts]),
                    logmel=torch.cat([p.logmel for p in parts]),
                    tokens=torch.cat([p.tokens for p in parts]), offsets=torch.cat(offsets),
                    mask=torch.cat([p.mask for p in parts]))


def select_features(f: Features, rows: torch.Tensor) -> Features:
    """The sub-batch ``rows`` (1-D int64, any order) of ``f``; works on any device."""
    rows = rows.to(f.mask.device)
    ends = torch.cat([f.offsets[1:], torch.tensor([f.tokens.numel()], device=f.offsets.device)])
    starts, stops = f.offsets[rows], ends[rows]
    lengths = stops - starts
    if int(lengths.sum()) > 0:
        # Gather every selected row's token range in one indexing operation.
        new_offsets = torch.cumsum(lengths, 0) - lengths
        pos = torch.arange(int(lengths.sum()), device=f.tokens.device)
        owner = torch.repeat_interleave(torch.arange(len(rows), device=pos.device), lengths)
        tokens = f.tokens[starts[owner] + pos - new_offsets[owner]]
    else:
        new_offsets = torch.zeros(len(rows), dtype=torch.int64, device=f.offsets.device)
        tokens = f.tokens[:0]
    return Features(frames=f.frames[rows], logmel=f.logmel[rows], tokens=tokens,
                    offsets=new_offsets, mask=f.mask[rows])


# ----------------------------------------------------------------------------- loading


def find_label_files(recordings: Sequence[str | Path]) -> list[Path]:
    """``labels.csv`` of every directory among ``recordings``."""
    return [Path(p) / "labels.csv" for p in recordings
            if Path(p).is_dir() and (Path(p) / "labels.csv").exists()]


class _Tap:
    """Passes capture messages on to the aligner; notes each source's time range
    and collects label messages on the way."""

    def __init__(self, messages: Iterable[Message]) -> None:
        self._it = messages
        self.ranges: dict[str, tuple[int, int]] = {}
        self.labels = lab.LabelStream()
        self.n_label_messages = 0
        self.counts: Counter[str] = Counter()

    def __iter__(self) -> Iterator[Message]:
        for m in self._it:
            h = m.header
            if isinstance(h, LabelHeader):
                self.labels.push(h.source, h.t_ns, h.t_end_ns, h.label, stop=h.stop)
                self.n_label_messages += 1
                continue
            if h.stream not in CAPTURE_STREAMS:
                continue
            first, last = self.ranges.get(h.source, (h.t_ns, h.t_ns))
            self.ranges[h.source] = (min(first, h.t_ns), max(last, h.t_ns))
            self.counts[m.kind] += 1
            yield m


class _LazyLabeller:
    """Labels windows as they stream out of the aligner.

    CSV rows in seconds are resolved per source once that source's first
    message has passed (its windows only come after it); label messages are
    added as they are read (a span overlapping a window starts before the
    window's end, so it is read before the window closes).
    """

    def __init__(self, rows: list[Any] | None, tap: _Tap) -> None:
        self.rows = rows
        self.tap = tap
        self.labeller = lab.Labeller()
        self._resolved: set[str] = set()

    def label(self, w: Window) -> str | None:
        if self.rows is None:
            stream = self.tap.labels
            for source in stream.changed:
                self.labeller.replace(source, stream.spans[source])
            stream.changed.clear()
        elif w.source not in self._resolved:
            self._resolved.add(w.source)
            first = self.tap.ranges.get(w.source, (w.t_start_ns, w.t_start_ns))[0]
            mine = [r for r in self.rows if r.source == w.source]
            # Only the start is known now; the whole range is checked once everything is read.
            self.labeller.add(lab.resolve(mine, {w.source: (first, 1 << 62)}))
        return self.labeller.label(w.source, w.t_start_ns, w.t_end_ns)


def _recording_files(recordings: Sequence[str | Path]) -> list[Path]:
    """The ``*.mcap`` files ``recordings`` name, refused when two hold one topic at once."""
    from streamfuse.record.reader import RecordingError, check_disjoint, expand_paths

    try:
        files = expand_paths(recordings)
        check_disjoint(files)
    except RecordingError as e:
        raise DataError(str(e)) from None
    if not files:
        raise DataError(f"no *.mcap recordings in {', '.join(map(str, recordings))}")
    return files


def _label_rows(labels: str | Path | None,
                recordings: Sequence[str | Path]) -> tuple[list[Path], list[Any] | None]:
    """The label CSVs (``labels``, else ``labels.csv`` beside the recordings) and their rows;
    None when there is no CSV (the labels are then the recordings' label messages)."""
    label_files = [Path(labels)] if labels else find_label_files(recordings)
    if not label_files:
        return [], None
    rows: list[Any] = []
    for lf in label_files:
        text = read_text(lf, DataError)
        rows += lab.parse_rows(text, lf.name if len(label_files) == 1 else str(lf))
    return label_files, rows


class _Collector:
    """Labelled windows, featurised ``FEATURISE_CHUNK`` at a time (a window's frames are
    dropped as soon as its features exist)."""

    def __init__(self, prep: Preprocessing) -> None:
        self.prep = prep
        self.chunks: list[Features] = []
        self.ys: list[str] = []
        self.keys: list[tuple[str, int]] = []
        self.pending: list[Window] = []
        self.stats: Counter[str] = Counter()
        self.problems: Counter[str] = Counter()

    def add(self, w: Window, name: str) -> None:
        self.pending.append(w)
        self.ys.append(name)
        self.keys.append((w.source, w.t_start_ns))
        if len(self.pending) >= FEATURISE_CHUNK:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            raw = collate(self.pending, self.prep)
            for p in raw.problems:
                self.problems[p.split(": ")[1] if ": " in p else p] += 1
            self.chunks.append(to_device(raw, self.prep, "cpu"))
            self.pending.clear()


def _collect(tap: _Tap, align: AlignConfig, labeller: _LazyLabeller, out: _Collector,
             classes: Sequence[str] | None, span: tuple[int, int] | None) -> None:
    """Align the recordings' messages into windows and keep the labelled ones in ``out``."""
    from streamfuse.align.offline import windows_from_messages

    stats = out.stats
    total_s = (span[1] - span[0]) / clock.NS_PER_S if span else None
    bar = Progress("windows from recordings", total_s, unit="s", enabled=span is not None)
    for w in windows_from_messages(tap, align):
        stats["windows"] += 1
        if span is not None:
            bar.advance_to(max(0, min(w.t_end_ns, span[1]) - span[0]) / clock.NS_PER_S)
        name = labeller.label(w)
        if name is None:
            stats["unlabelled"] += 1
        elif classes is not None and name not in classes:
            stats["unknown_label"] += 1
        else:
            out.add(w, name)
    out.flush()
    bar.set_note(f"{stats['windows']} windows")
    if bar.total is not None:
        bar.advance_to(bar.total)  # all read: the last window ends before the files' tails
    bar.close()


def load_windows(recordings: Sequence[str | Path], align: AlignConfig, prep: Preprocessing, *,
                 labels: str | Path | None = None, classes: Sequence[str] | None = None,
                 progress: bool = False) -> WindowSet:
    """Read, align, label and featurise (see the module docstring).

    ``classes``: the class list to index into (a model's); windows whose label
    is not in it are counted as ``unknown_label`` and left out. None: the
    classes found in the labels, in :func:`class_order`.
    ``progress``: show how much of the recordings' time span has been read
    (:class:`streamfuse.progress.Progress`).
    Raises :class:`DataError` / :class:`streamfuse.train.labels.LabelError`.
    """
    from streamfuse.record.reader import read_messages, time_range

    files = _recording_files(recordings)
    label_files, rows = _label_rows(labels, recordings)
    if rows is not None and classes is None:
        classes = class_order(r.label for r in rows)
    errors: Counter[str] = Counter()
    tap = _Tap(read_messages(files, errors=errors))
    out = _Collector(prep)
    _collect(tap, align, _LazyLabeller(rows, tap), out, classes,
             time_range(files) if progress else None)
    stream_spans = tap.labels.finish(tap.ranges)
    if rows is not None:  # now every source's full time range is known
        name = label_files[0].name if len(label_files) == 1 else "labels"
        spans = lab.resolve(rows, tap.ranges, name)
        lab.check_agree(spans, stream_spans, name)
    else:
        spans = stream_spans
        if not tap.n_label_messages:
            raise DataError(f"no labels: pass --labels, put labels.csv beside the recordings, or "
                            f"record <source>/label messages ({', '.join(map(str, recordings))})")
        if classes is None:
            classes = class_order(s.label for s in spans)
            out.stats["unknown_label"] = 0
    assert classes is not None
    if not out.ys:
        raise DataError(f"no labelled windows in {', '.join(map(str, recordings))} "
                        f"({out.stats['windows']} windows, {out.stats['unlabelled']} unlabelled)")
    index = {c: i for i, c in enumerate(classes)}
    y = torch.tensor([index[n] for n in out.ys], dtype=torch.int64)
    features = concat_features(out.chunks)
    summary = _summary(files, label_files, tap, errors, out, len(spans), classes, y, features)
    return WindowSet(features, y, out.keys, list(classes), summary)


def _summary(files: list[Path], label_files: list[Path], tap: _Tap, errors: Counter[str],
             out: _Collector, n_spans: int, classes: Sequence[str], y: torch.Tensor,
             features: Features) -> dict[str, Any]:
    """What :attr:`WindowSet.summary` says of the data (an artifact's manifest keeps it)."""
    mask = features.mask
    return {
        "recordings": [str(f) for f in files],
        "label_files": [str(f) for f in label_files] or ["<label messages>"],
        "sources": sorted(tap.ranges),
        "messages": dict(tap.counts),
        "reader_errors": dict(errors),
        "windows": out.stats["windows"],
        "labelled": len(out.ys),
        "unlabelled": out.stats["unlabelled"],
        "unknown_label": out.stats["unknown_label"],
        "label_spans": n_spans,
        "per_class": {c: int((y == i).sum()) for i, c in enumerate(classes)},
        "present": {m: int(mask[:, j].sum()) for j, m in enumerate(MODALITIES)},
        "feature_problems": dict(out.problems),
    }
