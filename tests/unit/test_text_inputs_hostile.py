"""Hostile text inputs, through the real input classes: bounded memory and time per read,
nothing raises out of a read, and a path that can never be followed is refused at start."""

from __future__ import annotations

import os
import threading
import time

import pytest

from streamfuse.capture import text as T

MAX = 64


def _read_in_thread(inp, timeout_s: float = 10.0):
    """One ``inp.read`` on a thread; (returned, finished?) so a hang fails instead of hanging."""
    box: list = []
    t = threading.Thread(target=lambda: box.append(inp.read(0.01)), daemon=True)
    t.start()
    t.join(timeout_s)
    return (box[0] if box else None), not t.is_alive()


def test_file_input_refuses_a_directory_at_start(tmp_path):
    stop = threading.Event()
    with pytest.raises(OSError, match="not a regular file"):
        T.FileInput(str(tmp_path), MAX, stop)


@pytest.mark.parametrize("path", ["/dev/zero", "fifo"])
def test_file_input_refuses_devices_and_pipes(tmp_path, path):
    """/dev/zero never ends (the read looped forever, ignoring stop); a FIFO cannot be
    read at an offset (pread raised ESPIPE out of the node): fifo: is the input for that."""
    if path == "fifo":
        path = str(tmp_path / "p")
        os.mkfifo(path)
    with pytest.raises(OSError, match="not a regular file"):
        T.FileInput(path, MAX, threading.Event())


def test_file_replaced_by_a_directory_while_followed(tmp_path):
    p = tmp_path / "log"
    p.write_bytes(b"")
    inp = T.FileInput(str(p), MAX, threading.Event())
    try:
        p.unlink()
        p.mkdir()
        for _ in range(3):
            items, done = _read_in_thread(inp)
            assert done and items == []
        p.rmdir()
        p.write_bytes(b"back\n")
        got = []
        for _ in range(3):
            got += [i.raw for i in inp.read(0.01)]
        assert got == [b"back"]
    finally:
        inp.close()


def test_one_read_of_a_big_file_is_bounded(tmp_path):
    """A file that appears (or is rotated in) holding 32 MiB of lines: each read hands out
    a bounded batch, not every line of the file at once."""
    p = tmp_path / "log"
    inp = T.FileInput(str(p), MAX, threading.Event())
    line = b"x" * 31 + b"\n"
    p.write_bytes(line * (1 << 20))
    try:
        total = 0
        for _ in range(1000):
            items, done = _read_in_thread(inp)
            assert done and len(items) <= T.READ_BUDGET // len(line) + 1
            total += len(items)
            if total == 1 << 20:
                break
        assert total == 1 << 20
    finally:
        inp.close()


def test_rotation_is_seen_only_after_the_old_file_is_read(tmp_path):
    p = tmp_path / "log"
    p.write_bytes(b"")
    inp = T.FileInput(str(p), MAX, threading.Event())
    try:
        with open(p, "ab") as f:
            f.write(b"old\n" * (T.READ_BUDGET // 2))
        os.rename(p, tmp_path / "log.1")
        p.write_bytes(b"new\n")
        got: list[bytes] = []
        for _ in range(20):
            got += [i.raw for i in inp.read(0.01)]
        assert got == [b"old"] * (T.READ_BUDGET // 2) + [b"new"]
    finally:
        inp.close()


def test_fifo_writers_coming_and_going_a_thousand_times(tmp_path):
    path = str(tmp_path / "fifo")
    inp = T.FifoInput(path, MAX)
    fds_before = len(os.listdir("/proc/self/fd"))
    got: list = []
    try:
        for i in range(1000):
            w = os.open(path, os.O_WRONLY)
            os.write(w, b"m%d\n" % i if i % 2 else b"partial%d" % i)
            os.close(w)
            deadline = time.monotonic() + 5
            while len(got) <= i and time.monotonic() < deadline:
                got += inp.read(0.05)
        assert [it.raw for it in got] == [(b"m%d" if i % 2 else b"partial%d") % i
                                          for i in range(1000)]
        assert len(os.listdir("/proc/self/fd")) == fds_before
        # no writer now: after the last end of input, a read waits (no busy loop)
        for _ in range(3):
            assert inp.read(0.01) == []
        t0 = time.monotonic()
        assert inp.read(0.2) == []
        assert time.monotonic() - t0 >= 0.15
    finally:
        inp.close()


def test_stdin_line_of_100_mb_without_newline(tmp_path):
    r, w = os.pipe()
    inp = T.StreamInput(r, "stdin", MAX)
    chunk = b"y" * (1 << 20)

    def writer():
        for _ in range(100):
            os.write(w, chunk)
        os.write(w, b"\nafter\n\xff\xfe\n a\x00b\n")
        os.close(w)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    items: list = []
    try:
        while True:
            got = inp.read(1.0)
            if got is None:
                break
            items += got
            assert len(inp.lines.buf) <= MAX + T.READ_CHUNK
    finally:
        os.close(r)
    t.join(5)
    raws = [i.raw for i in items]
    assert isinstance(raws[0], T.Rejected) and raws[0].reason == "too_large"
    assert raws[1:] == [b"after", b"\xff\xfe", b" a\x00b"]
    with pytest.raises(T.Rejected, match="text: not UTF-8"):
        T.validate(raws[2], MAX)


def test_a_zmq_request_in_many_parts_is_limited_as_a_whole(tmp_path):
    """The bus's size limit holds per part: a request of many parts under it is refused
    by its total before the parts are joined into one more copy; a small one is joined."""
    import zmq

    from streamfuse.config import parse

    bus = parse({}, environ={}).bus
    ctx = zmq.Context()
    inp = T.ZmqInput(ctx, f"ipc://{tmp_path}/text", bus, MAX)
    req = ctx.socket(zmq.REQ)
    req.linger = 0
    req.connect(f"ipc://{tmp_path}/text")
    try:
        req.send_multipart([b"x" * 40, b"y" * 40])  # each part under MAX, 80 bytes in all
        items = inp.read(5.0)
        assert len(items) == 1 and isinstance(items[0].raw, T.Rejected)
        assert items[0].raw.reason == "too_large" and "80 bytes in 2 parts" in str(items[0].raw)
        inp.reply("rejected")
        assert req.recv() == b"rejected"
        req.send_multipart([b"he", b"llo"])
        assert [i.raw for i in inp.read(5.0)] == [b"hello"]
    finally:
        req.close()
        inp.close()
        ctx.term()
