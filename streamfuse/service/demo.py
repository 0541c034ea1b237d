"""``streamfuse demo``: the whole system on a machine with no camera or microphone.

1. Build a small avdigits set (``streamfuse dataset avdigits``): espeak-ng
   speech and scikit-learn's digits, or with ``--data DIR`` the FSDD wavs,
   MNIST digits and sounds of a directory of real media (fsdd/, mnist/, sounds/).
2. Train a model (``streamfuse train``), or reuse the one cached for the same
   size and data (default cache ``~/.cache/streamfuse/demo``).
3. Write a config for a temporary run directory (ipc endpoints there) and start
   the real daemon, ``streamfuse run``, waiting for its ``READY=1`` on a notify
   socket of our own (the same protocol systemd uses).
4. ``streamfuse replay`` the test recordings at 1x into its bus, print each
   classification as it arrives, and end with accuracy against the labels and
   the latency summary.

``--live``: the daemon on the configured camera and microphone (``--config``)
with the cached demo model; classifications are printed until Ctrl-C.

Every step is a ``python -m streamfuse`` child, like the daemon's own.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from streamfuse import clock
from streamfuse.clock import NS_PER_S as NS
from streamfuse.config import Config, load
from streamfuse.signals import Signals
from streamfuse.stats import percentile
from streamfuse.wire import topics
from streamfuse.wire.sockets import connect_sub

log = logging.getLogger("streamfuse.demo")


@dataclass(frozen=True)
class Size:
    segments: int
    epochs: int
    replay_s: float = 0.0  # seconds of the test split to replay (0 = all of it)


FULL = Size(segments=600, epochs=20, replay_s=60.0)  # about 3 min to build and train on 2 cores
SMALL = Size(segments=60, epochs=4, replay_s=8.0)


def cache_dir(arg: str | None) -> Path:
    """``--cache``, else ``$XDG_CACHE_HOME/streamfuse/demo`` (``~/.cache`` without it)."""
    if arg:
        return Path(arg)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "streamfuse" / "demo"


def _py() -> list[str]:
    return [sys.executable, "-m", "streamfuse"]


def _step(what: str, argv: list[str], *, quiet: bool = True) -> None:
    """Run one ``streamfuse`` command to completion; its failure ends the demo (exit 1)."""
    print(f"demo: {what} ...", flush=True)
    t0 = clock.monotonic_ns()
    r = subprocess.run(argv, stdout=subprocess.PIPE if quiet else None, stderr=subprocess.PIPE,
                       text=True)
    if r.returncode != 0:
        tail = "\n".join((r.stderr or "").strip().splitlines()[-5:])
        raise DemoFailure(f"{what} failed (exit {r.returncode}):\n{tail}")
    print(f"demo: {what}: done in {(clock.monotonic_ns() - t0) / NS:.0f} s", flush=True)


class DemoFailure(Exception):
    """Exit 1 with this message."""


def _dataset_args(data: Path | None) -> list[str]:
    if data is None:
        return []
    mnist = sorted((data / "mnist").glob("*images*")) if (data / "mnist").is_dir() else []
    args: list[str] = []
    if mnist:
        args += ["--images", str(mnist[0])]
    if (data / "fsdd").is_dir():
        args += ["--speech", str(data / "fsdd")]
    if (data / "sounds").is_dir():
        args += ["--noise", str(data / "sounds")]
    return args


def prepare(cache: Path, size: Size, data: Path | None, config_path: Path) -> tuple[Path, Path]:
    """Build the data set and train the model unless cached; returns (data dir, model dir)."""
    ds_args = _dataset_args(data)
    key = hashlib.sha256(json.dumps([size.segments, ds_args]).encode()).hexdigest()[:10]
    mkey = hashlib.sha256(f"{key} {_trainer_fingerprint()}".encode()).hexdigest()[:10]
    ddir = cache / f"avdigits-{size.segments}-{key}"
    mdir = cache / f"model-{size.segments}-{size.epochs}-{mkey}"
    print(f"demo: cache {cache} (data {ddir.name}, model {mdir.name})", flush=True)
    if not (ddir / "avdigits.json").exists():
        tmp = ddir.with_name(ddir.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        _step(f"building avdigits, {size.segments} segments",
              [*_py(), "dataset", "avdigits", "--out", str(tmp),
               "--segments", str(size.segments), *ds_args])
        shutil.rmtree(ddir, ignore_errors=True)
        tmp.rename(ddir)  # only a complete set is ever reused
    else:
        print(f"demo: reusing data set {ddir}", flush=True)
    if (mdir / "manifest.json").exists() and not _loads(mdir):
        shutil.rmtree(mdir)
    if not (mdir / "manifest.json").exists():
        tmp = mdir.with_name(mdir.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        _step(f"training a model, {size.epochs} epochs",
              [*_py(), "train", "--recordings", str(ddir / "train"),
               "--val-recordings", str(ddir / "val"), "--out", str(tmp),
               "--epochs", str(size.epochs), "--quiet", "--config", str(config_path)])
        shutil.rmtree(mdir, ignore_errors=True)
        tmp.rename(mdir)
    else:
        print(f"demo: reusing model {mdir}", flush=True)
    return ddir, mdir


def _trainer_fingerprint() -> str:
    """A hash of the trainer's and the model's source code.

    A cached model trained by another version of the trainer is not reused: a new default
    recipe (frame size, encoder, augmentation) changes what the demo should show, and an old
    model would still load (``_loads``) and be kept forever. Hashing the source rather than
    ``TrainOptions`` also catches recipe changes that are code, not options, and keeps torch
    out of this process.
    """
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    sources = [*(root / "train").glob("*.py"), root / "fusion" / "model.py",
               root / "fusion" / "features.py"]
    for f in sorted(sources):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def _loads(model: Path) -> bool:
    """Whether a cached model still loads with this version of the code."""
    from streamfuse.fusion.artifact import ArtifactError, load_artifact

    try:
        load_artifact(model)
    except ArtifactError as e:
        print(f"demo: the cached model no longer loads ({str(e)[:120]}...); training again",
              flush=True)
        return False
    return True


def write_config(run_dir: Path, model: Path | None, *, metrics: str = "", web: str = "") -> Path:
    """A daemon config with every endpoint under ``run_dir`` and no local captures;
    ``web``: where its console listens ("" = no console)."""
    text = (
        f'[bus]\ninput = "ipc://{run_dir}/in"\noutput = "ipc://{run_dir}/out"\n\n'
        f'[align]\noutput = "ipc://{run_dir}/windows"\nrequired = ["video", "audio"]\n\n'
        f'[fusion]\nmodel = "{model or run_dir / "model"}"\nworkers = 1\n\n'
        f'[metrics]\nlisten = "{metrics}"\n\n'
        f'[web]\nlisten = "{web}"\n'
    )
    path = run_dir / "demo.toml"
    path.write_text(text)
    return path


def web_listen(preferred: int = 8080) -> str:
    """``127.0.0.1:8080``, or another free loopback port when that one is taken."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


# ----------------------------------------------------------------------------- the daemon


class Daemon:
    """``streamfuse run`` as a child, with our own notify socket to see READY=1."""

    def __init__(self, config: Path, run_dir: Path) -> None:
        self.notify_path = run_dir / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.log_path = run_dir / "daemon.log"
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify_path)}
        with open(self.log_path, "w") as err:
            self.proc = subprocess.Popen([*_py(), "run", "--config", str(config)], env=env,
                                         stderr=err, stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout_s: float, stop: Signals) -> str:
        """The STATUS that came with READY=1."""
        deadline = clock.monotonic_ns() + int(timeout_s * NS)
        self.notify.settimeout(0.2)
        while clock.monotonic_ns() < deadline and not stop.stop.is_set():
            if self.proc.poll() is not None:
                raise DemoFailure(f"the daemon exited with code {self.proc.returncode}:\n"
                                  f"{self.tail()}")
            try:
                data = self.notify.recv(4096).decode()
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
            if fields.get("READY") == "1":
                return fields.get("STATUS", "")
        raise DemoFailure(f"the daemon was not ready within {timeout_s:.0f} s:\n{self.tail()}")

    def tail(self, n: int = 8) -> str:
        return "\n".join(self.log_path.read_text().strip().splitlines()[-n:])

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.notify.close()
        return self.proc.returncode


# ----------------------------------------------------------------------------- results


@dataclass
class Results:
    rows: list[dict] = field(default_factory=list)

    def add(self, c: dict, truth: str | None) -> None:
        self.rows.append({**c, "truth": truth})

    def summary(self) -> dict:
        judged = [r for r in self.rows if r["truth"] is not None]
        correct = sum(r["label"] == r["truth"] for r in judged)
        lat: dict[str, dict[str, float]] = {}
        for part in ("total", "align", "queue", "infer"):
            vals = sorted(float(r["latency_ms"].get(part, 0.0))
                          for r in self.rows if r.get("latency_ms"))
            if vals:
                lat[part] = {"p50": percentile(vals, 50), "p99": percentile(vals, 99)}
        return {"classifications": len(self.rows), "labelled": len(judged),
                "accuracy": correct / len(judged) if judged else None, "latency_ms": lat}


def read_label_spans(path: Path) -> dict[str, list[tuple[int, int, str]]]:
    """``labels.csv`` of avdigits (absolute ``t_ns`` start/end) -> spans per source."""
    spans: dict[str, list[tuple[int, int, str]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            spans.setdefault(row["source"], []).append(
                (int(row["start"]), int(row["end"]), row["label"]))
    return spans


def truth(spans: dict[str, list[tuple[int, int, str]]], source: str, t0: int,
          t1: int) -> str | None:
    """The label covering more than half of the window (the trainer's majority rule), else
    None."""
    cover: dict[str, int] = {}
    for s, e, label in spans.get(source, []):
        overlap = min(t1, e) - max(t0, s)
        if overlap > 0:
            cover[label] = cover.get(label, 0) + overlap
    if not cover:
        return None
    best = max(cover, key=lambda k: cover[k])
    return best if 2 * cover[best] > (t1 - t0) else None


def _line(c: dict, ok: str) -> str:
    present = "+".join(k for k, v in sorted(c.get("present", {}).items()) if v) or "-"
    t = c.get("t_end_ns", 0) / NS
    hms = f"{int(t // 3600 % 24):02d}:{int(t // 60 % 60):02d}:{t % 60:06.3f}"
    score = max(c.get("scores", {}).values(), default=0.0)
    lat = c.get("latency_ms", {}).get("total", 0.0)
    return (f"{hms}  {c.get('source', '?'):<8} {c.get('label', '?'):<6} {score:5.2f}  "
            f"{present:<16} {lat:7.1f} ms  {ok}")


def watch(sub: zmq.Socket, *, until, spans, results: Results, stop: Signals) -> None:
    """Print classifications until ``until()`` is true (checked between messages)."""
    while not stop.stop.is_set() and not until():
        if not sub.poll(100):
            continue
        parts = sub.recv_multipart()
        if not topics.is_class_topic(parts[0]) or len(parts) < 3:
            continue
        try:
            c = json.loads(bytes(parts[2]).decode())
        except (UnicodeDecodeError, ValueError):
            continue
        want = (truth(spans, c.get("source", ""), c.get("t_start_ns", 0), c.get("t_end_ns", 0))
                if spans else None)
        results.add(c, want)
        mark = "" if want is None else ("ok" if c.get("label") == want else f"(was {want})")
        print(_line(c, mark), flush=True)


def _report(s: dict) -> None:
    print()
    if s["accuracy"] is not None:
        print(f"demo: accuracy {s['accuracy']:.1%} on {s['labelled']} labelled windows "
              f"({s['classifications']} classifications)")
    for part, v in s["latency_ms"].items():
        print(f"demo: latency_ms.{part:<5}  p50 {v['p50']:7.2f}   p99 {v['p99']:7.2f}")


def _keep_serving(sub: zmq.Socket, daemon: Daemon, cfg: Config, results: Results,
                  stop: Signals) -> bool:
    """``--keep``: report, then hold the daemon and its console up until Ctrl-C."""
    _report(results.summary())
    print(f"demo: --keep: the daemon and its web console (http://{cfg.web.listen}/) stay up; "
          "Ctrl-C to stop", flush=True)
    watch(sub, until=lambda: daemon.proc.poll() is not None, spans={}, results=Results(), stop=stop)
    return True


# ----------------------------------------------------------------------------- main


def _replay_and_watch(test_files: list[str], size: Size, cfg_path: Path, sub: zmq.Socket,
                      spans: dict[str, list[tuple[int, int, str]]], results: Results,
                      stop: Signals) -> None:
    """Replay the test recordings at 1x and print each classification as it arrives, until
    the last windows have closed after the replay's end. Raises :class:`DemoFailure`."""
    # --small replays the first seconds only: enough windows to see it work
    span = ["--end", str(size.replay_s)] if size.replay_s else []
    replay = subprocess.Popen([*_py(), "replay", *test_files, "--rate", "1", *span,
                               "--config", str(cfg_path)],
                              stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    print(f"demo: replaying {len(test_files)} test recording(s) at 1x; "
          "one line per classification: time source label score modalities "
          "latency", flush=True)
    try:
        watch(sub, until=lambda: replay.poll() is not None, spans=spans,
              results=results, stop=stop)
    finally:
        if replay.poll() is None:
            replay.send_signal(signal.SIGTERM)
        try:
            _, err = replay.communicate(timeout=15)
        except subprocess.TimeoutExpired:  # two-phase stop: SIGTERM, then SIGKILL
            replay.kill()
            _, err = replay.communicate()
    if replay.returncode != 0 and not stop.stop.is_set():
        raise DemoFailure(f"replay failed (exit {replay.returncode}): "
                          f"{err.strip()[-400:]}")
    # the last windows close after the replay's final heartbeats
    drain_until = clock.monotonic_ns() + 3 * NS
    watch(sub, until=lambda: clock.monotonic_ns() > drain_until, spans=spans,
          results=results, stop=stop)


def run_replay_demo(size: Size, cache: Path, data: Path | None, stop: Signals, *,
                    keep: bool = False) -> int:
    """Steps 1-4 of the module docstring with ``data`` (None: generated media), the model
    cached under ``cache``; with ``keep``, the daemon serves on until ``stop``. 0, or 1
    when the daemon did not exit cleanly; :class:`DemoFailure` for a step that failed."""
    cache.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="streamfuse-demo-"))
    try:
        cfg_path = write_config(run_dir, None)
        ddir, mdir = prepare(cache, size, data, cfg_path)
        cfg_path = write_config(run_dir, mdir, web=web_listen())
        cfg = load(cfg_path, environ={})
        test_files = sorted(str(p) for p in (ddir / "test").glob("*.mcap"))
        spans = read_label_spans(ddir / "test" / "labels.csv")
        daemon = Daemon(cfg_path, run_dir)
        results = Results()
        reported = False
        try:
            t0 = clock.monotonic_ns()
            status = daemon.wait_ready(120, stop)
            print(f"demo: daemon ready in {(clock.monotonic_ns() - t0) / NS:.0f} s ({status})",
                  flush=True)
            print(f"demo: web console on http://{cfg.web.listen}/ (live; /health, /recordings)",
                  flush=True)
            with zmq.Context() as ctx:
                sub = connect_sub(ctx, cfg.bus, [topics.class_topic(s) for s in spans],
                                  endpoint=cfg.bus.results)
                try:
                    _replay_and_watch(test_files, size, cfg_path, sub, spans, results, stop)
                    if keep and not stop.stop.is_set():
                        reported = _keep_serving(sub, daemon, cfg, results, stop)
                finally:
                    sub.close()
        finally:
            code = daemon.stop()
            if code != 0:
                print(f"demo: the daemon exited with code {code}:\n{daemon.tail()}",
                      file=sys.stderr)
        s = results.summary()
        if not reported:
            _report(s)
        (run_dir / "summary.json").write_text(json.dumps(s))
        if not results.rows:
            raise DemoFailure(f"no classification arrived; daemon log:\n{daemon.tail()}")
        return 0 if code == 0 else 1
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def run_live_demo(cfg: Config, cache: Path, stop: Signals) -> int:
    """``--live``: the daemon on ``cfg``'s sources with the newest model cached under
    ``cache`` (else ``fusion.model``), classifications printed until ``stop``."""
    models = sorted(cache.glob("model-*/manifest.json"), key=lambda p: p.stat().st_mtime)
    if not cfg.sources:
        raise DemoFailure(
            "--live needs sources (camera, microphone) in the config: pass --config F")
    run_dir = Path(tempfile.mkdtemp(prefix="streamfuse-demo-"))
    try:
        model = models[-1].parent if models else Path(cfg.fusion.model)
        print(f"demo: live on {', '.join(s.name for s in cfg.sources)} with model {model}",
              flush=True)
        env_cfg = run_dir / "live.toml"
        # the user's config, with the demo model and a private run directory
        src = Path(cfg.path).read_text() if cfg.path else ""
        env_cfg.write_text(src)
        os.environ.update({"STREAMFUSE_FUSION_MODEL": json.dumps(str(model)),
                           "STREAMFUSE_BUS_INPUT": json.dumps(f"ipc://{run_dir}/in"),
                           "STREAMFUSE_BUS_OUTPUT": json.dumps(f"ipc://{run_dir}/out"),
                           "STREAMFUSE_ALIGN_OUTPUT": json.dumps(f"ipc://{run_dir}/windows"),
                           "STREAMFUSE_METRICS_LISTEN": '""'})
        live_cfg = load(env_cfg)
        daemon = Daemon(env_cfg, run_dir)
        try:
            daemon.wait_ready(120, stop)
            if live_cfg.web.listen:
                print(f"demo: web console on http://{live_cfg.web.listen}/", flush=True)
            print("demo: ready; Ctrl-C to stop", flush=True)
            with zmq.Context() as ctx:
                sub = connect_sub(ctx, live_cfg.bus, [topics.CLASS_PREFIX],
                                  endpoint=live_cfg.bus.results)
                try:
                    watch(sub, until=lambda: daemon.proc.poll() is not None, spans={},
                          results=Results(), stop=stop)
                finally:
                    sub.close()
        finally:
            code = daemon.stop()
        return 0 if code == 0 else 1
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
