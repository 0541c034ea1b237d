"""The process table: which children ``streamfuse run`` starts, as data.

Each child is ``python -m streamfuse <command> --config <file>`` (its own
interpreter and ``zmq.Context``, so a crash never takes the supervisor down).
The broker is not in the table: the supervisor runs it in-process (see
``supervisor.py``). ``stop_phase`` orders shutdown: captures first (no new
input), then the aligner (closes what it can), then workers (answer what is
queued), then the recorder (has seen every classification), broker last.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass

from streamfuse.config import Config

# stop phases, in the order SIGTERM reaches them
CAPTURE, ALIGNER, WORKER, RECORDER = 0, 1, 2, 3
ROLE_NAMES = {CAPTURE: "capture", ALIGNER: "aligner", WORKER: "worker", RECORDER: "recorder"}


@dataclass(frozen=True)
class ProcessSpec:
    """One child process.

    ``argv`` is the full command line. ``essential``: the pipeline cannot run
    without it, so giving up on it stops the daemon (exit 1); a non-essential
    child (a capture, the recorder) is given up on and the rest keeps running.
    ``fingerprint`` hashes the config the child depends on: a SIGHUP that
    changes it restarts just that child.
    """

    name: str
    argv: tuple[str, ...]
    stop_phase: int
    essential: bool = False
    reload_on_hup: bool = False  # forward SIGHUP (workers: reload the model)
    env: tuple[tuple[str, str], ...] = ()
    fingerprint: str = ""
    role_name: str = ""  # when the stop phase's name does not say what the child is

    @property
    def role(self) -> str:
        return self.role_name or ROLE_NAMES[self.stop_phase]


def _hash(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _base(command: list[str], cfg: Config, python: str) -> tuple[str, ...]:
    argv = [python, "-m", "streamfuse", *command]
    if cfg.path:
        argv += ["--config", cfg.path]
    return tuple(argv)


def table(cfg: Config, *, python: str | None = None) -> list[ProcessSpec]:
    """Every child for ``cfg``: captures, aligner, ``fusion.workers`` workers, web, recorder,
    Foxglove bridge.

    Children re-read ``cfg.path`` themselves (and the same ``STREAMFUSE_*``
    overrides, inherited through the environment), so they see what the
    supervisor validated.
    """
    py = python or sys.executable
    bus = asdict(cfg.bus)
    specs: list[ProcessSpec] = []
    for src in cfg.sources:
        for stream in src.streams():
            specs.append(ProcessSpec(
                name=f"capture-{src.name}-{stream}",
                argv=_base(["capture", stream, "--source", src.name], cfg, py),
                stop_phase=CAPTURE,
                fingerprint=_hash([bus, asdict(getattr(src, stream))]),
            ))
    specs.append(ProcessSpec(
        name="aligner", argv=_base(["align"], cfg, py), stop_phase=ALIGNER, essential=True,
        fingerprint=_hash([bus, asdict(cfg.align), [asdict(s) for s in cfg.sources]]),
    ))
    for i in range(cfg.fusion.workers):
        specs.append(ProcessSpec(
            name=f"worker-{i}", argv=_base(["fuse"], cfg, py), stop_phase=WORKER, essential=True,
            reload_on_hup=True,
            # the model file itself is not here: SIGHUP reloads it without a restart
            fingerprint=_hash([bus, asdict(cfg.align), asdict(cfg.fusion)]),
        ))
    if cfg.web.listen:
        # a consumer with nothing to flush: it stops first, with the captures
        specs.append(ProcessSpec(
            name="web", argv=_base(["web"], cfg, py), stop_phase=CAPTURE,
            fingerprint=_hash([bus, asdict(cfg.web), cfg.record.path]), role_name="web",
        ))
    if cfg.record.enabled:
        specs.append(ProcessSpec(
            name="recorder", argv=_base(["record", "--out", cfg.record.path], cfg, py),
            stop_phase=RECORDER, fingerprint=_hash([bus, asdict(cfg.record)]),
        ))
    if cfg.foxglove.listen:
        # Stopped first, with the captures: nothing downstream waits for it.
        specs.append(ProcessSpec(
            name="foxglove", argv=_base(["foxglove"], cfg, py), stop_phase=CAPTURE,
            role_name="bridge",
            fingerprint=_hash([bus, asdict(cfg.foxglove)]),
        ))
    return specs
