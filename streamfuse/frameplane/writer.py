"""The publishing side of the frame plane: a capture's (or replay's) ring and the
messages that point into it.

A ring must keep a frame until every window that shows it has been answered:
the window's span, the aligner's lateness bound and the time a closed window may
wait for a worker (``QUEUE_MS``: the workers' queues plus a batch). That is
:func:`hold_ms`; :func:`ring_slots` turns it into slots at the stream's frame rate.
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np

from streamfuse.config import AlignConfig, BusConfig, is_local_endpoint
from streamfuse.frameplane import ring
from streamfuse.wire import codec
from streamfuse.wire.schema import Message

log = logging.getLogger("streamfuse.frameplane")

QUEUE_MS = 1500  # a closed window's wait for a worker that the ring still covers
SPARE_SLOTS = 4  # frames in flight on the bus before the aligner buffers them
JPEG_SLACK = 65536  # a JPEG of noise can be a little larger than its raw frame


def hold_ms(align: AlignConfig) -> int:
    """How long a frame must stay readable after its capture."""
    return align.window_ms + align.max_lateness_ms + QUEUE_MS


def ring_slots(fps: float, hold: int, *, rate: float = 1.0) -> int:
    """Slots for ``fps`` frames per second (``rate`` times faster in a replay) held ``hold`` ms."""
    return math.ceil(fps * max(rate, 1.0) * hold / 1000) + SPARE_SLOTS


def slot_bytes(width: int, height: int, encoding: str) -> int:
    raw = width * height * 3
    return raw + JPEG_SLACK if encoding == "jpeg" else raw


class PlaneWriter:
    """Publishes frames by reference when it can, inline when it must.

    A frame that does not fit a slot (another size than configured) goes inline;
    so does every frame when the plane could not be opened (:meth:`open` logs why).
    """

    def __init__(self, writer: ring.RingWriter | None) -> None:
        self.ring = writer
        self.inline_frames = 0

    @classmethod
    def open(cls, bus: BusConfig, owner: str, *, slots: int, nbytes: int) -> PlaneWriter:
        """A writer on a new segment named after ``owner`` and this pid, or an inline
        one when ``bus.frame_plane`` is ``inline``, when the bus is on another host (an
        edge capture publishing to a remote daemon's ``bus.public``) or when shared
        memory is unavailable."""
        if bus.frame_plane != "shm":
            return cls(None)
        if not is_local_endpoint(bus.input):
            log.info("bus.input %s is on another host: frames of %s go inline", bus.input, owner)
            return cls(None)
        why = ring.available()
        if why is None:
            name = ring.segment_name(ring.bus_tag(bus.input), owner, os.getpid())
            try:
                w = ring.RingWriter(name, slots, nbytes)
            except ring.PlaneError as e:
                why = str(e)
            else:
                log.info("frame plane: %d slots of %.1f MB in %s", slots, nbytes / 1e6, w.path)
                return cls(w)
        log.warning("frame plane unavailable (%s): frames of %s go inline", why, owner)
        return cls(None)

    def message(self, source: str, seq: int, t_ns: int, data: np.ndarray | bytes, *,
                encoding: str, shape: tuple[int, ...]) -> Message:
        """The frame's message: a reference when it went into the ring, else inline."""
        if self.ring is not None:
            ref = self.ring.write(data, encoding)
            if ref is not None:
                return codec.frame_ref_message(source, seq, t_ns, ref, shape)
            self.inline_frames += 1
        if encoding == "raw":
            return codec.frame_message(source, seq, t_ns, data)  # type: ignore[arg-type]
        return codec.frame_message(source, seq, t_ns, data, encoding=encoding, shape=shape)

    def close(self) -> None:
        if self.ring is not None:
            self.ring.close()
            self.ring = None
