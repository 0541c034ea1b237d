"""A worker's frames: read by reference from the frame plane, each decoded once.

Windows overlap (``hop_ms < window_ms``), so one frame is shown by several
windows; :class:`WindowFrames` keeps the model-sized gray image of the frames it
made last, keyed by ``(source, t_ns, size)`` (the aligner never buffers two frames
of one source with one ``t_ns``), so a JPEG is decoded once per frame and not once
per window. A frame by reference is made straight from the shared slot (resize
and gray conversion read the mapping) and kept only if the slot still held that
frame afterwards (:meth:`streamfuse.frameplane.ring.RingReader.read`).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from streamfuse.frameplane.ring import RingReader
from streamfuse.fusion.features import gray_image, gray_jpeg
from streamfuse.wire.schema import FrameRef, Window

CACHE_FRAMES = 1024  # 32x32 gray: 1 KB each


class WindowFrames:
    """The :class:`~streamfuse.fusion.features.FrameSource` a worker collates with.

    ``overwritten``: frames whose slot held another frame by the time they were read
    (their window's video is then absent).
    """

    def __init__(self, reader: RingReader | None = None, *, capacity: int = CACHE_FRAMES) -> None:
        self.reader = reader if reader is not None else RingReader()
        self.capacity = capacity
        self._cache: OrderedDict[tuple[str, int, int], np.ndarray] = OrderedDict()
        self.decoded = 0
        self.hits = 0

    @property
    def overwritten(self) -> int:
        return self.reader.overwritten + self.reader.missing

    def gray(self, w: Window, i: int, size: int) -> np.ndarray | None:
        key = (w.source, w.frame_t_ns[i], size) if len(w.frame_t_ns) == len(w.frames) else None
        if key is not None:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                self.hits += 1
                return hit
        f = w.frames[i]
        if isinstance(f, FrameRef):
            g = self._shared(f, w.frame_shape, size)
        elif isinstance(f, np.ndarray):
            g = gray_image(f, size)
        else:
            g = gray_jpeg(f, size)
        if g is None:
            return None
        self.decoded += 1
        if key is not None:
            self._cache[key] = g
            if len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return g

    def _shared(self, ref: FrameRef, shape: tuple[int, ...], size: int) -> np.ndarray | None:
        if ref.encoding == "raw":
            return self.reader.read(ref, lambda v: gray_image(v.reshape(shape), size))
        return self.reader.read(ref, lambda v: gray_jpeg(v, size))

    def close(self) -> None:
        self._cache.clear()
        self.reader.close()
