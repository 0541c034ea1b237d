"""README's recipes, run as written on small generated data.

The commands are read from README.md's fenced code, so README and this test cannot drift
apart: only host paths are mapped into the test's directory (``/data/`` -> ``TMP/data/``).

- "Train on your own data": ``record`` while the daemon runs (a replay of a tiny avdigits
  split stands in for the captures), ``train`` and ``eval`` on the recording's name,
  then the daemon picks the new model up and ``systemctl reload`` (SIGHUP) reloads it.
- "Install paths": an edge host's config and its ``streamfuse capture text`` from the
  capture-only install (no torch), through CurveZMQ into a broker's ``bus.public``, and a
  subscriber on the broker's output sees the line.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from streamfuse.wire import codec
from tests.helpers.install import capture_only_venv, clean_env
from tests.helpers.proc import ipc_ready, stop, wait_for
from tests.integration.supervised import NotifySocket

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def fenced(heading: str) -> list[tuple[str, str]]:
    """``(language, body)`` of every fenced block in README's section ``heading`` (up to the
    next heading of the same or a higher level; a ``#`` line inside a block is no heading)."""
    level = len(heading) - len(heading.lstrip("#"))
    blocks: list[tuple[str, str]] = []
    inside, fence, body = False, None, []
    for line in README.read_text().splitlines():
        if fence is None and re.match(rf"#{{1,{level}}} ", line):
            if inside:
                break
            inside = line == heading
        elif inside and line.startswith("```"):
            if fence is None:
                fence, body = line[3:].strip(), []
            else:
                blocks.append((fence, "\n".join(body)))
                fence = None
        elif fence is not None:
            body.append(line)
    return blocks


def commands(body: str) -> list[list[str]]:
    """The shell lines of a block as argument lists, comments dropped."""
    lines = [shlex.split(ln, comments=True) for ln in body.splitlines()]
    return [ln for ln in lines if ln]


def _mapped(args: list[str], paths: dict[str, str]) -> list[str]:
    out = []
    for a in args:
        for host, here in paths.items():
            a = a.replace(host, here)
        out.append(a)
    return out


def _streamfuse(args: list[str]) -> list[str]:
    assert args[0] == "streamfuse", args
    return [sys.executable, "-m", "streamfuse", *args[1:]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- train recipe


@pytest.fixture
def avdigits_small(tmp_path: Path) -> Path:
    """A tiny avdigits set (the trainer's integration test makes one the same way)."""
    from streamfuse.datasets import avdigits

    out = tmp_path / "avdigits"
    avdigits.build(out, avdigits.Params(segments=40, seed=3, segments_per_file=50))
    return out


def _record_replay(cmd: list[str], split: Path, env: dict[str, str], cwd: Path,
                   log: Path) -> None:
    """Run README's ``record`` line while ``split`` is replayed onto the bus; stop it (SIGTERM,
    as Ctrl-C would) once the recording holds the split's last message."""
    from streamfuse.record import reader

    out = Path(cmd[cmd.index("--out") + 1])
    last = max(r[1] for r in map(reader.file_time_range, sorted(split.glob("*.mcap"))) if r)
    with open(log, "w") as err:
        rec = subprocess.Popen(_streamfuse(cmd), cwd=cwd, env=env, stderr=err)
    try:
        wait_for(lambda: "recording topics" in log.read_text() or rec.poll() is not None,
                 timeout=30, what="the recorder to subscribe")
        assert rec.poll() is None, log.read_text()
        r = subprocess.run(_streamfuse(["streamfuse", "replay", str(split), "--rate", "8"]),
                           cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]

        def holds_the_end() -> bool:
            parts = reader.recording_parts(out)
            got = [m.t_ns for m in reader.read_messages(parts)] if parts else []
            return bool(got) and max(got) >= last

        wait_for(holds_the_end, timeout=30, interval=0.5, what=f"{out.name} to hold the replay")
    finally:
        assert stop(rec, timeout=15) == 0, log.read_text()[-2000:]


@pytest.mark.timeout(600)  # a hang guard: it takes about 40 s here
def test_train_on_your_own_data(avdigits_small: Path, bus_env, tmp_path: Path) -> None:
    (block_lang, block), = fenced("## Train on your own data")
    assert block_lang == "bash"
    lines = commands(block)
    assert [ln[:2] for ln in lines] == [["streamfuse", "record"], ["streamfuse", "train"],
                                        ["streamfuse", "eval"], ["systemctl", "reload"]], lines
    paths = {"/data/": f"{tmp_path}/data/", "/tmp/report": f"{tmp_path}/report",
             "/var/lib/streamfuse/model": str(bus_env.root / "model")}
    record, train, evaluate, _reload = (_mapped(ln, paths) for ln in lines)
    # labels.csv and day2.csv are relative: the commands run in tmp_path, where they are
    shutil.copy(avdigits_small / "train" / "labels.csv", tmp_path / "labels.csv")
    shutil.copy(avdigits_small / "test" / "labels.csv", tmp_path / "day2.csv")
    env = dict(os.environ, STREAMFUSE_CONFIG=str(bus_env.path), OMP_NUM_THREADS="1")
    ns = NotifySocket(tmp_path / "notify.sock")
    daemon_log = tmp_path / "daemon.log"
    with open(daemon_log, "w") as err:
        daemon = subprocess.Popen(_streamfuse(["streamfuse", "run"]), cwd=tmp_path, stderr=err,
                                  env={**env, "NOTIFY_SOCKET": str(ns.path)})
    try:
        wait_for(lambda: ns.times("READY") or daemon.poll() is not None, timeout=90,
                 what="the daemon's READY=1")
        assert daemon.poll() is None, daemon_log.read_text()[-3000:]
        _record_replay(record, avdigits_small / "train", env, tmp_path, tmp_path / "record1.log")
        assert (tmp_path / "data" / "day1-0000.mcap").exists()
        day2 = [a.replace("day1", "day2") for a in record]  # eval's line reads a second day
        _record_replay(day2, avdigits_small / "test", env, tmp_path, tmp_path / "record2.log")
        r = subprocess.run(_streamfuse(train), cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        model_id = json.loads((bus_env.root / "model" / "manifest.json").read_text())["model_id"]
        r = subprocess.run(_streamfuse(evaluate), cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        report = json.loads((tmp_path / "report" / "report.json").read_text())
        assert report["n_windows"] > 0 and 0.0 <= report["accuracy"] <= 1.0
        # "or just wait: workers watch the artifact"
        wait_for(lambda: any(f"model {model_id} on " in f.get("STATUS", "") for _, f in ns.drain()),
                 timeout=60, what="STATUS naming the trained model")
        # `systemctl reload streamfuse` is the unit's ExecReload: SIGHUP to the daemon
        daemon.send_signal(signal.SIGHUP)
        wait_for(lambda: f"model {model_id} unchanged (SIGHUP)" in daemon_log.read_text(),
                 timeout=60, what="the workers to reload on SIGHUP")
        assert daemon.poll() is None
    finally:
        code = stop(daemon, timeout=15)
        ns.close()
    assert code == 0, daemon_log.read_text()[-3000:]


# ----------------------------------------------------------------------------- edge recipe


def _keys(root: Path) -> Path:
    keys = root / "keys"
    for name in ("server", "edge1"):
        argv = ["streamfuse", "keys", "generate", str(keys), "--name", name]
        r = subprocess.run(_streamfuse(argv), capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    (root / "authorized").mkdir()
    shutil.copy(keys / "edge1.key", root / "authorized" / "edge1.key")
    return keys


def test_edge_host_capture_into_the_daemons_bus(bus_env, tmp_path_factory, tmp_path: Path) -> None:
    blocks = fenced("### Install paths")
    (toml,) = [b for lang, b in blocks if lang == "toml"]
    (shell,) = [b for lang, b in blocks if lang == "bash"]
    install, capture = commands(shell)
    assert install[-2:] == ["install", "."], shell  # the capture-only install: no extra
    assert capture[0].endswith("/bin/streamfuse") and capture[1:3] == ["capture", "text"], shell
    source = capture[capture.index("--source") + 1]
    venv_bin = capture_only_venv(tmp_path_factory.getbasetemp())
    keys = _keys(tmp_path)
    public = f"tcp://127.0.0.1:{_free_port()}"
    bus_env.write(f'[bus]\npublic = "{public}"\n[bus.curve]\nenabled = true\n'
                  f'server_secret = "{keys}/server.key_secret"\n'
                  f'authorized = "{tmp_path / "authorized"}"\n')
    edge = tmp_path / "edge.toml"
    edge.write_text(re.sub(r'"tcp://[^"]+"', f'"{public}"', toml)
                    .replace("/etc/streamfuse/keys", str(keys)))
    broker = subprocess.Popen(_streamfuse(["streamfuse", "broker", "--config", str(bus_env.path)]),
                              stderr=subprocess.DEVNULL)
    cap = None
    try:
        wait_for(lambda: ipc_ready(bus_env.cfg.bus.output), timeout=15, what="the broker")
        with zmq.Context() as ctx, ctx.socket(zmq.SUB) as sub:
            sub.linger = 0
            sub.subscribe(f"{source}/".encode())
            sub.connect(bus_env.cfg.bus.output)
            argv = [str(venv_bin / "streamfuse"), *capture[1:]]  # the edge venv's command
            cap = subprocess.Popen(argv, env=clean_env(STREAMFUSE_CONFIG=str(edge)),
                                   stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            texts: list[str] = []

            def seen() -> bool:
                assert cap is not None and cap.stdin is not None
                cap.stdin.write("hello from the edge\n")  # until the subscription is through
                cap.stdin.flush()
                while sub.poll(50):
                    m = codec.decode(sub.recv_multipart())
                    if m.kind == "text":
                        texts.append(bytes(m.payload[0]).decode())
                return bool(texts)

            wait_for(seen, timeout=60, interval=0.2, what=f"{source}/text on the broker's output")
            assert texts[0] == "hello from the edge"
            cap.stdin.close()  # end of input ends the capture
            assert cap.wait(15) == 0, cap.stderr.read() if cap.stderr else ""
    finally:
        if cap is not None and cap.poll() is None:
            stop(cap)
        assert stop(broker) == 0
