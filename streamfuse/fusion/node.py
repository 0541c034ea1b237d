"""``streamfuse fuse``: the fusion worker (docs/architecture.md).

A short loop: PULL windows from the aligner (``align.output``), queue them in
the pure :class:`~streamfuse.fusion.batcher.Batcher`, and for each due batch run
:func:`classify` (collate on CPU, features and model on the device, under
``torch.inference_mode()`` and autocast on CUDA), then PUBlish one
classification per window to ``bus.input`` on ``class/<source>``.

Entry point: :func:`main` ``(cfg, *, pull=None, pub=None, stop=None, reload=None)``,
which :mod:`streamfuse.commands.fuse` runs (tests inject sockets and events; injected
sockets are not closed here).

Latency (``latency_ms`` in each classification, all in milliseconds, on the
source's clock as docs/architecture.md, "Time", defines it):

- ``align``: ``close_ns - t_end_ns`` — from the window's end until the aligner
  closed it (waiting for watermarks or the lateness bound);
- ``queue``: from the aligner sending the window (``emit_ns``) until its batch
  started preprocessing: transport plus batching delay;
- ``infer``: preprocessing + model + post-processing of the window's batch,
  until just before publication;
- ``total`` = ``align + queue + infer`` = ``(close_ns - t_end_ns) + (now - emit_ns)``.
  ``queue`` is clamped at 0 when the aligner's clock runs ahead of this host's.

Model life cycle: the artifact at ``fusion.model`` is loaded at start; when it
is missing or invalid the worker says so once (with the path), publishes
nothing (windows received meanwhile are counted as dropped with reason
``no_model``), and keeps checking. Every ``fusion.reload_poll_s`` seconds the
files' size/mtime/inode are compared; a change, or SIGHUP, loads and validates the
new artifact beside the serving one and swaps between batches. A bad artifact
is logged and counted (``model_reloads{outcome="failed"}``) and the old model
keeps serving. Loading happens in this thread between batches: windows that
arrive meanwhile wait in the socket, so none is lost or answered twice.

Shadow (docs/architecture.md, "Shadow"): a candidate artifact (``fusion.shadow``, or the
one ``streamfuse shadow DIR`` chose) answers the same batches after the live model has
published; :mod:`streamfuse.fusion.candidate` runs it, judges it and applies
``fusion.promote_if``. SIGHUP and the on-disk check reload it as they reload the live one.

Per-source state stays bounded whatever names windows carry: metric labels go
through a :class:`~streamfuse.names.NameTable` (configured sources and the first
``MAX_NAMES`` other names by name, later ones as ``_other``), and the
classification ``seq`` is kept for the ``SEQ_SOURCES_MAX`` sources answered most
recently (one dropped and answered again starts again at 0).

SIGTERM/SIGINT: stop reading new work, answer every window already received
(queued here or waiting in this socket's buffer), then exit 0.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
import torch
import zmq

from streamfuse import clock, metrics, readiness
from streamfuse.config import Config
from streamfuse.fusion import device as fusion_device
from streamfuse.fusion.artifact import (
    MANIFEST,
    WEIGHTS,
    ArtifactError,
    ArtifactMissing,
    LoadedModel,
    load_artifact,
)
from streamfuse.fusion.batcher import Batcher, Pending
from streamfuse.fusion.candidate import ShadowRunner
from streamfuse.fusion.features import MODALITIES, FrameSource, collate, to_device
from streamfuse.fusion.frames import WindowFrames
from streamfuse.names import MAX_NAMES, NameTable, put_recent
from streamfuse.node import EXIT_CANNOT_OPEN, OPEN_ERRORS, Runtime
from streamfuse.wire import codec, topics
from streamfuse.wire.schema import Window
from streamfuse.wire.sockets import LINGER_MS, connect_pub, connect_sub, max_message_bytes

log = logging.getLogger("streamfuse.fuse")
NODE = "fuse"
# Sources whose classification seq is kept (the least recently answered is dropped
# beyond): a live source is answered every hop, so only a flood of invented names
# (more than this many answered within one hop) could reset a real one's seq.
SEQ_SOURCES_MAX = 4 * MAX_NAMES
IDLE_POLL_MS = 100


# ----------------------------------------------------------------------------- set-up


def resolve_device(spec: str) -> torch.device:
    """``fusion.device`` -> the torch device (see :mod:`streamfuse.fusion.device`); a CUDA
    device that is not there raises :class:`~streamfuse.config.ConfigError` (exit 2)."""
    return fusion_device.resolve(spec)


def thread_count(configured: int, workers: int = 1, cores: int | None = None) -> int:
    """torch CPU threads: ``fusion.threads``, or when 0 ``min(4, (cores - 1) // fusion.workers)``
    (at least 1). One core is left to the broker, the aligner and the captures: an
    OpenMP thread that has to wait for a core stalls every operator of the batch (on
    this 2-core machine with the other core busy, 2 threads made a batch-1 forward
    ~270 ms against ~5 ms with 1 thread)."""
    if configured > 0:
        return configured
    cores = cores or os.cpu_count() or 1
    return max(1, min(4, (cores - 1) // max(1, workers)))


def _autocast(device: torch.device):  # type: ignore[no-untyped-def]
    if device.type != "cuda":
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


# ----------------------------------------------------------------------------- the work


@dataclass
class Result:
    """One classification ready to publish."""

    window: Window
    label: str
    score: float
    payload: bytes
    latency_ms: dict[str, float]


def predict(loaded: LoadedModel, windows: Sequence[Window], device: torch.device,
            frames: FrameSource | None = None) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Calibrated probabilities ``(B, n_classes)`` float32, the used mask ``(B, 3)``
    bool, and the problems found while collating."""
    raw = collate(windows, loaded.prep, frames)
    feats = to_device(raw, loaded.prep, device)
    with torch.inference_mode(), _autocast(device):
        probs = loaded.model.predict_proba(feats)
    # .cpu() is the one synchronisation per batch (publishing needs the numbers).
    return probs.float().cpu().numpy(), raw.mask.numpy(), raw.problems


_json = msgspec.json.Encoder().encode  # compact JSON, ~5x faster than json.dumps here


def results(loaded: LoadedModel, batch: Sequence[Pending], probs: np.ndarray, mask: np.ndarray, *,
            start_ns: int, done_ns: int) -> list[Result]:
    """Classification payloads (docs/protocol.md, "Classification") for a batch whose inference
    started at ``start_ns`` and finished at ``done_ns`` (epoch ns, this host)."""
    classes = loaded.classes
    infer_ms = clock.ns_to_ms(done_ns - start_ns)
    out: list[Result] = []
    best = probs.argmax(axis=1)
    for row, p in enumerate(batch):
        w = p.window
        align_ms = clock.ns_to_ms(w.close_ns - w.t_end_ns) if w.close_ns else 0.0
        queue_ms = max(0.0, clock.ns_to_ms(start_ns - (w.emit_ns or p.arrived_ns)))
        latency = {"align": round(align_ms, 3), "queue": round(queue_ms, 3),
                   "infer": round(infer_ms, 3), "total": round(align_ms + queue_ms + infer_ms, 3)}
        label = classes[int(best[row])]
        body = {
            "source": w.source, "t_start_ns": w.t_start_ns, "t_end_ns": w.t_end_ns, "label": label,
            "scores": {c: round(float(v), 6) for c, v in zip(classes, probs[row], strict=True)},
            "present": {m: bool(mask[row, j]) for j, m in enumerate(MODALITIES)},
            "model": loaded.model_id, "latency_ms": latency,
        }
        out.append(Result(w, label, float(probs[row, best[row]]), _json(body), latency))
    return out


def _signature(directory: Path) -> tuple[tuple[int, int, int], ...] | None:
    """What changes when either artifact file is rewritten (None while one is missing)."""
    sig = []
    for name in (WEIGHTS, MANIFEST):
        try:
            st = (directory / name).stat()
        except OSError:
            return None
        sig.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(sig)


class Worker:
    """The worker's state between loop turns: the serving model, counters, publisher."""

    def __init__(self, cfg: Config, device: torch.device, pub: zmq.Socket,
                 labels: zmq.Socket | None = None) -> None:
        self.cfg = cfg
        self.device = device
        self.pub = pub
        self.model_dir = Path(cfg.fusion.model)
        self.loaded: LoadedModel | None = None
        self.seen_signature: tuple[tuple[int, int, int], ...] | None = None
        self.seq: dict[str, int] = {}  # per source, least recently answered first
        self.names = NameTable("source", [s.name for s in cfg.sources])
        self._folded = 0  # names.folded already added to names_folded_total
        self.answered = 0
        self.dropped_no_model = 0
        self.failed_batches = 0
        self._said_missing = False
        self._latency = {part: metrics.window_latency.labels(part=part)
                         for part in ("align", "queue", "infer", "total")}
        self._dropped_no_model = metrics.dropped.labels(node=NODE, topic="window",
                                                        reason="no_model")
        self._received = metrics.messages_in.labels(node=NODE, topic="window")
        self._held = -1
        self._published: dict[str, tuple] = {}  # source key -> (classifications, messages_out)
        self.frames = WindowFrames()  # frames by reference, and each frame decoded once
        self._overwritten = 0
        self.shadow = ShadowRunner(cfg, device, pub, labels, frames=self.frames,
                                   names=self.names)

    # -- model ---------------------------------------------------------------------------

    def load(self, *, reason: str) -> bool:
        """Try (re)loading the artifact; returns True when a new model now serves."""
        before = self.seen_signature
        self.seen_signature = sig = _signature(self.model_dir)
        t0 = clock.perf_ns()
        try:
            new = load_artifact(self.model_dir, align=self.cfg.align, device=self.device)
            _warm_up(new, self.device)
        except ArtifactError as e:
            if _signature(self.model_dir) != sig:
                # Rewritten while we read it (a save renames weights, then manifest):
                # not a failure yet; the next poll sees the change and tries again.
                log.debug("artifact changed while loading (%s); retrying at the next check", e)
                self.seen_signature = before
                return False
            return self._failed(e, reason)
        seconds = (clock.perf_ns() - t0) / clock.NS_PER_S
        if self.loaded is not None and new.model_id == self.loaded.model_id:
            metrics.model_reloads.labels(outcome="unchanged").inc()
            log.info("model %s unchanged (%s)", new.model_id, reason)
            return False
        for w in new.warnings:
            log.warning("model %s: %s", new.model_id, w)
        old, self.loaded = self.loaded, new
        if old is not None:
            metrics.model_info.labels(model_id=old.model_id).set(0)
        metrics.model_info.labels(model_id=new.model_id).set(1)
        metrics.model_load_seconds.set(seconds)
        metrics.model_reloads.labels(outcome="ok").inc()
        readiness.report("model", model_id=new.model_id, device=str(self.device))
        log.info("serving model %s from %s (%s fusion of %s; %d classes; %s; loaded in %.0f ms)%s",
                 new.model_id, self.model_dir, new.manifest["fusion"],
                 "+".join(new.model.modalities), len(new.classes), self.device, seconds * 1e3,
                 f", replacing {old.model_id}" if old else "")
        return True

    def _failed(self, e: ArtifactError, reason: str) -> bool:
        if self.loaded is None:
            # Tell the supervisor this worker is up and has said why no model serves.
            readiness.report("no-model", looked=str(self.model_dir), error=str(e),
                             device=str(self.device))
        if isinstance(e, ArtifactMissing):
            if self.loaded is None and not self._said_missing:
                log.warning("no model loaded: %s; publishing nothing until a valid artifact "
                            "(%s + %s) appears there (checked every %.1f s and on SIGHUP)",
                            e, WEIGHTS, MANIFEST, self.cfg.fusion.reload_poll_s)
                self._said_missing = True
            elif self.loaded is not None:
                log.error("model reload (%s) failed, still serving %s: %s",
                          reason, self.loaded.model_id, e)
                metrics.model_reloads.labels(outcome="failed").inc()
            return False
        metrics.model_reloads.labels(outcome="failed").inc()
        serving = f"still serving {self.loaded.model_id}" if self.loaded else "no model loaded"
        log.error("model load (%s) failed, %s: %s", reason, serving, e)
        return False

    def maybe_reload(self) -> None:
        """Reload when the files on disk changed since the last attempt."""
        sig = _signature(self.model_dir)
        if sig != self.seen_signature and (sig is not None or self.loaded is None):
            self.load(reason="artifact changed on disk")
        self.shadow.reload(reason="shadow changed on disk")

    def tick(self, now_ns: int) -> None:
        """Between batches: labels in, shadow figures out, and a promotion by ``promote_if``."""
        if self.names.folded > self._folded:
            metrics.names_folded.labels(node=NODE).inc(self.names.folded - self._folded)
            self._folded = self.names.folded
        if self.shadow.tick(self.loaded, now_ns):
            self.load(reason="promote_if")
            self.shadow.reload(reason="promote_if", force=True)

    # -- windows -------------------------------------------------------------------------

    def holding(self, n: int) -> None:
        """Publish how many windows this worker holds (queued or being classified): a
        worker killed holding them cannot count them itself; the supervisor does."""
        if n != self._held:
            self._held = n
            metrics.windows_held.set(n)

    def handle(self, batch: list[Pending]) -> None:
        """Classify and publish one batch (or count it dropped when no model serves)."""
        if not batch:
            return
        loaded = self.loaded
        if loaded is None:
            self.dropped_no_model += len(batch)
            self._dropped_no_model.inc(len(batch))
            return
        start = clock.now_ns()
        t0 = clock.perf_ns()
        try:
            probs, mask, problems = predict(loaded, [p.window for p in batch], self.device,
                                            self.frames)
        except (RuntimeError, ValueError) as e:
            # One bad batch must not stop the service; a persistent fault shows in the
            # log (first and every 100th) and in the dropped counter.
            self.failed_batches += 1
            if self.failed_batches % 100 == 1:
                log.error("inference failed (%d batches so far), %d windows dropped: %s",
                          self.failed_batches, len(batch), e)
            metrics.dropped.labels(node=NODE, topic="window",
                                   reason="inference_error").inc(len(batch))
            return
        metrics.inference_seconds.observe((clock.perf_ns() - t0) / clock.NS_PER_S)
        lost = self.frames.overwritten - self._overwritten  # frames gone from the frame plane
        self._overwritten += lost
        if lost:
            metrics.dropped.labels(node=NODE, topic="window", reason="overwritten").inc(lost)
        for why in problems:
            log.debug("window stream dropped: %s", why)
            metrics.dropped.labels(node=NODE, topic="window", reason="undecodable").inc()
        metrics.batch_size.observe(len(batch))
        answers = results(loaded, batch, probs, mask, start_ns=start, done_ns=clock.now_ns())
        self._publish(answers)
        self.shadow.answer(loaded, batch, answers)

    def _publish(self, answers: list[Result]) -> None:
        for r in answers:
            src = r.window.source
            seq = self.seq.get(src, -1) + 1
            put_recent(self.seq, src, seq, SEQ_SOURCES_MAX)
            msg = codec.class_message(src, seq, r.window.t_start_ns, r.window.t_end_ns,
                                      r.label, r.score, r.payload)
            self.pub.send_multipart(codec.encode(msg))
            for part, v in r.latency_ms.items():
                self._latency[part].observe(v / 1000)
            key = self.names(src)
            counters = self._published.get(key)
            if counters is None:
                counters = (metrics.classifications.labels(source=key),
                            metrics.messages_out.labels(node=NODE, topic=topics.class_topic(key)))
                self._published[key] = counters
            for c in counters:
                c.inc()
            self.answered += 1


def _warm_up(loaded: LoadedModel, device: torch.device) -> None:
    """One forward on a synthetic window with every modality present, so the first
    real batch does not pay for lazy initialisation (allocator, kernels)."""
    prep = loaded.prep
    w = Window(source="warmup", seq=0, t_start_ns=0, t_end_ns=1,
               present={"video": True, "audio": True, "text": True},
               frames=([np.zeros((prep.image_size, prep.image_size, 3), np.uint8)]
                       * prep.frames_per_window),
               audio=np.zeros((prep.window_samples, 1), np.float32), samplerate=prep.sample_rate,
               texts=["warm up"])
    probs, _, _ = predict(loaded, [w], device)
    if not np.isfinite(probs).all():
        raise ArtifactError(f"{loaded.path}: the model produces non-finite scores")


# ----------------------------------------------------------------------------- the loop


def _pull_socket(ctx: zmq.Context, cfg: Config) -> zmq.Socket:
    sock = ctx.socket(zmq.PULL)
    sock.linger = 0
    # Few windows wait here: PUSH then hands the rest to other workers.
    sock.rcvhwm = max(16, 2 * cfg.fusion.max_batch)
    sock.maxmsgsize = max_message_bytes(cfg.bus)
    sock.connect(cfg.align.output)
    return sock


def _receive(pull: zmq.Socket, batcher: Batcher, limit: int, worker: Worker) -> int:
    """Read up to ``limit`` windows without blocking; returns how many parts were read."""
    n = 0
    while n < limit:
        try:
            parts = pull.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            break
        n += 1
        now = clock.now_ns()
        try:
            w = codec.decode_window(parts, max_bytes=max_message_bytes(worker.cfg.bus))
        except codec.DecodeError as e:
            metrics.dropped.labels(node=NODE, topic="window", reason=e.reason).inc()
            log.debug("dropped a malformed window: %s", e)
            continue
        worker._received.inc()
        if not batcher.push(w, now):
            metrics.dropped.labels(node=NODE, topic="window", reason="duplicate").inc()
    return n


def _serve(worker: Worker, batcher: Batcher, pull: zmq.Socket, *, stop: threading.Event,
           reload: threading.Event, poll_ns: int) -> None:
    """Receive windows, classify batches as they fill or wait long enough, reload the model
    on SIGHUP or when the artifact changes, until ``stop``."""
    next_check = clock.now_ns() + poll_ns
    poller = zmq.Poller()
    poller.register(pull, zmq.POLLIN)
    while not stop.is_set():
        now = clock.now_ns()
        deadline = batcher.next_deadline()
        # rounded up: waking before the deadline would only spin
        wait_ms = (IDLE_POLL_MS if deadline is None
                   else max(0, min(IDLE_POLL_MS, -(-(deadline - now) // clock.NS_PER_MS))))
        if batcher.room and poller.poll(wait_ms):
            _receive(pull, batcher, batcher.room, worker)
            worker.holding(len(batcher))  # a batch being classified stays counted here
        worker.handle(batcher.pop_batch(clock.now_ns()))
        worker.holding(len(batcher))
        worker.tick(clock.now_ns())
        if reload.is_set():
            reload.clear()
            worker.load(reason="SIGHUP")
            worker.shadow.reload(reason="SIGHUP", force=True)
        elif clock.now_ns() >= next_check:
            worker.maybe_reload()
            next_check = clock.now_ns() + poll_ns


def _drain(worker: Worker, batcher: Batcher, pull: zmq.Socket, *, budget: int) -> None:
    """At stop: everything already received (queued here or in the socket, up to ``budget``
    windows) is answered."""
    while True:
        if budget > 0 and batcher.room:
            budget -= _receive(pull, batcher, min(batcher.room, budget), worker)
        if not len(batcher):
            break
        worker.handle(batcher.drain())
        worker.holding(len(batcher))
    worker.holding(0)


def main(cfg: Config, *, pull: zmq.Socket | None = None, pub: zmq.Socket | None = None,
         stop: threading.Event | None = None, reload: threading.Event | None = None,
         labels: zmq.Socket | None = None) -> int:
    """Run the worker until ``stop`` is set; returns the exit code (0 after draining).
    ``labels``: a SUB socket for label messages (default: one on ``bus.output``)."""
    stop = stop or threading.Event()
    reload = reload or threading.Event()
    torch.set_num_threads(thread_count(cfg.fusion.threads, cfg.fusion.workers))
    device = resolve_device(cfg.fusion.device)
    metrics.worker_device.labels(device=str(device)).set(1)
    with Runtime() as rt:
        try:
            pull = rt.open(pull, lambda ctx: _pull_socket(ctx, cfg))
            # bounded linger: the last classifications get out, a dead broker can't hang us
            pub = rt.open(pub, lambda ctx: connect_pub(ctx, cfg.bus), linger=LINGER_MS)
            labels = rt.open(labels, lambda ctx: connect_sub(ctx, cfg.bus, []))
        except OPEN_ERRORS as e:
            log.error("cannot open %s, %s or %s: %s", cfg.align.output, cfg.bus.input,
                      cfg.bus.output, e)
            return EXIT_CANNOT_OPEN
        return _run(cfg, device, pull, pub, labels, stop=stop, reload=reload)


def _run(cfg: Config, device: torch.device, pull: zmq.Socket, pub: zmq.Socket,
         labels: zmq.Socket, *, stop: threading.Event, reload: threading.Event) -> int:
    worker = Worker(cfg, device, pub, labels)
    # A live source has a window every hop: one missed hop is tolerated before it
    # stops being waited for.
    batcher = Batcher(cfg.fusion.max_batch, clock.ms_to_ns(cfg.fusion.max_delay_ms),
                      horizon_ns=2 * clock.ms_to_ns(cfg.align.hop_ms))
    poll_ns = round(cfg.fusion.reload_poll_s * clock.NS_PER_S)
    log.info("fusion worker up: windows from %s, classifications to %s, device %s, %d threads, "
             "batches of up to %d or %.1f ms", cfg.align.output, cfg.bus.input,
             fusion_device.describe(device, cfg.fusion.device),
             torch.get_num_threads(), cfg.fusion.max_batch, cfg.fusion.max_delay_ms)
    worker.load(reason="start")
    worker.shadow.reload(reason="start")
    _serve(worker, batcher, pull, stop=stop, reload=reload, poll_ns=poll_ns)
    _drain(worker, batcher, pull, budget=4 * max(16, 2 * cfg.fusion.max_batch))
    log.info("fusion worker stopped: %d classifications published, "
             "%d windows dropped without a model",
             worker.answered, worker.dropped_no_model)
    return 0

