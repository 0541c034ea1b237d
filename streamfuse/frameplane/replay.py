"""Replay onto the frame plane: recorded frames (always inline) go into rings, one
per source, and out on the bus by reference, like a live capture's.

Only a paced replay (``--rate``) uses the plane: ``--max`` promises that nothing is
dropped, and a ring has no backpressure, so there frames stay inline. Rings are
sized for ``REPLAY_FPS`` frames per second at the replay's rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from streamfuse.config import AlignConfig, BusConfig
from streamfuse.frameplane.writer import PlaneWriter, hold_ms, ring_slots, slot_bytes
from streamfuse.wire import codec
from streamfuse.wire.schema import FrameHeader

REPLAY_FPS = 30.0  # a recording does not say its frame rate; few cameras exceed this
Parts = list[Any]


class ReplayPlane:
    """Turns inline frame messages into frames by reference (one ring per source)."""

    def __init__(self, bus: BusConfig, align: AlignConfig, rate: float) -> None:
        self.bus = bus
        self.slots = ring_slots(REPLAY_FPS, hold_ms(align), rate=rate)
        self.writers: dict[str, PlaneWriter] = {}

    def _writer(self, source: str, h: FrameHeader) -> PlaneWriter:
        w = self.writers.get(source)
        if w is None:
            height, width = h.shape[0], h.shape[1]
            w = PlaneWriter.open(self.bus, f"{source}-replay", slots=self.slots,
                                 nbytes=slot_bytes(width, height, h.encoding))
            self.writers[source] = w
        return w

    def parts(self, parts: Sequence[Any]) -> Sequence[Any]:
        """``parts`` with an inline frame written to the plane; anything else unchanged."""
        if len(parts) != 3 or not bytes(codec.buffer(parts[0])).endswith(b"/video"):
            return parts
        try:
            msg = codec.decode(parts)
        except codec.DecodeError:
            return parts
        h = msg.header
        if not isinstance(h, FrameHeader) or h.encoding not in codec.FRAME_ENCODINGS:
            return parts
        w = self._writer(h.source, h)
        if w.ring is None:
            return parts
        ref = w.ring.write(msg.payload[0], h.encoding)
        if ref is None:
            return parts
        return codec.encode(codec.frame_ref_message(h.source, h.seq, h.t_ns, ref, h.shape))

    def wrap(self, send: Callable[[Parts], bool]) -> Callable[[Parts], bool]:
        return lambda parts: send(list(self.parts(parts)))

    def close(self) -> None:
        for w in self.writers.values():
            w.close()
        self.writers.clear()


def replay_plane(bus: BusConfig, align: AlignConfig, rate: float | None) -> ReplayPlane | None:
    """The plane a replay at ``rate`` (None: ``--max``) publishes through, if any."""
    if bus.frame_plane != "shm" or rate is None or not math.isfinite(rate):
        return None
    return ReplayPlane(bus, align, rate)
