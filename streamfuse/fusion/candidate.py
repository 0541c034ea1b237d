"""The fusion worker's shadow model: load it, answer beside the live model, judge, promote.

The worker hands every batch the live model answered to :meth:`ShadowRunner.answer`,
*after* publishing the live classifications, so the shadow adds its own inference time
to the next batch's wait and nothing to the batch it judges. Its answers go to
``shadow/<source>`` (never ``class/``), with the same JSON as a classification plus
``"live": {"label", "model"}``. Label messages (``<source>/label``, subscribed per
source as its windows arrive) feed the :class:`~streamfuse.fusion.shadow.Judge`, whose
figures are exported once a second (``streamfuse_shadow_agreement_ratio``,
``streamfuse_labelled_accuracy_ratio{role}``) and checked against ``fusion.promote_if``.

A shadow that cannot be loaded, or does not fit the config (aligner parameters,
modalities), is logged and not run; the live model is not touched. A shadow with the
live model's id (after a promotion, ``fusion.shadow`` names the new live model) is idle.

Bounded per source like the worker: labels are subscribed to for the sources with a
name of their own in the worker's :class:`~streamfuse.names.NameTable` (configured ones
and the first ``MAX_NAMES`` others; the windows of later names are judged as unlabelled),
the ``source`` metric label is folded by that table, and the ``seq`` of ``shadow/<source>``
is kept for the ``SEQ_SOURCES_MAX`` sources answered most recently.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import msgspec
import torch
import zmq

from streamfuse import clock, metrics
from streamfuse.config import Config, runtime_dir
from streamfuse.fusion import store
from streamfuse.fusion.artifact import ArtifactError, LoadedModel
from streamfuse.fusion.batcher import Pending
from streamfuse.fusion.features import FrameSource
from streamfuse.fusion.shadow import Judge, PromoteRule, Verdict
from streamfuse.names import MAX_NAMES, NameTable, put_recent
from streamfuse.wire import codec, topics
from streamfuse.wire.schema import LabelHeader

log = logging.getLogger("streamfuse.fuse")
JUDGE_EVERY_NS = clock.NS_PER_S
SEQ_SOURCES_MAX = 4 * MAX_NAMES  # as the worker's (streamfuse.fusion.node)


class ShadowRunner:
    """State of one worker's shadow. ``labels``: a SUB on ``bus.output`` (no subscriptions
    yet); ``pub``: where the answers go; ``frames``: the worker's frame source (frames by
    reference, decoded once for the live model and the shadow); ``names``: the worker's
    table of source names (default: one of the configured sources)."""

    def __init__(
        self, cfg: Config, device: torch.device, pub: zmq.Socket, labels: zmq.Socket | None,
        *, frames: FrameSource | None = None, names: NameTable | None = None,
    ) -> None:
        self.cfg = cfg
        self.frames = frames
        self.device = device
        self.pub = pub
        self.labels = labels
        self.run_dir = runtime_dir(cfg)
        self.loaded: LoadedModel | None = None
        self.path: Path | None = None
        self._seen: tuple[Path | None, tuple | None] | None = None
        self.judge = Judge(round(cfg.fusion.judge_period_s * clock.NS_PER_S))
        self.rule = PromoteRule.parse(cfg.fusion.promote_if)
        self.names = names if names is not None else NameTable(
            "source", [s.name for s in cfg.sources])
        self.seq: dict[str, int] = {}  # per source, least recently answered first
        self.sources: set[str] = set()  # whose labels are subscribed to
        self.answered = 0
        self._next_judge = 0

    # -- loading -------------------------------------------------------------------------

    def reload(self, *, reason: str, force: bool = False) -> None:
        """Load the shadow in effect (:func:`streamfuse.fusion.store.shadow_dir`) if it changed."""
        from streamfuse.fusion.node import _signature, _warm_up

        path = store.shadow_dir(self.cfg, self.run_dir)
        seen = (path, _signature(path) if path else None)
        if seen == self._seen and not force:
            return
        self._seen = seen
        if path is None:
            if self.loaded is not None:
                log.info("shadow model %s removed (%s)", self.loaded.model_id, reason)
                self._set(None, None)
            return
        try:
            store.check_candidate(path, self.cfg)
            from streamfuse.fusion.artifact import load_artifact

            new = load_artifact(path, align=self.cfg.align, device=self.device)
            _warm_up(new, self.device)
        except (store.StoreError, ArtifactError) as e:
            keep = f"keeping shadow {self.loaded.model_id}" if self.loaded else "no shadow runs"
            log.error("shadow model (%s) not loaded, %s: %s", reason, keep, e)
            return
        if self.loaded is None or new.model_id != self.loaded.model_id:
            log.info(
                "shadow model %s from %s judged beside the live model (%s)",
                new.model_id,
                path,
                reason,
            )
            self._set(new, path)

    def _set(self, new: LoadedModel | None, path: Path | None) -> None:
        if self.loaded is not None:
            metrics.shadow_info.labels(model_id=self.loaded.model_id).set(0)
        self.loaded, self.path = new, path
        if new is not None:
            metrics.shadow_info.labels(model_id=new.model_id).set(1)
        self.judge.reset()

    def active(self, live: LoadedModel | None) -> LoadedModel | None:
        if self.loaded is None or live is None or self.loaded.model_id == live.model_id:
            return None
        return self.loaded

    # -- answering -----------------------------------------------------------------------

    def answer(self, live: LoadedModel, batch: Sequence[Pending], results: Sequence) -> None:
        """Run the shadow on the batch the live model just answered (``results``: the
        worker's :class:`~streamfuse.fusion.node.Result` list, in batch order) and publish
        its answers."""
        from streamfuse.fusion.node import predict
        from streamfuse.fusion.node import results as make_results

        shadow = self.active(live)
        for r in results:
            self._watch(r.window.source)
        if shadow is None or not results:
            return
        start, t0 = clock.now_ns(), clock.perf_ns()
        try:
            probs, mask, _problems = predict(shadow, [p.window for p in batch], self.device,
                                             self.frames)
        except (RuntimeError, ValueError) as e:
            log.error("shadow inference failed, %d windows not judged: %s", len(batch), e)
            return
        metrics.shadow_inference_seconds.observe((clock.perf_ns() - t0) / clock.NS_PER_S)
        now = clock.now_ns()
        for r, s in zip(
            results,
            make_results(shadow, batch, probs, mask, start_ns=start, done_ns=now),
            strict=True,
        ):
            w = r.window
            body = msgspec.json.decode(s.payload)
            body["live"] = {"label": r.label, "model": live.model_id}
            seq = self.seq.get(w.source, -1) + 1
            put_recent(self.seq, w.source, seq, SEQ_SOURCES_MAX)
            msg = codec.shadow_message(
                w.source, seq, w.t_start_ns, w.t_end_ns, s.label, s.score, msgspec.json.encode(body)
            )
            self.pub.send_multipart(codec.encode(msg))
            metrics.shadow_classifications.labels(source=self.names(w.source)).inc()
            self.judge.answer(w.source, w.t_start_ns, w.t_end_ns, r.label, s.label, now)
            self.answered += 1

    def _watch(self, source: str) -> None:
        if self.labels is not None and source not in self.sources \
                and self.names(source) == source:
            self.sources.add(source)
            self.labels.setsockopt(zmq.SUBSCRIBE, topics.label_topic(source).encode())

    def read_labels(self) -> None:
        """Take every label message waiting (never blocks)."""
        if self.labels is None:
            return
        while True:
            try:
                parts = self.labels.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                h = codec.decode(parts).header
            except codec.DecodeError:
                continue
            if isinstance(h, LabelHeader) and h.stream == "label":
                self.judge.label(h.source, h.t_ns, h.t_end_ns, h.label, stop=h.stop)

    # -- judging -------------------------------------------------------------------------

    def tick(self, live: LoadedModel | None, now_ns: int) -> bool:
        """Export the figures (once a second); True when ``promote_if`` just promoted."""
        self.read_labels()
        if now_ns < self._next_judge:
            return False
        self._next_judge = now_ns + JUDGE_EVERY_NS
        shadow = self.active(live)
        if shadow is None or live is None:
            return False
        v = self.judge.verdict(now_ns)
        _export(v, live.model_id, shadow.model_id)
        if self.rule is None or not self.rule.met(v):
            return False
        try:
            old, new = store.promote(self.cfg, self.run_dir)
        except (store.StoreError, OSError) as e:
            log.error("promote_if met but the promotion failed (live model unchanged): %s", e)
            self.rule = None  # said once; a config reload (SIGHUP restart) re-arms it
            return False
        metrics.promotions.inc()
        log.warning(
            "promote_if (%s) met: shadow %s (accuracy %.3f) promoted over %s (%.3f) on %d "
            "labelled windows; %s keeps the previous artifact",
            self.cfg.fusion.promote_if,
            new,
            v.shadow_accuracy,
            old,
            v.live_accuracy,
            v.labelled,
            store.previous_dir(self.cfg),
        )
        return True


def _export(v: Verdict, live_id: str, shadow_id: str) -> None:
    metrics.judged_windows.labels(kind="all").set(v.windows)
    metrics.judged_windows.labels(kind="labelled").set(v.labelled)
    if v.agreement is not None:
        metrics.shadow_agreement.set(v.agreement)
    if v.live_accuracy is not None and v.shadow_accuracy is not None:
        metrics.labelled_accuracy.labels(role="live", model_id=live_id).set(v.live_accuracy)
        metrics.labelled_accuracy.labels(role="shadow", model_id=shadow_id).set(v.shadow_accuracy)
