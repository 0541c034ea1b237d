"""Frames by reference back to frames with pixels, for whatever leaves the host.

Recordings and the TCP output for remote subscribers carry every frame inline,
byte for byte what an inline capture would have sent (:func:`codec.inline_message`):
a remote peer or a replay cannot tell whether the frame plane was on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from streamfuse.frameplane.ring import RingReader
from streamfuse.wire import codec

_VIDEO_SUFFIX = b"/video"


class Inliner:
    """Rewrites ``shm`` frame messages as inline ones; passes everything else as is.

    ``overwritten``: frames whose slot was reused before they could be copied out
    (those messages are dropped: a reader never sends a torn or wrong frame).
    """

    def __init__(self, reader: RingReader | None = None, *,
                 max_bytes: int = codec.DEFAULT_MAX_BYTES) -> None:
        self.reader = reader if reader is not None else RingReader()
        self.max_bytes = max_bytes
        self.inlined = 0

    @property
    def overwritten(self) -> int:
        return self.reader.overwritten + self.reader.missing

    def parts(self, parts: Sequence[Any]) -> Sequence[Any] | None:
        """``parts`` with a frame by reference replaced by its pixels; None when the
        frame is gone. Malformed messages pass unchanged (their consumer counts them)."""
        if len(parts) != 3 or not bytes(codec.buffer(parts[0])).endswith(_VIDEO_SUFFIX):
            return parts
        try:
            msg = codec.decode(parts, max_bytes=self.max_bytes)
        except codec.DecodeError:
            return parts
        if getattr(msg.header, "encoding", "") != "shm":
            return parts
        data = self.reader.copy(codec.frame_ref(msg))
        if data is None:
            return None
        self.inlined += 1
        return codec.encode(codec.inline_message(msg, data))

    def close(self) -> None:
        self.reader.close()
