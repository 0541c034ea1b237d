"""CurveZMQ on the bus: keys from `streamfuse keys generate`, a real broker process,
real TCP clients with the right key, no key and an unknown key."""

from __future__ import annotations

import shutil
import socket
import stat
from pathlib import Path

import zmq
import zmq.auth

from streamfuse.wire import codec
from tests.helpers.proc import broker_logged, ipc_ready, run_streamfuse, stop, wait_for

T = 1_790_000_000_000_000_000  # a plausible capture time (decoders refuse 1970)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keys(root: Path) -> dict[str, Path]:
    for name in ("server", "client", "intruder"):
        r = run_streamfuse(["keys", "generate", str(root / "keys"), "--name", name])
        assert r.returncode == 0, r.stderr
    keys = root / "keys"
    assert stat.S_IMODE((keys / "client.key_secret").stat().st_mode) == 0o600
    (root / "authorized").mkdir()
    shutil.copy(keys / "client.key", root / "authorized" / "client.key")
    return {"dir": keys, "authorized": root / "authorized"}


def _client(ctx: zmq.Context, endpoint: str, keys: Path, name: str | None) -> zmq.Socket:
    pub = ctx.socket(zmq.PUB)
    pub.linger = 0
    if name is not None:
        cpub, csec = zmq.auth.load_certificate(keys / f"{name}.key_secret")
        spub, _ = zmq.auth.load_certificate(keys / "server.key")
        pub.curve_publickey, pub.curve_secretkey, pub.curve_serverkey = cpub, csec, spub
    pub.connect(endpoint)
    return pub


def test_keys_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    assert run_streamfuse(["keys", "generate", str(tmp_path), "--name", "a"]).returncode == 0
    r = run_streamfuse(["keys", "generate", str(tmp_path), "--name", "a"])
    assert r.returncode == 2 and "already exists" in r.stderr


def _curve_broker(bus_env, tmp_path: Path, k: dict, bus_lines: str):
    """A broker with CurveZMQ on and ``bus_lines`` in its ``[bus]``: (process, its log)."""
    bus_env.write(f'[bus]\n{bus_lines}[bus.curve]\nenabled = true\n'
                  f'server_secret = "{k["dir"]}/server.key_secret"\n'
                  f'authorized = "{k["authorized"]}"\n')
    log = tmp_path / "broker.log"
    return broker_logged(bus_env.path, log), log


def test_curve_accepts_the_authorised_key_only(bus_env, tmp_path: Path) -> None:
    k = _keys(tmp_path)
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    proc, log = _curve_broker(bus_env, tmp_path, k, f'public = "{endpoint}"\n')
    try:
        wait_for(lambda: ipc_ready(bus_env.cfg.bus.output), timeout=15, what="broker")
        with zmq.Context() as ctx:
            sub = ctx.socket(zmq.SUB)
            sub.linger = 0
            sub.subscribe(b"")
            sub.connect(bus_env.cfg.bus.output)
            good = _client(ctx, endpoint, k["dir"], "client")
            nokey = _client(ctx, endpoint, k["dir"], None)
            wrong = _client(ctx, endpoint, k["dir"], "intruder")
            try:
                received: list[str] = []
                seq = [0]

                def send_all_and_read() -> bool:
                    seq[0] += 1
                    for src, s in (("good", good), ("nokey", nokey), ("wrong", wrong)):
                        s.send_multipart(codec.encode(codec.text_message(src, seq[0], T + seq[0], "x")))
                    while sub.poll(20):
                        received.append(codec.decode(sub.recv_multipart()).header.source)
                    text = log.read_text()
                    return ("good" in received and "no CurveZMQ key" in text
                            and "key not authorised" in text)

                wait_for(send_all_and_read, timeout=20, what="the good client through, both others rejected")
                # Both bad clients kept publishing all along: not one message got through.
                assert set(received) == {"good"}
            finally:
                for s in (sub, good, nokey, wrong):
                    s.close()
    finally:
        assert stop(proc) == 0


def test_run_refuses_non_loopback_tcp_without_keys(bus_env) -> None:
    bus_env.write('[bus]\npublic = "tcp://0.0.0.0:45612"\n')
    r = run_streamfuse(["run", "--config", str(bus_env.path)], timeout=30)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("streamfuse run: bus.public: tcp://0.0.0.0:45612 is reachable")
    assert "Traceback" not in r.stderr


def test_a_keyless_client_is_named_whichever_way_libzmq_reports_it() -> None:
    """libzmq reports a client without keys (NULL mechanism) at a CurveZMQ endpoint either
    as a handshake failure with no detail or as a protocol error whose value is
    MECHANISM_MISMATCH, depending on how the greetings cross: both are "no key"."""
    from streamfuse.service.broker import reject_reason

    no_key = reject_reason(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, 0)
    assert no_key is not None and "no CurveZMQ key" in no_key
    assert reject_reason(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH) == no_key
    assert reject_reason(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.PROTOCOL_ERROR_ZMTP_MALFORMED_COMMAND_HELLO) == \
        "CurveZMQ protocol error"
    assert reject_reason(zmq.EVENT_HANDSHAKE_FAILED_AUTH, 400) == "key not authorised"
    assert reject_reason(zmq.EVENT_CONNECTED, 0) is None


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _sock(ctx: zmq.Context, kind: int, endpoint: str, keys: Path, name: str | None) -> zmq.Socket:
    s = ctx.socket(kind)
    s.linger = 0
    if name is not None:
        cpub, csec = zmq.auth.load_certificate(keys / f"{name}.key_secret")
        s.curve_publickey, s.curve_secretkey = cpub, csec
        s.curve_serverkey = zmq.auth.load_certificate(keys / "server.key")[0]
    if kind == zmq.SUB:
        s.subscribe(b"")
    s.connect(endpoint)
    return s


def test_curve_rejects_repeated_bad_peers_without_harm(bus_env, tmp_path: Path) -> None:
    """200 rounds of a wrong-key and a keyless publisher and subscriber connecting to the
    public endpoints: the authorised publisher's every message still reaches the local and the
    authorised remote subscriber, the broker stays up and its memory does not grow."""
    k = _keys(tmp_path)
    pub_ep, out_ep = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"
    proc, log = _curve_broker(bus_env, tmp_path, k,
                              f'public = "{pub_ep}"\npublic_output = "{out_ep}"\n')
    try:
        wait_for(lambda: ipc_ready(bus_env.cfg.bus.output), timeout=15, what="broker")
        with zmq.Context() as ctx:
            local = _sock(ctx, zmq.SUB, bus_env.cfg.bus.output, k["dir"], None)
            remote = _sock(ctx, zmq.SUB, out_ep, k["dir"], "client")
            good = _sock(ctx, zmq.PUB, pub_ep, k["dir"], "client")
            got: dict[zmq.Socket, set[int]] = {local: set(), remote: set()}

            def pump(wait_ms: int = 0) -> None:
                for s in got:
                    while s.poll(wait_ms):
                        got[s].add(codec.decode(s.recv_multipart()).header.seq)

            seq = [0]

            def send() -> None:
                seq[0] += 1
                good.send_multipart(codec.encode(codec.text_message("good", seq[0], T + seq[0], "x")))

            wait_for(lambda: (send(), pump(20), all(got.values()))[-1], timeout=20,
                     what="the authorised peers connected")
            first, rss0 = seq[0] + 1, _rss_kib(proc.pid)
            for i in range(200):
                bad = [_sock(ctx, kind, ep, k["dir"], name)
                       for kind, ep in ((zmq.PUB, pub_ep), (zmq.SUB, out_ep))
                       for name in ("intruder", None)]
                for s in bad[:2]:
                    s.send_multipart(codec.encode(codec.text_message("bad", i, T + i, "x")))
                send()
                pump(5)
                for s in bad:
                    s.close()
            want = set(range(first, seq[0] + 1))
            wait_for(lambda: (pump(20), all(want <= v for v in got.values()))[-1], timeout=10,
                     what="every authorised message at both subscribers")
            rss1 = _rss_kib(proc.pid)
            for s in (local, remote, good):
                s.close()
        assert proc.poll() is None
        assert rss1 - rss0 < 10_000, (rss0, rss1)
        text = log.read_text()
        assert "key not authorised" in text and "no CurveZMQ key" in text
        assert text.count("rejected a client") < 20, text  # rate-limited, not one per attempt
    finally:
        assert stop(proc) == 0
