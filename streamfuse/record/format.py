"""The ``wire`` layout of a recorded message (docs/protocol.md, "Recordings").

Recordings store most messages in Foxglove's schemas (:mod:`streamfuse.record.layout`);
this framing holds the rest (heartbeats, anything a Foxglove schema cannot hold exactly) on
``/streamfuse/wire/<topic>`` channels, and every message of recordings made before that
layout, whose channels are named by the wire topic itself:

- channel ``message_encoding`` = ``"streamfuse-multipart"``, channel metadata
  ``{"source", "stream"}`` (plus ``wire_topic`` and ``wire_layout`` in the new layout);
- the channel's **schema** record is named ``streamfuse.wire.v<N>``
  (``N`` = ``streamfuse.wire.schema.SCHEMA_VERSION``), encoding
  ``"streamfuse-wire"``, and its data is a UTF-8 description of this framing;
- MCAP ``log_time`` = ``publish_time`` = the header's ``t_ns`` (epoch ns), MCAP
  ``sequence`` = the header's ``seq`` modulo 2**32;
- the MCAP message **data** holds the wire parts after the topic,
  ``[header, *payload]``, each prefixed by its length as a little-endian
  uint32::

      u32 len(header) | header bytes (MessagePack) | u32 len(p1) | p1 | ...

  so the exact header and payload bytes travel unchanged;
- a metadata record named ``streamfuse`` holds the writer's version, host,
  schema version and (from the recorder) the config it ran with.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import msgspec

from streamfuse.wire.codec import Buffer
from streamfuse.wire.schema import SCHEMA_VERSION

MESSAGE_ENCODING = "streamfuse-multipart"
SCHEMA_NAME = f"streamfuse.wire.v{SCHEMA_VERSION}"
SCHEMA_ENCODING = "streamfuse-wire"
PROFILE = "streamfuse"
METADATA_NAME = "streamfuse"
SCHEMA_TEXT = (
    f"streamfuse wire message, schema version {SCHEMA_VERSION}.\n"
    "MCAP message data = for each part of [header, *payload]: uint32 little-endian length, "
    "then the bytes.\n"
    "The ZeroMQ multipart message is [channel topic (UTF-8), header, *payload].\n"
    "header: MessagePack map with v, kind, source, stream, seq, t_ns (epoch ns) and "
    "kind-specific fields\n"
    "(see streamfuse/wire/schema.py). log_time = publish_time = t_ns.\n"
).encode()

_LEN = struct.Struct("<I")
MAX_PART = 0xFFFFFFFF


class FramingError(ValueError):
    """MCAP message data that is not a valid part list."""


def nbytes(b: Buffer) -> int:
    """The size of a buffer in bytes (``len`` counts items of a typed memoryview)."""
    return len(b) if isinstance(b, bytes) else memoryview(b).nbytes


def frame_pieces(parts: Sequence[Buffer]) -> list[Buffer]:
    """``[header, *payload]`` -> the pieces of one MCAP message data blob: each part
    after its length, by reference (nothing copied)."""
    out: list[Buffer] = []
    for p in parts:
        n = nbytes(p)
        if n > MAX_PART:
            raise FramingError(f"part of {n} bytes is too large for the framing")
        out.append(_LEN.pack(n))
        out.append(p)
    return out


def frame(parts: Sequence[Buffer]) -> bytes:
    """``[header, *payload]`` -> one MCAP message data blob (one copy of the bytes)."""
    return b"".join(frame_pieces(parts))


def unframe(data: bytes | memoryview) -> list[memoryview]:
    """Inverse of :func:`frame`: zero-copy views of ``[header, *payload]``."""
    view = memoryview(data).cast("B")
    parts: list[memoryview] = []
    pos, end = 0, len(view)
    while pos < end:
        if end - pos < _LEN.size:
            raise FramingError(f"{end - pos} stray bytes at the end of a message")
        (n,) = _LEN.unpack_from(view, pos)
        pos += _LEN.size
        if n > end - pos:
            raise FramingError(f"part of {n} bytes overruns the message ({end - pos} left)")
        parts.append(view[pos:pos + n])
        pos += n
    if not parts:
        raise FramingError("empty message")
    return parts


class Stamp(msgspec.Struct):
    """The two header fields the recorder needs; other fields are ignored."""

    t_ns: int
    seq: int = 0


_stamp_decoder = msgspec.msgpack.Decoder(Stamp)


def read_stamp(header: bytes | memoryview) -> Stamp:
    """``t_ns`` and ``seq`` of a MessagePack header (raises msgspec errors)."""
    return _stamp_decoder.decode(header)
