"""Damaged recordings never crash the reader: bytes flipped or cut anywhere."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamfuse.record import reader
from streamfuse.record.writer import RecordingWriter
from streamfuse.wire import codec

T0 = 1_700_000_000_000_000_000


def _recording(path: Path) -> bytes:
    with RecordingWriter(path, chunk_size=2048) as w:
        for i in range(40):
            w.write_message(codec.frame_message("room1", i, T0 + i * 10**7, np.full((8, 8, 3), i, np.uint8)))
            w.write_message(codec.text_message("room1", i, T0 + i * 10**7 + 1, f"t{i}"))
    return path.read_bytes()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_files_are_counted_not_raised(tmp_path: Path, data: st.DataObject) -> None:
    good = tmp_path / "good.mcap"
    raw = bytearray(good.read_bytes() if good.exists() else _recording(good))
    n_flips = data.draw(st.integers(0, 8))
    for _ in range(n_flips):
        i = data.draw(st.integers(8, len(raw) - 1))  # keep the magic: a non-MCAP file is another test
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(8, len(raw)))
    bad = tmp_path / "bad.mcap"
    bad.write_bytes(bytes(raw[:cut]))
    errors: Counter[str] = Counter()
    msgs = list(reader.read_messages([bad], errors=errors))  # must not raise
    assert len(msgs) <= 80
    assert all(m.topic in ("room1/video", "room1/text") for m in msgs)
    reader.inspect_file(bad)
