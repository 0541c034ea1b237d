"""Text capture: real processes, real ZeroMQ, real FIFOs and files."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from streamfuse.wire import codec
from streamfuse.wire.schema import Message
from streamfuse.wire.sockets import connect_sub
from tests.helpers.proc import PYTHON, run_streamfuse, stop, streamfuse, wait_for


class Bus:
    """A SUB socket on the broker's output, collecting decoded messages of one topic."""

    def __init__(self, ctx: zmq.Context, env, prefix: str) -> None:
        self.sock = connect_sub(ctx, env.cfg.bus, [prefix])
        self.messages: list[Message] = []
        self.log = ""  # the capture's stderr, once _watched has stopped it

    def pump(self) -> None:
        while self.sock.poll(20):
            self.messages.append(codec.decode(self.sock.recv_multipart()))

    def texts(self) -> list[str]:
        self.pump()
        return [m.text() for m in self.messages if m.kind == "text"]

    def heartbeats(self) -> int:
        self.pump()
        return sum(m.kind == "heartbeat" for m in self.messages)

    def close(self) -> None:
        self.sock.close()


def _capture(env, text_cfg: str, **kw) -> subprocess.Popen:
    env.write(f'[[sources]]\nname = "room1"\n[sources.text]\n{text_cfg}\n')
    return streamfuse(["capture", "text", "--source", "room1", "--config", str(env.path)],
                      stderr=subprocess.PIPE, text=True, **kw)


def _stop(proc: subprocess.Popen) -> str:
    assert stop(proc) == 0
    return proc.stderr.read()


@contextlib.contextmanager
def _watched(env, proc: subprocess.Popen) -> Iterator[Bus]:
    """The capture's text topic on the bus, once it sends heartbeats. On the way out the bus
    is closed and the capture stopped (exit code 0), its stderr in ``bus.log``."""
    with zmq.Context() as ctx:
        bus = Bus(ctx, env, "room1/text")
        try:
            wait_for(bus.heartbeats, timeout=15, what="text capture heartbeats")
            yield bus
        finally:
            bus.close()
            bus.log = _stop(proc)


def _check_stream(messages: list[Message]) -> None:
    """seq counts from 0 without gaps, and no text is older than an earlier watermark."""
    assert [m.header.seq for m in messages] == list(range(messages[0].header.seq, messages[0].header.seq + len(messages)))
    watermark = 0
    for m in messages:
        assert m.t_ns >= watermark
        if m.kind == "heartbeat":
            watermark = m.t_ns
    # heartbeats every 100 ms (heartbeat_ms): at least one per 500 ms, even on a loaded machine
    span_s = (messages[-1].t_ns - messages[0].t_ns) / 1e9
    assert sum(m.kind == "heartbeat" for m in messages) >= span_s / 0.5


@pytest.mark.slow
def test_send_publishes_text_and_rejects_bad_messages(broker) -> None:
    proc = _capture(broker, 'input = "zmq"\nmax_bytes = 64\n')
    with _watched(broker, proc) as bus:
        args = ["--source", "room1", "--config", str(broker.path)]
        r = run_streamfuse(["send", *args, "héllo wörld ✓ 七"])
        assert r.returncode == 0, r.stderr
        # invalid UTF-8, passed as raw bytes on the command line
        bad = subprocess.run([PYTHON.encode(), b"-m", b"streamfuse", b"send", b"ab\xff\xfecd",
                              *(a.encode() for a in args)], capture_output=True, timeout=60)
        assert bad.returncode == 1
        assert b"rejected: text: not UTF-8" in bad.stderr
        r = run_streamfuse(["send", *args, "x" * 65])
        assert r.returncode == 1 and "rejected: too_large" in r.stderr
        r = run_streamfuse(["send", *args, ""])  # as the line inputs skip empty lines
        assert r.returncode == 1 and "rejected: text: empty message" in r.stderr
        r = run_streamfuse(["send", *args, "still alive"])
        assert r.returncode == 0, r.stderr
        wait_for(lambda: len(bus.texts()) >= 2, timeout=10, what="texts on the bus")
        assert bus.texts() == ["héllo wörld ✓ 七", "still alive"]
        texts = [m for m in bus.messages if m.kind == "text"]
        assert all(m.header.origin == "zmq" and m.topic == "room1/text" for m in texts)
        _check_stream(bus.messages)
    log = bus.log
    assert "published=2" in log and "dropped=3 (text=2 too_large=1)" in log, log


def test_send_without_a_capture_fails_with_one_line(bus_env) -> None:
    bus_env.write('[[sources]]\nname = "room1"\n[sources.text]\ninput = "zmq"\n')
    r = run_streamfuse(["send", "hi", "--source", "room1", "--timeout", "0.3", "--config", str(bus_env.path)])
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no text capture for source 'room1' answered" in lines[0]


def test_fifo_lines_survive_writers_coming_and_going(broker, tmp_path: Path) -> None:
    fifo = tmp_path / "sub" / "chat.fifo"  # does not exist yet: the capture creates it
    proc = _capture(broker, f'input = "fifo:{fifo}"\nmax_bytes = 32\n')
    with _watched(broker, proc) as bus:
        assert fifo.is_fifo()
        with open(fifo, "wb") as w:
            w.write("one\nzwei drei ü\n".encode())
            w.write(b"\xc3\x28 bad\n" + b"y" * 40 + b"\n")
        wait_for(lambda: len(bus.texts()) >= 2, timeout=10, what="first writer's lines")
        with open(fifo, "wb") as w:  # a second writer, after the first closed
            w.write("après\r\nno newline at the end".encode())
        wait_for(lambda: len(bus.texts()) >= 4, timeout=10, what="second writer's lines")
        assert bus.texts() == ["one", "zwei drei ü", "après", "no newline at the end"]
        assert {m.header.origin for m in bus.messages if m.kind == "text"} == {"fifo"}
        _check_stream(bus.messages)
    log = bus.log
    assert "published=4" in log and "dropped=2 (text=1 too_large=1)" in log, log


def test_file_is_followed_through_rotation_and_truncation(broker, tmp_path: Path) -> None:
    path = tmp_path / "chat.log"
    path.write_text("written before the capture started\n")
    proc = _capture(broker, f'input = "file:{path}"\n')
    with _watched(broker, proc) as bus:

        def append(data: bytes) -> None:
            with open(path, "ab") as f:
                f.write(data)

        append("first ✓\n".encode())
        wait_for(lambda: bus.texts() == ["first ✓"], timeout=10, what="first appended line")
        append(b"sec")  # a partial line waits for its end
        append(b"ond\n\xff\xfe\n")
        wait_for(lambda: len(bus.texts()) >= 2, timeout=10, what="completed line")
        os.rename(path, tmp_path / "chat.log.1")  # rotation: rename, then a new file
        append("after rotation — ok\n".encode())
        wait_for(lambda: len(bus.texts()) >= 3, timeout=10, what="line in the new file")
        path.write_text("")  # truncation: what follows is shorter than what was read
        wait_for(lambda: path.stat().st_size == 0, what="truncation")
        append("après truncation\n".encode())
        wait_for(lambda: len(bus.texts()) >= 4, timeout=10, what="line after truncation")
        assert bus.texts() == ["first ✓", "second", "after rotation — ok", "après truncation"]
        _check_stream(bus.messages)
    log = bus.log
    assert "published=4" in log and "dropped=1 (text=1)" in log, log


def test_stdin_input_ends_cleanly_at_end_of_input(broker) -> None:
    proc = _capture(broker, 'input = "stdin"\n', stdin=subprocess.PIPE)
    with zmq.Context() as ctx:
        bus = Bus(ctx, broker, "room1/text")
        try:
            wait_for(bus.heartbeats, timeout=15, what="text capture heartbeats")
            proc.stdin.write("hello from stdin\nκαλημέρα\n")
            proc.stdin.close()
            assert proc.wait(10) == 0
            wait_for(lambda: len(bus.texts()) >= 2, timeout=10, what="stdin lines")
            assert bus.texts() == ["hello from stdin", "καλημέρα"]
        finally:
            bus.close()
    assert "end of input" in proc.stderr.read()


@pytest.mark.slow
def test_heartbeats_follow_each_window_end(broker) -> None:
    """Windows end every 500 ms ([align] defaults): a heartbeat comes just after each end, so
    the aligner need not wait for the next periodic one (set to a slow 1 s here)."""
    with zmq.Context() as ctx:
        bus = Bus(ctx, broker, "room1/text")
        proc = _capture(broker, 'input = "zmq"\nheartbeat_ms = 1000')
        try:
            wait_for(bus.heartbeats, timeout=15, what="text capture heartbeats")
            wait_for(lambda: bus.heartbeats() >= 6, timeout=15, what="six heartbeats")
        finally:
            bus.close()
            _stop(proc)
    hop = 500_000_000
    t = [m.t_ns for m in bus.messages]
    ends = range((t[0] // hop + 1) * hop, t[-1], hop)
    lags_ms = sorted(min(x - e for x in t if x >= e) / 1e6 for e in ends)
    assert len(lags_ms) >= 4 and lags_ms[len(lags_ms) // 2] < 5.0, lags_ms
