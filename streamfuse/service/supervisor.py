"""``streamfuse run``: the supervisor (docs/architecture.md).

It holds the runtime directory (a lock file), runs the broker in-process,
starts the children of the process table, restarts crashed ones with backoff,
speaks the systemd notify protocol, serves every process's metrics, and stops
everything in order on SIGTERM.

The broker runs **in this process** (a thread in ``zmq.proxy``, C code that
holds no GIL): ``READY=1`` is sent only after its sockets are bound, with no
cross-process handshake; it stops last, after every child, with no extra
ordering; and the bus's ipc sockets belong to the process that holds the lock
on the runtime directory. The cost: a libzmq crash in the proxy takes the
supervisor down; systemd restarts the service (``Restart=on-failure``).

Readiness of workers: see :mod:`streamfuse.readiness` (a status file per child);
a worker serving ``streamfuse_model_info`` or a missing artifact at
``fusion.model`` count as well.

SIGHUP: workers get SIGHUP (they reload the model); the config file is re-read
and validated; children whose part of the config changed (a source's capture
settings, ``[align]``, ``[fusion]``, ``[record]``, the set of sources,
``fusion.workers``) are restarted or started/stopped to match. A file that
changes ``[bus]`` or ``[metrics]`` is not applied at all (logged: that takes a
restart of the service), nor is an invalid one. Children always read a
snapshot of the accepted file (``<run dir>/config.toml``), so an edit reaches
them only through SIGHUP, never through a crash restart.
"""

from __future__ import annotations

import dataclasses
import fcntl
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import zmq

from streamfuse import clock, readiness
from streamfuse.clock import NS_PER_S as NS
from streamfuse.config import Config, ConfigError, load, runtime_dir
from streamfuse.frameplane import ring as frame_ring
from streamfuse.service import metrics as service_metrics
from streamfuse.service.broker import Broker, check_security
from streamfuse.service.health import Liveness, RestartPolicy
from streamfuse.service.notify import Notifier
from streamfuse.service.processes import RECORDER, ProcessSpec, table
from streamfuse.signals import Signals
from streamfuse.wire import codec, topics
from streamfuse.wire.sockets import connect_sub

log = logging.getLogger("streamfuse.supervisor")
TICK_S = 0.05
STOP_BUDGET_S = {0: 2.0, 1: 2.0, 2: 3.0, 3: 2.0}  # per stop phase; total stays under 10 s
READY_FALLBACK_S = 60.0  # a worker that never reports: declare ready anyway (logged)
# How long READY waits for the recorder to subscribe (a recorder that cannot start, e.g. on a
# full disk, is retried on its own and must not hold the pipeline's READY up).
RECORDER_READY_S = 5.0


class RuntimeFailure(Exception):
    """Exit 1 with this one line."""


FUSION_MODULES = ("torch", "torchaudio", "safetensors")  # what every worker imports


def check_device(spec: str, *, python: str = sys.executable) -> None:
    """Raise :class:`ConfigError` naming ``fusion.device`` when it asks for a CUDA device that
    the workers cannot have. Asked of a child interpreter: torch stays out of the supervisor."""
    if not spec.startswith("cuda"):
        return  # "cpu" always works, "auto" falls back to it
    try:
        r = subprocess.run([python, "-m", "streamfuse.commands.device", spec], capture_output=True,
                           text=True, timeout=120, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeFailure(f"fusion.device: could not check {spec!r}: {e}") from None
    last = (r.stderr.strip().splitlines() or [f"exit code {r.returncode}"])[-1]
    if r.returncode == 2:
        raise ConfigError(last)
    if r.returncode != 0:
        raise RuntimeFailure(f"fusion.device: could not check {spec!r} (torch failed: {last})")


def check_fusion(cfg: Config) -> None:
    """Before anything starts: the workers' packages are installed and their device exists."""
    from streamfuse.usage import UsageError, missing_extra

    for name in FUSION_MODULES:
        if importlib.util.find_spec(name) is None:
            raise UsageError(str(missing_extra(name)))
    check_device(cfg.fusion.device)


def take_lock(run_dir: Path) -> IO[str]:
    """Hold ``run_dir/streamfuse.lock`` for the life of the process, or refuse."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "streamfuse.lock"
    f = open(path, "a+")  # noqa: SIM115 - held open until exit on purpose
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        other = f.read().strip() or "?"
        f.close()
        raise RuntimeFailure(f"another streamfuse run (pid {other}) already uses {run_dir} "
                             f"(lock {path}); stop it or point bus.input elsewhere") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def _load_prctl() -> Any:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None  # not Linux/glibc: orphans are then systemd's KillMode to clean


_PRCTL = _load_prctl()  # resolved here: the child between fork and exec must not load libraries


def _set_child_attrs() -> None:  # pragma: no cover - runs in the child between fork and exec
    # Own process group: a Ctrl-C in a terminal reaches only the supervisor, which
    # then stops the children in order. Parent-death signal: a SIGKILLed
    # supervisor leaves no orphans.
    os.setpgid(0, 0)
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def proc_state(pid: int) -> str:
    """The one-letter state of /proc/PID/stat (R, S, D, T, t, Z, ...); '' if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


@dataclass
class Child:
    spec: ProcessSpec
    status_file: Path
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    proc: subprocess.Popen | None = None
    started_ns: int = 0
    restart_at_ns: int | None = None
    gave_up: str = ""
    restarts: int = 0
    last_exit: str = ""  # how it last ended ("exit code 1", "killed by SIGKILL")
    retry_at_ns: int | None = None  # when to try a given-up child again
    retries: int = 0  # periodic retries since it last ran well: each waits twice as long

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


class Supervisor:
    """Reconcile the process table, watch health, talk to systemd.

    ``specs`` overrides the table (tests use it to supervise stand-in children).
    """

    def __init__(self, cfg: Config, *, signals: Signals, specs: list[ProcessSpec] | None = None,
                 notifier: Notifier | None = None, policy: RestartPolicy | None = None) -> None:
        check_security(cfg.bus)
        self.cfg = cfg
        self.source_path = cfg.path  # the user's file; children read a snapshot of it
        self.signals = signals
        self.notifier = notifier or Notifier()
        self._fixed_specs = specs
        self._policy = policy or RestartPolicy()
        self.run_dir = runtime_dir(cfg)
        self.children: dict[str, Child] = {}
        self.liveness = Liveness(
            stall_s=2 * (cfg.align.window_ms + cfg.align.max_lateness_ms) / 1000 + 5)
        self.ready_sent = False
        self.started_ns = 0
        self._classes = 0
        self._classes_at = (0, 0)  # (time, count) of the last rate sample
        self._rate = 0.0
        self._last_status = ""
        self._next_status_ns = 0
        self._next_ping_ns = 0
        self._stand_ins: set[bytes] = set()  # topics whose heartbeats count as data
        self._model = "?"  # what the workers serve ("none", an id, "?" before they report)
        self._m: Any = None  # streamfuse.metrics, imported once PROMETHEUS_MULTIPROC_DIR is set

    # ------------------------------------------------------------------ children

    def _new_child(self, spec: ProcessSpec) -> Child:
        pol = dataclasses.replace(self._policy, crashes=deque())
        return Child(spec, self.run_dir / "status" / f"{spec.name}.json", policy=pol)

    def _start(self, child: Child) -> None:
        env = {k: v for k, v in os.environ.items()
               if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
                            "LISTEN_FDS", "LISTEN_PID")}
        env.update(dict(child.spec.env))
        env[readiness.ENV] = str(child.status_file)
        env[service_metrics.ENV] = str(self.metrics_dir)
        env["STREAMFUSE_CHILD"] = child.spec.name
        child.status_file.unlink(missing_ok=True)
        try:
            child.proc = subprocess.Popen(list(child.spec.argv), env=env, stdin=subprocess.DEVNULL
                                          if child.spec.role != "capture" else None,
                                          preexec_fn=_set_child_attrs, close_fds=True)
        except OSError as e:
            log.error("%s: cannot start %s: %s", child.spec.name, child.spec.argv[0], e)
            self._on_exit(child, 127)
            return
        child.started_ns = clock.monotonic_ns()
        child.restart_at_ns = None
        self._m.child_up.labels(child.spec.name).set(1)
        log.info("%s started (pid %d)", child.spec.name, child.proc.pid)

    def _count_lost(self, child: Child) -> None:
        """A worker that died holding windows (queued or being classified) could not count
        them: count them dropped for it (``worker_lost``), from its last published gauge."""
        if child.spec.role != "worker" or child.pid is None:
            return
        held = service_metrics.windows_held(child.pid, self.metrics_dir)
        if held > 0:
            self._m.dropped.labels(node="fuse", topic="window", reason="worker_lost").inc(held)
            log.warning("%s died holding %d window(s); counted as dropped (worker_lost)",
                        child.spec.name, held)

    def _remove_segments(self, pid: int) -> None:
        """A dead child's frame-plane rings (a capture killed mid-write leaves its ring)."""
        gone = frame_ring.remove_pid(frame_ring.bus_tag(self.cfg.bus.input), pid)
        if gone:
            log.info("removed %d frame-plane segment(s) of pid %d", len(gone), pid)

    def _reclaim_segments(self) -> None:
        """Frame-plane rings of an earlier run whose writers are gone; say if there is no plane."""
        stale = frame_ring.reclaim(frame_ring.bus_tag(self.cfg.bus.input))
        if stale:
            log.warning("removed %d frame-plane segment(s) left by a previous run", len(stale))
        if self.cfg.bus.frame_plane == "shm" and (why := frame_ring.available()) is not None:
            log.warning("frame plane unavailable (%s): video frames travel inline", why)

    def _on_exit(self, child: Child, code: int) -> None:
        if child.pid is not None:
            self._count_lost(child)
            service_metrics.mark_dead(child.pid, self.metrics_dir)
            self._remove_segments(child.pid)
        self._m.child_up.labels(child.spec.name).set(0)
        now = clock.monotonic_ns()
        how = (f"killed by {signal.Signals(-code).name}"
               if code < 0 and -code in signal.valid_signals() else f"exit code {code}")
        child.last_exit = how
        if code == 2:
            child.gave_up = (f"{child.spec.name} exited with code 2 (bad configuration); "
                             "not restarting it")
        else:
            delay = child.policy.on_crash(now)
            if delay is None:
                child.gave_up = (f"{child.spec.name} crashed {child.policy.describe()} "
                                 f"(last: {how}); giving up on it")
            else:
                child.restart_at_ns = now + int(delay * NS)
                log.warning("%s died (%s); restarting in %.2f s", child.spec.name, how, delay)
                return
        log.error("%s", child.gave_up)
        if not child.spec.essential and code != 2:
            self._schedule_retry(child, now)

    def _schedule_retry(self, child: Child, now: int) -> None:
        """A non-essential child given up on is tried again later: a full disk or an
        unplugged camera may be back by then (a bad configuration waits for SIGHUP)."""
        sv = self.cfg.supervisor
        delay = min(sv.retry_after_s * 2 ** child.retries, sv.retry_max_s)
        child.retries += 1
        child.retry_at_ns = now + int(delay * NS)
        log.info("%s: trying it again in %g s (or at SIGHUP)", child.spec.name, delay)

    def _revive(self, child: Child, why: str) -> None:
        log.info("%s: starting it again (%s) after: %s", child.spec.name, why, child.gave_up)
        child.gave_up = ""
        child.retry_at_ns = None
        child.policy.crashes.clear()
        child.restarts += 1
        self._m.child_restarts.labels(child.spec.name).inc()
        self._start(child)

    def _reap_and_restart(self) -> None:
        now = clock.monotonic_ns()
        for child in self.children.values():
            if (child.proc is not None and child.proc.poll() is not None
                    and child.restart_at_ns is None and not child.gave_up):
                self._on_exit(child, child.proc.returncode)
            if child.restart_at_ns is not None and now >= child.restart_at_ns and not child.gave_up:
                child.restarts += 1
                self._m.child_restarts.labels(child.spec.name).inc()
                self._start(child)
            if child.gave_up and child.retry_at_ns is not None and now >= child.retry_at_ns:
                self._revive(child, "periodic retry")
            elif child.retries and child.running \
                    and now - child.started_ns > child.policy.window_s * NS:
                child.retries = 0  # it runs well again: a later failure starts a new series

    def _stop_children(self, children: list[Child], budget_s: float) -> None:
        """Two-phase stop: SIGTERM to all, wait up to ``budget_s``, SIGKILL the rest."""
        live = [c.proc for c in children if c.proc is not None and c.proc.poll() is None]
        for p in live:
            p.send_signal(signal.SIGTERM)
            if proc_state(p.pid) in ("T", "t"):
                p.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        by_proc = {id(c.proc): c for c in children}
        deadline = clock.monotonic_ns() + int(budget_s * NS)
        for p in live:
            c = by_proc[id(p)]
            try:
                p.wait(max(0.0, (deadline - clock.monotonic_ns()) / NS))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.1f s of SIGTERM; killing it",
                            c.spec.name, budget_s)
                p.kill()
                p.wait(2)
            if p.returncode not in (0, -signal.SIGTERM, -signal.SIGKILL):
                log.warning("%s stopped with exit code %s", c.spec.name, p.returncode)
            self._count_lost(c)
            service_metrics.mark_dead(p.pid, self.metrics_dir)
            self._remove_segments(p.pid)
            self._m.child_up.labels(c.spec.name).set(0)
        for c in children:
            c.restart_at_ns = None

    def stop_all(self) -> None:
        for phase in sorted(STOP_BUDGET_S):
            group = [c for c in self.children.values() if c.spec.stop_phase == phase]
            if group:
                log.info("stopping %s", ", ".join(c.spec.name for c in group))
                self._stop_children(group, STOP_BUDGET_S[phase])

    # ------------------------------------------------------------------ reload

    def _snapshot(self, text: str) -> Path:
        """Write the config children read: a copy, so an edited file reaches them only via
        SIGHUP."""
        snap = self.run_dir / "config.toml"
        tmp = snap.with_name(".config.toml.tmp")
        tmp.write_text(text)
        os.replace(tmp, snap)
        return snap

    def _hup_workers(self) -> None:
        for c in self.children.values():
            if c.spec.reload_on_hup and c.proc is not None and c.proc.poll() is None:
                c.proc.send_signal(signal.SIGHUP)
                log.info("reload: %s told to reload its model", c.spec.name)

    def reload(self) -> None:
        """SIGHUP: workers reload the model; the config file is re-read and the table reconciled."""
        self.notifier.send(RELOADING=1, MONOTONIC_USEC=clock.monotonic_ns() // 1000)
        try:
            self._reload_config()
            for child in self.children.values():
                if child.gave_up and not child.spec.essential:
                    child.retries = 0  # the operator says the cause is fixed: start afresh
                    self._revive(child, "SIGHUP")
        finally:
            self.notifier.send(READY=1)

    def _reload_config(self) -> None:
        if not self.source_path:
            self._hup_workers()  # no file: nothing else to re-read
            return
        try:
            text = Path(self.source_path).read_text(encoding="utf-8")
            new = load(self.source_path)
            if new.fusion.device != self.cfg.fusion.device:
                check_device(new.fusion.device)
        except (ConfigError, RuntimeFailure, OSError, UnicodeDecodeError) as e:
            log.error("reload: config rejected, keeping the running one: %s", e)
            self._hup_workers()
            return
        changed = [sec for sec in ("bus", "metrics") if getattr(new, sec) != getattr(self.cfg, sec)]
        if changed:
            log.error("reload: [%s] changed; restart the service to apply that. The running config "
                      "stays (workers still reload the model)", "], [".join(changed))
            self._hup_workers()
            return
        new = dataclasses.replace(new, path=str(self._snapshot(text)))
        specs = self._fixed_specs if self._fixed_specs is not None else table(new)
        wanted = {s.name: s for s in specs}
        for name in [n for n in self.children if n not in wanted]:
            log.info("reload: %s is no longer configured; stopping it", name)
            self._stop_children([self.children.pop(name)], 3.0)
        for name, spec in wanted.items():
            old = self.children.get(name)
            if old is not None and old.spec == spec:
                if spec.reload_on_hup and old.proc is not None and old.proc.poll() is None:
                    old.proc.send_signal(signal.SIGHUP)
                    log.info("reload: %s told to reload its model", name)
                continue
            if old is not None:
                log.info("reload: configuration of %s changed; restarting it", name)
                self._stop_children([old], 3.0)
            else:
                log.info("reload: starting new %s", name)
            child = self._new_child(spec)
            self.children[name] = child
            self._start(child)
        self.cfg = new
        self.liveness.stall_s = 2 * (new.align.window_ms + new.align.max_lateness_ms) / 1000 + 5

    # ------------------------------------------------------------------ health

    def _workers_ready(self) -> tuple[bool, str]:
        """Whether READY can be sent, and the live model ids (or why not yet)."""
        waiting = self._recorder_pending()
        if waiting:
            return False, waiting
        workers = [c for c in self.children.values() if c.spec.reload_on_hup]
        if not workers:
            return True, "no workers"
        by_pid: dict[int, str] | None = None
        models = []
        for w in workers:
            rep = readiness.read(w.status_file)
            if rep and rep.get("state") == "model":
                models.append(str(rep.get("model_id") or "?"))
                continue
            if by_pid is None:
                by_pid = service_metrics.model_ids_by_pid(self.metrics_dir)
            if w.pid in by_pid:  # the model gauge: a model loaded since any "no-model" report
                models.append(by_pid[w.pid] or "?")
                continue
            if rep and rep.get("state") == "no-model":
                models.append("none")
                continue
            no_artifact = not (Path(self.cfg.fusion.model) / "manifest.json").exists()
            if no_artifact and w.running and clock.monotonic_ns() - w.started_ns > 2 * NS:
                models.append("none")  # nothing to load: it can only report none
                continue
            return False, f"waiting for {w.spec.name} to load its model"
        return True, ",".join(sorted(set(models)))

    def _recorder_pending(self) -> str | None:
        """Why READY waits for the recorder, or None: a running recorder that has not yet
        reported itself subscribed, for at most ``RECORDER_READY_S`` after its start, so that
        what a client publishes once READY is out is in the recording."""
        for c in self.children.values():
            if c.spec.stop_phase != RECORDER or not c.running:
                continue
            if (readiness.read(c.status_file) or {}).get("state") == "ready":
                continue
            if clock.monotonic_ns() - c.started_ns < RECORDER_READY_S * NS:
                return f"waiting for {c.spec.name} to subscribe"
        return None

    def _pipeline_ok(self, now_mono: int) -> str | None:
        """None when alive, else why not (pings stop)."""
        for c in self.children.values():
            if c.gave_up:
                if c.spec.essential:
                    return f"gave up on {c.spec.name}"
                continue
            if c.proc is None or c.proc.poll() is not None:
                if c.spec.essential:
                    return f"{c.spec.name} is down"
                continue
            if proc_state(c.proc.pid) in ("T", "t", "Z"):
                return f"{c.spec.name} is stopped"
        if not self.broker_thread.is_alive():
            return "broker is down"
        # a worker without a model publishes nothing: then only processes are judged
        model_loaded = self._model not in ("none", "?", "unknown")
        return self.liveness.stalled(now_mono, expect_output=model_loaded)

    def _status_line(self, problem: str | None) -> str:
        up = sum(c.running for c in self.children.values())
        devices = self._worker_devices()
        parts = [f"{up}/{len(self.children)} children up",
                 f"model {self._model}" + (f" on {devices}" if devices else ""),
                 f"{self._rate:.1f} classifications/s"]
        restarts = sum(c.restarts for c in self.children.values())
        if restarts:
            parts.append(f"{restarts} restarts")
        gave_up = [c.spec.name for c in self.children.values() if c.gave_up]
        if gave_up:
            parts.append("gave up on " + ", ".join(gave_up))
        if problem:
            parts.append(f"NOT ALIVE: {problem}")
        return "; ".join(parts)

    def _worker_devices(self) -> str:
        """The devices the workers report running on (``cpu``; ``cuda:0,cuda:1``; "" before)."""
        found = set()
        for c in self.children.values():
            rep = readiness.read(c.status_file) if c.spec.reload_on_hup else None
            if rep and rep.get("device"):
                found.add(str(rep["device"]))
        return ",".join(sorted(found))

    def _write_children(self) -> None:
        """``<run dir>/children.json``: what the web console's health page shows of each child."""
        rows = []
        for c in self.children.values():
            state = "gave up" if c.gave_up else "running" if c.running else \
                "restarting" if c.restart_at_ns is not None else "stopped"
            rows.append({"name": c.spec.name, "role": c.spec.role, "essential": c.spec.essential,
                         "state": state, "pid": c.pid if c.running else None,
                         "restarts": c.restarts, "last_exit": c.last_exit, "gave_up": c.gave_up})
        tmp = self.run_dir / ".children.json.tmp"
        try:
            tmp.write_text(json.dumps({"pid": os.getpid(), "model": self._model, "children": rows}))
            os.replace(tmp, self.run_dir / "children.json")
        except OSError as e:  # advisory, like the readiness files
            log.debug("cannot write children.json: %s", e)

    def _monitor(self, sub: zmq.Socket) -> None:
        """Drain what the bus monitor received: inputs and classifications."""
        now = clock.monotonic_ns()
        while True:
            try:
                parts = sub.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if topics.is_class_topic(bytes(parts[0].buffer)):
                self._classes += 1
                self.liveness.on_output(now)
            elif len(parts) > 1:
                t = bytes(parts[0].buffer)
                heartbeat = codec.header_kind(parts[1]) == "heartbeat"
                self.liveness.on_input(now, data=not heartbeat or t in self._stand_ins)

    def _monitor_topics(self) -> list[str]:
        """What the supervisor reads from the bus to see the pipeline work.

        Every classification (``class/``) and, per configured source, its
        smallest input stream (audio or text; video only when it is the only
        one; audio and text when its streams are captured elsewhere). With no
        configured source (inputs from replay or remote hosts) every input,
        since no prefix selects ``*/audio``: name the sources to spare that.
        """
        if not self.cfg.sources:
            return [""]
        subscribed = [topics.CLASS_PREFIX]
        for s in self.cfg.sources:
            small = [st for st in ("audio", "text") if getattr(s, st) is not None]
            if not s.streams():
                small = ["audio", "text"]
            subscribed += [topics.topic(s.name, st) for st in (small or s.streams())]
            if small == ["text"] and s.video is not None:
                # Its text stands in for its video (too heavy to watch): text heartbeats then
                # say that the source's data flows. A text-only source's heartbeats do not.
                self._stand_ins.add(topics.topic(s.name, "text").encode())
        return subscribed

    # ------------------------------------------------------------------ main

    def run(self) -> int:
        self.lock = take_lock(self.run_dir)
        if self.source_path:
            # Children read a snapshot of the validated file, never the file being edited.
            text = Path(self.source_path).read_text(encoding="utf-8")
            self.cfg = dataclasses.replace(load(self.source_path), path=str(self._snapshot(text)))
        self.metrics_dir = service_metrics.prepare_dir(self.run_dir)
        self._reclaim_segments()
        from streamfuse import metrics as m  # only now: prometheus-client picks multiprocess mode

        self._m = m
        ctx = zmq.Context()
        broker = Broker(self.cfg.bus, ctx)
        bound = threading.Event()
        self.broker_error: BaseException | None = None

        def run_broker() -> None:
            try:
                broker.run(on_ready=bound.set)
            except (zmq.ZMQError, ConfigError, OSError) as e:
                self.broker_error = e

        self.broker_thread = threading.Thread(target=run_broker, name="broker", daemon=True)
        self.broker_thread.start()
        while not bound.wait(0.05):
            if not self.broker_thread.is_alive():
                ctx.term()
                err = self.broker_error
                if isinstance(err, ConfigError):
                    raise err
                raise RuntimeFailure(f"the bus could not start: {err}")
        server = None
        sub = connect_sub(ctx, self.cfg.bus, self._monitor_topics(), hwm=100)
        try:
            try:
                server = service_metrics.serve(self.cfg.metrics.listen, self.metrics_dir)
            except RuntimeError as e:  # port taken: one line, exit 1
                raise RuntimeFailure(str(e)) from None
            specs = self._fixed_specs if self._fixed_specs is not None else table(self.cfg)
            # start in reverse stop order: the recorder and workers listen before data flows
            for spec in sorted(specs, key=lambda s: -s.stop_phase):
                child = self._new_child(spec)
                self.children[spec.name] = child
                self._start(child)
            code = self._loop(sub)
        finally:
            self.notifier.stopping("stopping")
            log.info("stopping: captures, aligner, workers, recorder, then the bus")
            self.stop_all()
            sub.close(linger=0)
            broker.stop()
            self.broker_thread.join(5)
            if server is not None:
                server.close()
            ctx.term()
            self.notifier.close()
        log.info("stopped")
        return code

    def _loop(self, sub: zmq.Socket) -> int:
        self.started_ns = clock.monotonic_ns()
        wd = self.notifier.watchdog_interval_s
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        next_ready_check = 0
        while not self.signals.stop.is_set():
            if poller.poll(int(TICK_S * 1000)):
                self._monitor(sub)
            now = clock.monotonic_ns()
            if self.signals.reload.is_set():
                self.signals.reload.clear()
                self.reload()
            self._reap_and_restart()
            fatal = [c for c in self.children.values() if c.gave_up and c.spec.essential]
            if fatal:
                self.notifier.status(f"failed: {fatal[0].gave_up}")
                log.error("stopping: the pipeline cannot run without %s", fatal[0].spec.name)
                return 1
            if now >= next_ready_check and (not self.ready_sent or self._model in ("?", "none")):
                next_ready_check = now + NS // 2
                ok, model = self._workers_ready()
                if ok:
                    self._model = model
                elif not self.ready_sent and now - self.started_ns > READY_FALLBACK_S * NS:
                    log.warning("%s after %.0f s; declaring ready anyway", model, READY_FALLBACK_S)
                    ok, self._model = True, "unknown"
                if ok and not self.ready_sent:
                    self.ready_sent = True
                    log.info("ready: bus bound, %d children up, model %s",
                             sum(c.running for c in self.children.values()), self._model)
                    self.notifier.ready(self._status_line(None))
            problem = self._pipeline_ok(now)
            if wd is not None and now >= self._next_ping_ns:
                # Before READY the pings say "still starting" (systemd arms the watchdog
                # at start; loading torch and a model may outlast WatchdogSec).
                starting = not self.ready_sent and not any(c.gave_up
                                                           for c in self.children.values())
                if problem is None or starting:
                    self.notifier.watchdog()
                    self._next_ping_ns = now + int(wd * NS)
            if now >= self._next_status_ns:
                t0, n0 = self._classes_at
                if t0:
                    self._rate = (self._classes - n0) / ((now - t0) / NS)
                self._classes_at = (now, self._classes)
                self._next_status_ns = now + NS
                self._write_children()
                line = self._status_line(problem)
                if line != self._last_status:
                    if problem and problem not in self._last_status:
                        log.warning("pipeline not alive: %s", problem)
                    self._last_status = line
                    self.notifier.status(line)
        return 0

