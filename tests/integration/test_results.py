"""The results endpoints of a real daemon: classifications, never frames, audio or text."""

from __future__ import annotations

import json
import shutil
import socket
import time
from collections import Counter
from pathlib import Path

import jsonschema
import msgspec
import pytest
import zmq
import zmq.auth

from streamfuse.wire import codec, topics
from streamfuse.wire.schema import classification_json_schema
from streamfuse.wire.sockets import connect_pub
from tests.helpers.proc import broker_logged, ipc_ready, run_streamfuse, stop, wait_for
from tests.integration.daemon_fixtures import Daemon, Feeder

FEED_S = 10.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sub(ctx: zmq.Context, endpoint: str, prefix: str, keys: Path | None = None,
         name: str | None = None) -> zmq.Socket:
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    if name is not None and keys is not None:
        pair = zmq.auth.load_certificate(keys / f"{name}.key_secret")
        sub.curve_publickey, sub.curve_secretkey = pair
        sub.curve_serverkey, _ = zmq.auth.load_certificate(keys / "server.key")
    sub.subscribe(prefix.encode())
    sub.connect(endpoint)
    return sub


def _kinds(sub: zmq.Socket, seen: Counter[str], payloads: list[bytes] | None = None) -> None:
    """Read what is queued on ``sub``: count messages by kind, keep classification payloads."""
    while sub.poll(0):
        parts = sub.recv_multipart()
        msg = codec.decode(parts)
        seen[msg.kind] += 1
        if payloads is not None and msg.kind == "class":
            payloads.append(bytes(parts[2]))


@pytest.mark.slow
def test_results_endpoints_carry_classifications_only(bus_env) -> None:
    """A daemon fed camera, microphone and text for 10 s: subscribers of everything on
    bus.results and bus.public_results, and of class/ on bus.output, receive classifications
    and nothing else, while media flows on the output; every classification's JSON is valid
    against the schema the package ships."""
    public = f"tcp://127.0.0.1:{_free_port()}"
    daemon = Daemon(bus_env, f'[bus]\npublic_results = "{public}"\n')
    on_results: Counter[str] = Counter()
    on_public: Counter[str] = Counter()
    on_output_class: Counter[str] = Counter()
    on_output_all: Counter[str] = Counter()
    payloads: list[bytes] = []
    try:
        daemon.wait_ready()
        assert bus_env.cfg.bus.results == f"ipc://{bus_env.run_dir}/results"
        with zmq.Context() as ctx:
            # Results subscribers take everything offered: the endpoint itself must hold media back.
            subs = {
                "results": (_sub(ctx, bus_env.cfg.bus.results, ""), on_results),
                "public": (_sub(ctx, public, ""), on_public),
                "output class/": (_sub(ctx, bus_env.cfg.bus.output, topics.CLASS_PREFIX),
                                  on_output_class),
                "output": (_sub(ctx, bus_env.cfg.bus.output, ""), on_output_all),
            }
            feeder = Feeder(ctx, bus_env.cfg.bus)
            try:
                # Feed until every subscriber has a classification, then FEED_S seconds more.
                def fed_and_classified() -> bool:
                    feeder.step()
                    for name, (sub, seen) in subs.items():
                        _kinds(sub, seen, payloads if name == "results" else None)
                    return all(seen["class"] for _, seen in subs.values())

                wait_for(fed_and_classified, timeout=90, interval=0.01,
                         what="classifications on every endpoint")
                end = time.monotonic() + FEED_S
                while time.monotonic() < end:
                    fed_and_classified()
                    time.sleep(0.01)
            finally:
                feeder.close()
                for sub, _ in subs.values():
                    sub.close()
    finally:
        assert daemon.close() == 0
    # The feed did reach the bus: media flowed on the output all along ...
    assert on_output_all["frame"] > 50 and on_output_all["audio"] > 250, on_output_all
    # ... while the results endpoints and a class/ subscription carried classifications only.
    for seen in (on_results, on_public, on_output_class):
        assert set(seen) == {"class"}, seen
        assert seen["class"] >= 10, seen  # a window every 0.5 s for FEED_S seconds
    validator = jsonschema.Draft202012Validator(classification_json_schema())
    for raw in payloads:
        c = json.loads(raw)
        validator.validate(c)
        assert c["source"] == "room1" and c["label"] in c["scores"]


def _keys(root: Path) -> Path:
    for name in ("server", "client", "intruder"):
        r = run_streamfuse(["keys", "generate", str(root / "keys"), "--name", name])
        assert r.returncode == 0, r.stderr
    (root / "authorized").mkdir()
    shutil.copy(root / "keys" / "client.key", root / "authorized" / "client.key")
    return root / "keys"


def test_public_results_with_curve_serves_the_authorised_key_only(bus_env, tmp_path: Path) -> None:
    keys = _keys(tmp_path)
    public = f"tcp://127.0.0.1:{_free_port()}"
    bus_env.write(f'[bus]\npublic_results = "{public}"\n[bus.curve]\nenabled = true\n'
                  f'server_secret = "{keys}/server.key_secret"\n'
                  f'authorized = "{tmp_path}/authorized"\n')
    log = tmp_path / "broker.log"
    proc = broker_logged(bus_env.path, log)
    try:
        wait_for(lambda: ipc_ready(bus_env.cfg.bus.input) and ipc_ready(bus_env.cfg.bus.results),
                 timeout=15, what="broker")
        with zmq.Context() as ctx:
            pub = connect_pub(ctx, bus_env.cfg.bus)
            names = ("client", "intruder", None)
            subs = {name: _sub(ctx, public, "", keys, name) for name in names}
            got: dict[str | None, Counter[str]] = {name: Counter() for name in subs}
            try:
                seq = [0]

                def publish_and_read() -> bool:
                    seq[0] += 1
                    body = msgspec.json.encode({"source": "room1", "label": "seven"})
                    msg = codec.class_message("room1", seq[0], 0, seq[0], "seven", 0.9, body)
                    pub.send_multipart(codec.encode(msg))
                    for name, sub in subs.items():
                        _kinds(sub, got[name])
                    text = log.read_text()
                    return got["client"]["class"] >= 5 and "no CurveZMQ key" in text \
                        and "key not authorised" in text

                wait_for(publish_and_read, timeout=20,
                         what="the client served, both others rejected")
                assert "bus results tcp://" in log.read_text()
                # Both others stayed subscribed all along and received not one message.
                assert not got["intruder"] and not got[None], got
            finally:
                for s in (pub, *subs.values()):
                    s.close()
    finally:
        assert stop(proc) == 0
