"""Judging a shadow (candidate) model against the live one (docs/architecture.md, "Shadow").

Pure: no sockets, no clocks. The worker records, for every window both models
answered, the two labels; :class:`Judge` keeps the last ``period_ns`` of them and,
given the label messages seen so far (:class:`streamfuse.train.labels.LabelStream`),
reports agreement on every window and each model's accuracy on the windows that
carry a label (the trainer's rule: a label covering more than half of the window).
Labels are looked up when the figures are computed, so a label sent a little
after its window (a person reacts late) still counts.

:class:`PromoteRule` is ``fusion.promote_if``:
``"accuracy on at least N labelled windows beats live by P points"``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from streamfuse.config import PROMOTE_IF_FORM, PROMOTE_IF_RE
from streamfuse.train.labels import Labeller, LabelStream


@dataclass(frozen=True)
class Verdict:
    """Figures over the judged period. Accuracies are None without labelled windows."""

    windows: int
    agreement: float | None
    labelled: int
    live_accuracy: float | None
    shadow_accuracy: float | None


@dataclass(frozen=True)
class _Answer:
    source: str
    t_start_ns: int
    t_end_ns: int
    live: str
    shadow: str
    at_ns: int


class Judge:
    """Live vs shadow answers over a sliding period of ``period_ns`` (of answer time)."""

    def __init__(self, period_ns: int) -> None:
        self.period_ns = period_ns
        self.labels = LabelStream()
        self._labeller = Labeller()
        self._answers: deque[_Answer] = deque()

    def label(
        self, source: str, t_ns: int, t_end_ns: int, label: str, *, stop: bool = False
    ) -> None:
        """A label message of ``source`` (in arrival order)."""
        self.labels.push(source, t_ns, t_end_ns, label, stop=stop)

    def answer(
        self, source: str, t_start_ns: int, t_end_ns: int, live: str, shadow: str, now_ns: int
    ) -> None:
        self._answers.append(_Answer(source, t_start_ns, t_end_ns, live, shadow, now_ns))
        self._evict(now_ns)

    def reset(self) -> None:
        """Forget the answers (the models changed); labels stay."""
        self._answers.clear()

    def _evict(self, now_ns: int) -> None:
        while self._answers and self._answers[0].at_ns < now_ns - self.period_ns:
            self._answers.popleft()

    def verdict(self, now_ns: int) -> Verdict:
        self._evict(now_ns)
        for source in self.labels.changed:
            self._labeller.replace(source, self.labels.spans[source])
        self.labels.changed.clear()
        n = len(self._answers)
        agree = labelled = live_ok = shadow_ok = 0
        for a in self._answers:
            agree += a.live == a.shadow
            truth = self._labeller.label(a.source, a.t_start_ns, a.t_end_ns)
            if truth is not None:
                labelled += 1
                live_ok += a.live == truth
                shadow_ok += a.shadow == truth
        return Verdict(
            n,
            agree / n if n else None,
            labelled,
            live_ok / labelled if labelled else None,
            shadow_ok / labelled if labelled else None,
        )


@dataclass(frozen=True)
class PromoteRule:
    """Promote when the shadow's accuracy on at least ``min_labelled`` labelled windows
    beats the live model's by ``margin_points`` percentage points or more."""

    min_labelled: int
    margin_points: float

    @classmethod
    def parse(cls, text: str) -> PromoteRule | None:
        """None for ``""`` (off); ValueError for anything not in :data:`RULE_FORM`."""
        if not text.strip():
            return None
        m = PROMOTE_IF_RE.match(text)
        if m is None:
            raise ValueError(f"expected {PROMOTE_IF_FORM!r} (e.g. N = 200, P = 1), got {text!r}")
        return cls(int(m.group(1)), float(m.group(2)))

    def met(self, v: Verdict) -> bool:
        if v.labelled < self.min_labelled or v.live_accuracy is None or v.shadow_accuracy is None:
            return False
        return 100 * (v.shadow_accuracy - v.live_accuracy) >= self.margin_points
