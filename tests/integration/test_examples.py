"""examples/subscriber.py and examples/node/subscriber.js against a running daemon."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import zmq

from tests.helpers.proc import run_streamfuse, wait_for
from tests.integration.daemon_fixtures import Daemon, Feeder

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "examples" / "node"
LINE = re.compile(r"^room1 (zero|one|two) [01]\.\d\d \[[a-z+]*\] \d+\.\d ms$")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_ready() -> str | None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node and npm are needed"
    if not (NODE_DIR / "node_modules" / "zeromq").exists():
        r = subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=NODE_DIR,
                           capture_output=True, text=True, timeout=240)
        if r.returncode != 0:
            return f"npm install failed: {r.stderr.strip()[-300:]}"
    return None


def _curve(root: Path) -> tuple[str, list[str]]:
    """Server and client keys: the [bus.curve] section, and the examples' client flags."""
    keys, authorized = root / "keys", root / "authorized"
    for name in ("server", "client"):
        r = run_streamfuse(["keys", "generate", str(keys), "--name", name])
        assert r.returncode == 0, r.stderr
    authorized.mkdir()
    shutil.copy(keys / "client.key", authorized / "client.key")
    section = (f'[bus.curve]\nenabled = true\nserver_secret = "{keys}/server.key_secret"\n'
               f'authorized = "{authorized}"\n')
    return section, ["--client-secret", str(keys / "client.key_secret"),
                     "--server-public", str(keys / "server.key")]


@pytest.mark.slow
def test_python_and_node_subscribers_print_classifications(bus_env, tmp_path: Path) -> None:
    problem = _node_ready()
    if problem:
        pytest.fail(problem)  # node and npm are part of the set-up (scripts/setup.sh)
    port = _free_port()
    public = f"tcp://127.0.0.1:{_free_port()}"
    curve, client_flags = _curve(tmp_path)
    # with the recorder on: SIGTERM must leave a finished recording holding the classifications
    daemon = Daemon(bus_env, f'[bus]\npublic_results = "{public}"\n{curve}'
                             f'[metrics]\nlisten = "127.0.0.1:{port}"\n[record]\nenabled = true\n')
    subs: list[subprocess.Popen] = []
    try:
        daemon.wait_ready()
        py = [sys.executable, str(ROOT / "examples" / "subscriber.py"),
              "--count", "3", "--timeout", "60"]
        subs = [
            # on this host: the results endpoint over ipc, plain
            subprocess.Popen([*py, "--endpoint", bus_env.cfg.bus.results, "--source", "room1"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
            # from "another host": public_results over TCP, CurveZMQ with the client's key
            subprocess.Popen([*py, "--endpoint", public, *client_flags],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
            subprocess.Popen(["node", str(NODE_DIR / "subscriber.js"), public, "room1", "3",
                              *client_flags],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        ]
        with zmq.Context() as ctx:
            feeder = Feeder(ctx, bus_env.cfg.bus)
            try:
                def done() -> bool:
                    feeder.step()
                    daemon._poll_ready()
                    return all(p.poll() is not None for p in subs)

                wait_for(done, timeout=90, interval=0.01,
                         what="every subscriber to get 3 classifications")
            finally:
                feeder.close()
        for p in subs:
            stdout, stderr = p.communicate(timeout=10)
            assert p.returncode == 0, stderr
            lines = stdout.splitlines()
            assert len(lines) == 3 and all(LINE.match(ln) for ln in lines), stdout
        # The supervisor serves every process's metrics, summed (multiprocess mode).
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
        assert re.search(r'^streamfuse_child_up\{child="worker-0",pid="\d+"\} 1\.0$', text, re.M), text[:3000]
        assert re.search(r'^streamfuse_model_info\{model_id="[0-9a-f]+",pid="\d+"\} 1\.0$', text, re.M)
        classified = re.search(r'^streamfuse_classifications_total\{source="room1"\} (\S+)$', text, re.M)
        assert classified and float(classified.group(1)) >= 3
        assert re.search(r'^streamfuse_window_latency_seconds_bucket\{le="\+Inf",part="total"\} [1-9]',
                         text, re.M)
    finally:
        for p in subs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        assert daemon.close() == 0
    from streamfuse.record.reader import read_messages

    recorded = list(read_messages(sorted((bus_env.root / "recordings").glob("**/*.mcap"))))
    topics = {m.topic for m in recorded}
    assert {"room1/video", "room1/audio", "class/room1"} <= topics, topics
