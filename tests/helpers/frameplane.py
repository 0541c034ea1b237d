"""Reading frames by reference in tests, as soon as they arrive (while their slots hold them)."""

from __future__ import annotations

import numpy as np

from streamfuse.frameplane.ring import RingReader
from streamfuse.wire.schema import FrameRef, Window


def inline_window(w: Window, reader: RingReader) -> Window:
    """``w`` with frames by reference replaced by their bytes (a JPEG) or arrays (raw)."""
    if w.frame_encoding != "shm":
        return w
    refs = [f for f in w.frames if isinstance(f, FrameRef)]
    frames: list[np.ndarray | bytes | FrameRef] = []
    for ref in refs:
        data = reader.copy(ref)
        assert data is not None, (ref, "overwritten or missing before it was read")
        frames.append(data if ref.encoding == "jpeg" else
                      np.frombuffer(data, np.uint8).reshape(w.frame_shape))
    w.frames = frames
    w.frame_encoding = refs[0].encoding
    return w
