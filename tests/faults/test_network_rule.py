"""One network rule for every socket that can face a network: the bus, the text capture's
input and the metrics HTTP server. Off loopback: CurveZMQ or an explicit opt-in, else exit 2
naming the key; every receiving socket has a maximum message size."""

from __future__ import annotations

import pytest
import zmq

from streamfuse.capture.text import text_endpoint
from tests.helpers.faults import free_port, last_line, refused
from tests.helpers.proc import stop, streamfuse, wait_for

TEXT = '[[sources]]\nname = "room1"\n[sources.text]\n'


@pytest.mark.slow
@pytest.mark.parametrize("host", ["0.0.0.0", "*"])
def test_text_endpoint_off_loopback_is_refused(bus_env, host: str) -> None:
    port = free_port()
    r = refused(bus_env, f'{TEXT}endpoint = "tcp://{host}:{port}"\n')
    assert r.returncode == 2, r.stderr
    assert last_line(r.stderr).startswith(
        f"streamfuse run: sources[0].text.endpoint: tcp://{host}:{port} is reachable from the "
        "network; set [bus.curve]"), r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_text_capture_alone_refuses_it_too(bus_env) -> None:
    port = free_port()
    r = refused(bus_env, f'{TEXT}endpoint = "tcp://0.0.0.0:{port}"\n',
                command=("capture", "text", "--source", "room1"))
    assert r.returncode == 2, r.stderr
    assert last_line(r.stderr).startswith(
        f"streamfuse capture: sources[0].text.endpoint: tcp://0.0.0.0:{port} is reachable"
    ), r.stderr
    with zmq.Context() as ctx, ctx.socket(zmq.REP) as probe:
        probe.bind(f"tcp://127.0.0.1:{port}")  # the port is still free


@pytest.mark.slow
def test_metrics_off_loopback_needs_allow_remote(bus_env) -> None:
    port = free_port()
    r = refused(bus_env, f'[metrics]\nlisten = "0.0.0.0:{port}"\n')
    assert r.returncode == 2
    assert last_line(r.stderr) == (
        f"streamfuse run: metrics.listen: 0.0.0.0:{port} is reachable from the network and metrics "
        "have no authentication; use a loopback address or set metrics.allow_remote = true")


@pytest.mark.slow
def test_text_input_has_the_bus_maximum_message_size(bus_env) -> None:
    """A message over bus.max_message_mb never reaches the capture: ZeroMQ drops the peer."""
    port = free_port()
    bus_env.write(f'[bus]\nmax_message_mb = 1\n[[sources]]\nname = "room1"\n[sources.text]\n'
                  f'endpoint = "tcp://127.0.0.1:{port}"\nmax_bytes = 1000\n')
    endpoint = text_endpoint(bus_env.cfg.sources[0].text, bus_env.cfg.bus, "room1")
    proc = streamfuse(["capture", "text", "--source", "room1", "--config", str(bus_env.path)])
    try:
        with zmq.Context() as ctx:
            def ask(payload: bytes) -> bytes | None:
                req = ctx.socket(zmq.REQ)
                req.linger = 0
                req.connect(endpoint)
                req.send(payload)
                answer = req.recv() if req.poll(3000) else None
                req.close()
                return answer

            wait_for(lambda: ask(b"hello") == b"ok", timeout=60, what="text capture answering")
            assert ask(b"x" * 5000).startswith(b"rejected: too_large")  # under the socket limit
            assert ask(b"x" * (2 * 1024 * 1024)) is None  # over it: dropped by ZeroMQ, unanswered
            assert ask(b"still here") == b"ok"
    finally:
        assert stop(proc, timeout=10) == 0
