"""The frame plane's ring under a real concurrent writer and readers (separate processes,
random timing): every frame a reader gets is the frame written with that generation, or
the read is counted as overwritten; never a mix of two frames."""

from __future__ import annotations

import multiprocessing as mp
import random
from multiprocessing.connection import Connection
from pathlib import Path

import msgspec
import numpy as np
import pytest

from streamfuse.frameplane import ring
from streamfuse.wire.schema import FrameRef

FRAME_BYTES = 256 * 1024
SLOTS = 3
FRAMES = 1500
_ref = msgspec.msgpack.Decoder(FrameRef)


def _frame(g: int) -> np.ndarray:
    """Frame ``g``: every 8-byte word is ``g``, so a torn read shows two values."""
    return np.full(FRAME_BYTES // 8, g, dtype=np.uint64)


def _writer(directory: str, name: str, outs: list[Connection], seed: int) -> None:
    rnd = random.Random(seed)
    w = ring.RingWriter(name, SLOTS, FRAME_BYTES, directory=Path(directory))
    try:
        for _ in range(FRAMES):
            ref = w.write(_frame(w.generation + 1), "raw")
            data = msgspec.msgpack.encode(ref)
            for c in outs:
                c.send_bytes(data)
            if rnd.random() < 0.3:
                _spin(rnd.randrange(0, 20_000))
        for c in outs:
            c.send_bytes(b"")
    finally:
        w.close(unlink=False)


def _spin(n: int) -> None:
    x = 0
    for i in range(n):
        x += i


def _reader(directory: str, inp: Connection, out: Connection, seed: int) -> None:
    rnd = random.Random(seed)
    r = ring.RingReader(Path(directory))
    ok = torn = wrong = 0
    while (data := inp.recv_bytes()) != b"":
        ref = _ref.decode(data)
        if rnd.random() < 0.5:
            _spin(rnd.randrange(0, 30_000))  # fall behind: the slot may be reused meanwhile
        got = r.read(ref, lambda v: v.view(np.uint64).copy())
        if got is None:
            continue
        values = np.unique(got)
        if len(values) != 1:
            torn += 1
        elif int(values[0]) != ref.generation:
            wrong += 1
        else:
            ok += 1
    out.send_bytes(msgspec.msgpack.encode([ok, r.overwritten, torn, wrong, r.missing]))
    r.close()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_concurrent_readers_never_see_a_torn_frame(tmp_path: Path, seed: int) -> None:
    ctx = mp.get_context("fork")
    name = ring.segment_name("0123456789", "cam-video", 1)
    readers, results, to_readers = [], [], []
    for k in range(2):
        rx, tx = ctx.Pipe(duplex=False)
        res_rx, res_tx = ctx.Pipe(duplex=False)
        to_readers.append(tx)
        results.append(res_rx)
        readers.append(ctx.Process(target=_reader, args=(str(tmp_path), rx, res_tx, seed * 10 + k)))
    writer = ctx.Process(target=_writer, args=(str(tmp_path), name, to_readers, seed))
    # The readers map the segment on their first reference: the writer creates it first.
    writer.start()
    for p in readers:
        p.start()
    counts = [msgspec.msgpack.decode(c.recv_bytes()) for c in results]
    writer.join(30)
    for p in readers:
        p.join(30)
    assert writer.exitcode == 0 and all(p.exitcode == 0 for p in readers)
    for ok, overwritten, torn, wrong, missing in counts:
        assert torn == 0 and wrong == 0 and missing == 0
        assert ok + overwritten == FRAMES
        assert ok > 0 and overwritten > 0  # both outcomes happened: the timing was really mixed
    (tmp_path / name).unlink()


def test_a_write_cut_short_is_never_read(tmp_path: Path) -> None:
    """A writer killed between ``begin`` and ``end`` (SIGKILL mid-copy) leaves a slot
    that no reader accepts, neither for the old frame nor for the new one."""
    w = ring.RingWriter(ring.segment_name("0123456789", "cam-video", 2), 1, 64, directory=tmp_path)
    old = w.write(b"a" * 64, "raw")
    assert old is not None
    r = ring.RingReader(tmp_path)
    assert r.copy(old) == b"a" * 64
    _slot, head, data = w._slot(2)
    head[0] = 2  # frame 2 began ...
    data[:32] = np.frombuffer(b"b" * 32, dtype=np.uint8)  # ... and died halfway
    assert r.copy(old) is None
    new = FrameRef(old.segment, old.slot, 2, 64, "raw")
    assert r.copy(new) is None
    assert r.overwritten == 2
    del head, data  # views into the writer's mapping
    w.close()
    r.close()


def test_segments_of_dead_processes_are_reclaimed(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    p = ctx.Process(target=_spin, args=(1,))
    p.start()
    p.join()
    dead = ring.RingWriter(ring.segment_name("0123456789", "cam-video", p.pid), 2, 64,
                           directory=tmp_path)
    import os

    alive = ring.RingWriter(ring.segment_name("0123456789", "mic-video", os.getpid()), 2, 64,
                            directory=tmp_path)
    other = ring.RingWriter(ring.segment_name("abcdefabcd", "cam-video", p.pid), 2, 64,
                            directory=tmp_path)
    assert ring.reclaim("0123456789", directory=tmp_path) == [dead.name]
    assert sorted(q.name for q in tmp_path.iterdir()) == sorted([alive.name, other.name])
    assert ring.remove_pid("0123456789", os.getpid(), directory=tmp_path) == [alive.name]
    for w in (dead, alive, other):
        w.close()
