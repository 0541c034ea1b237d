"""Bus messages as Foxglove data: the channel and message layout of recordings and of
the live Foxglove bridge (docs/protocol.md, "Recordings").

Each wire message ``[topic, header, *payload]`` goes to one channel, chosen by its
topic and kind, whose message data a viewer decodes with a well-known schema alone:

===========  ==========================  ===========================  =================
layout       what                        schema (encoding)            MCAP topic
===========  ==========================  ===========================  =================
``jpeg``     JPEG frames                 ``foxglove.CompressedImage``  ``/room1/video``
``raw``      raw BGR frames              ``foxglove.RawImage``         ``/room1/video``
``audio``    audio blocks                ``foxglove.RawAudio``         ``/room1/audio``
``text``     text messages               ``foxglove.Log``              ``/room1/text``
``label``    labels                      ``foxglove.Log``              ``/room1/label``
``class``    classifications             JSON Schema (``json``)        ``/class/room1``
``wire``     heartbeats, anything else   ``streamfuse.wire.v1``        ``/streamfuse/...``
===========  ==========================  ===========================  =================

Replay needs the exact wire header, which no Foxglove schema has. A protobuf message
carries it as the bytes of field :data:`WIRE_HEADER_FIELD`, which the Foxglove schemas
do not declare, so every protobuf decoder skips it; a classification carries it as the
base64 string member :data:`JSON_HEADER_KEY`, appended as the object's last member. The
payload is stored unchanged (the image, PCM or UTF-8 bytes; the JSON text up to its
closing brace), so :func:`decode` gives back the same ``[header, *payload]`` bytes.
Channel metadata ``wire_topic`` and ``wire_layout`` say how to read a channel.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Annotated

import msgspec

from streamfuse.clock import NS_PER_S
from streamfuse.record import format as fmt
from streamfuse.wire import topics
from streamfuse.wire.codec import Buffer
from streamfuse.wire.schema import classification_json_schema

WIRE_HEADER_FIELD = 1000  # far above Foxglove's field numbers, below protobuf's reserved 19000
JSON_HEADER_KEY = "_wire_header"
META_TOPIC, META_LAYOUT = "wire_topic", "wire_layout"
PROTOBUF_LAYOUTS = {  # layout -> (schema name, field number of the wire payload or 0 for none)
    "jpeg": ("foxglove.CompressedImage", 2),
    "raw": ("foxglove.RawImage", 6),
    "audio": ("foxglove.RawAudio", 2),
    "text": ("foxglove.Log", 3),
    "label": ("foxglove.Log", 0),
}
CLASS_SCHEMA_NAME = "streamfuse.Classification"
# Foxglove's RawAudio names only "pcm-s16"; the other names follow its pattern, so the
# samples are stored in the wire's own format and replay stays exact.
PCM_FORMATS = {
    "int16": "pcm-s16",
    "int32": "pcm-s32",
    "float32": "pcm-f32",
    "float64": "pcm-f64",
    "uint8": "pcm-u8",
}
_LOG_INFO = 2  # foxglove.Log.Level.INFO


class Info(msgspec.Struct):
    """The header fields that choose a layout and fill the Foxglove fields."""

    t_ns: int
    seq: int = 0
    kind: str = ""
    # A longer name is no topic's (topics.NAME_MAX): refused before any table keeps it.
    source: Annotated[str, msgspec.Meta(max_length=topics.NAME_MAX)] = ""
    encoding: str = ""
    shape: tuple[int, ...] = ()
    dtype: str = ""
    samplerate: int = 0
    channels: int = 0
    label: str = ""


_info_decoder = msgspec.msgpack.Decoder(Info)


def read_info(header: Buffer) -> Info:
    """Layout-relevant fields of a MessagePack header (raises msgspec errors)."""
    return _info_decoder.decode(header)


@dataclass(frozen=True)
class ChannelSpec:
    """An MCAP (or live) channel: topic, encodings, schema and metadata."""

    topic: str
    layout: str
    message_encoding: str
    schema_name: str
    schema_encoding: str
    schema_data: bytes
    metadata: dict[str, str]


# ----------------------------------------------------------------------------- protobuf bits


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _len_key(field: int, n: int) -> bytes:
    """Key and length of a length-delimited field (wire type 2)."""
    return _varint(field << 3 | 2) + _varint(n)


def _string(field: int, s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return _len_key(field, len(b)) + b


def _uint(field: int, n: int) -> bytes:
    return _varint(field << 3) + _varint(n)


def _fixed32(field: int, n: int) -> bytes:
    """Foxglove's sizes and rates are ``fixed32`` fields (wire type 5)."""
    return _varint(field << 3 | 5) + n.to_bytes(4, "little")


def _timestamp(t_ns: int) -> bytes:
    """Field 1, a google.protobuf.Timestamp."""
    sec, nanos = divmod(t_ns, NS_PER_S)
    body = (_uint(1, sec) if sec else b"") + (_uint(2, nanos) if nanos else b"")
    return _len_key(1, len(body)) + body


def _read_varint(view: memoryview, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if pos >= len(view) or shift > 63:
            raise fmt.FramingError("truncated varint")
        b = view[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, pos
        shift += 7


def _protobuf_fields(data: Buffer, wanted: tuple[int, ...]) -> dict[int, memoryview]:
    """The last value of each wanted length-delimited top-level field (views, no copies)."""
    view = memoryview(data).cast("B")
    out: dict[int, memoryview] = {}
    pos, end = 0, len(view)
    while pos < end:
        key, pos = _read_varint(view, pos)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, pos = _read_varint(view, pos)
        elif wire_type == 2:
            n, pos = _read_varint(view, pos)
            if n > end - pos:
                raise fmt.FramingError(f"field {field} of {n} bytes overruns the message")
            if field in wanted:
                out[field] = view[pos : pos + n]
            pos += n
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
        else:
            raise fmt.FramingError(f"protobuf wire type {wire_type}")
    if pos != end:
        raise fmt.FramingError("a field overruns the message")
    return out


# ----------------------------------------------------------------------------- schemas


@cache
def _descriptor_set(schema_name: str) -> bytes:
    """The FileDescriptorSet of a Foxglove message and the files it imports."""
    import importlib

    from google.protobuf import descriptor_pb2

    # The generated module of foxglove.X registers it (and its imports) when loaded.
    module = importlib.import_module(f"foxglove_schemas_protobuf.{schema_name.split('.')[-1]}_pb2")
    desc = module.DESCRIPTOR.message_types_by_name[schema_name.split(".")[-1]]
    fds = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()

    def add(file: object) -> None:
        name = file.name  # type: ignore[attr-defined]
        if name in seen:
            return
        seen.add(name)
        for dep in file.dependencies:  # type: ignore[attr-defined]
            add(dep)
        file.CopyToProto(fds.file.add())  # type: ignore[attr-defined]

    add(desc.file)
    return fds.SerializeToString()


@cache
def class_schema() -> bytes:
    """The classification JSON Schema as stored: the project's, plus the wire header member."""
    schema = classification_json_schema()
    schema.setdefault("properties", {})[JSON_HEADER_KEY] = {
        "description": "streamfuse: the wire header (MessagePack, base64) that replay republishes.",
        "type": "string",
        "contentEncoding": "base64",
    }
    return json.dumps(schema, indent=1).encode()


def preload() -> None:
    """Build every schema now (importing protobuf takes a while on a busy machine): the
    recorder does it before it subscribes, not while its first messages queue up."""
    for name, _field in PROTOBUF_LAYOUTS.values():
        _descriptor_set(name)
    class_schema()


def mcap_topic(topic: str, layout: str) -> str:
    """Data channels take the wire topic with a leading slash, as Foxglove names topics;
    ``wire`` channels (heartbeats, ...) live apart under ``/streamfuse/wire/``."""
    return f"/streamfuse/wire/{topic}" if layout == "wire" else f"/{topic}"


# Bounded: topics are publisher-chosen, and a recorder or bridge runs for months (a
# recording of more topics than this rebuilds a spec now and then, which costs microseconds).
@lru_cache(maxsize=1024)
def channel_spec(topic: str, layout: str) -> ChannelSpec:
    source, _, stream = topic.partition("/")
    if source == "class" or source == "shadow":
        source, stream = stream, source
    meta = {"source": source, "stream": stream, META_TOPIC: topic, META_LAYOUT: layout}
    if layout in PROTOBUF_LAYOUTS:
        name = PROTOBUF_LAYOUTS[layout][0]
        return ChannelSpec(
            mcap_topic(topic, layout),
            layout,
            "protobuf",
            name,
            "protobuf",
            _descriptor_set(name),
            meta,
        )
    if layout == "class":
        return ChannelSpec(
            mcap_topic(topic, layout),
            layout,
            "json",
            CLASS_SCHEMA_NAME,
            "jsonschema",
            class_schema(),
            meta,
        )
    return ChannelSpec(
        mcap_topic(topic, "wire"),
        "wire",
        fmt.MESSAGE_ENCODING,
        fmt.SCHEMA_NAME,
        fmt.SCHEMA_ENCODING,
        fmt.SCHEMA_TEXT,
        meta,
    )


def route(message_encoding: str, topic: str, metadata: dict[str, str]) -> tuple[str, str]:
    """``(wire topic, layout)`` of a recorded channel; layout ``""`` for a foreign one.
    Channels of recordings made before these layouts are ``wire`` under their own topic."""
    layout = metadata.get(META_LAYOUT)
    if layout is not None and (layout in PROTOBUF_LAYOUTS or layout in ("class", "wire")):
        return metadata.get(META_TOPIC, topic), layout
    if message_encoding == fmt.MESSAGE_ENCODING and META_LAYOUT not in metadata:
        return topic, "wire"
    return topic, ""


# ----------------------------------------------------------------------------- messages


def choose(info: Info, payload: Sequence[Buffer]) -> str:
    """The layout of a message; ``wire`` for anything a Foxglove schema cannot hold exactly."""
    k, n = info.kind, len(payload)
    if k == "frame" and n == 1:
        if info.encoding == "jpeg":
            return "jpeg"
        s = info.shape
        if (
            info.encoding == "raw"
            and info.dtype == "uint8"
            and len(s) == 3
            and s[2] == 3
            and 0 < s[0] < 1 << 16
            and 0 < s[1] < 1 << 16
            and fmt.nbytes(payload[0]) == s[0] * s[1] * 3
        ):
            return "raw"
    elif (
        k == "audio"
        and n == 1
        and info.dtype in PCM_FORMATS
        and 0 < info.channels < 1 << 32
        and 0 < info.samplerate < 1 << 32
    ):
        return "audio"
    elif k == "text" and n == 1 and _is_utf8(payload[0]):
        return "text"
    elif k == "label" and n == 0:
        return "label"
    elif k == "class" and n == 1 and _is_json_object(payload[0]):
        return "class"
    return "wire"


def _is_utf8(b: Buffer) -> bool:
    try:
        bytes(b).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _is_json_object(b: Buffer) -> bool:
    """A non-empty JSON object whose text ends with its closing brace (so the header member
    can be appended before it and cut off again exactly)."""
    data = bytes(b)
    if not data.endswith(b"}") or data[:-1].rstrip().endswith(b"{"):
        return False
    try:
        return isinstance(json.loads(data), dict)
    except (ValueError, RecursionError):
        return False


def encode(layout: str, info: Info, header: Buffer, payload: Sequence[Buffer]) -> list[Buffer]:
    """The message data of a wire message in ``layout``, as pieces to concatenate; the
    payload buffers are among them by reference (not copied)."""
    if layout == "wire":
        return encode_wire(header, payload)
    if layout == "class":
        b64 = base64.b64encode(bytes(header))
        return [bytes(payload[0])[:-1], b',"', JSON_HEADER_KEY.encode(), b'":"', b64, b'"}']
    fixed = _fixed_fields(
        layout, info.source, info.shape[:2], info.dtype, info.samplerate, info.channels
    )
    pieces: list[Buffer] = [_timestamp(info.t_ns), fixed]
    if layout == "label":
        pieces.append(_string(3, info.label))
    field = PROTOBUF_LAYOUTS[layout][1]
    if field:
        pieces += [_len_key(field, fmt.nbytes(payload[0])), payload[0]]
    pieces.append(_string(WIRE_HEADER_FIELD, bytes(header)))
    return pieces


@lru_cache(maxsize=256)
def _fixed_fields(
    layout: str, source: str, hw: tuple[int, ...], dtype: str, samplerate: int, channels: int
) -> bytes:
    """The fields a channel's messages share (per stream they do not change: cached)."""
    if layout in ("jpeg", "raw"):
        out = _string(4 if layout == "jpeg" else 7, source)  # frame_id
        if layout == "jpeg":
            return out + _string(3, "jpeg")
        h, w = hw
        return out + _fixed32(2, w) + _fixed32(3, h) + _string(4, "bgr8") + _fixed32(5, 3 * w)
    if layout == "audio":
        return _string(3, PCM_FORMATS[dtype]) + _fixed32(4, samplerate) + _fixed32(5, channels)
    return _uint(2, _LOG_INFO) + _string(
        4, source
    )  # text, label: foxglove.Log named after the source


def encode_wire(header: Buffer, payload: Sequence[Buffer]) -> list[Buffer]:
    """The ``wire`` layout (:mod:`streamfuse.record.format`), as pieces."""
    return fmt.frame_pieces([header, *payload])


def decode(layout: str, data: Buffer) -> list[Buffer]:
    """Inverse of :func:`encode`: ``[header, *payload]`` (views where it can). Raises
    :class:`~streamfuse.record.format.FramingError` for data that does not fit."""
    if layout == "wire":
        return list(fmt.unframe(data))
    if layout == "class":
        raw = bytes(data)
        key = b',"' + JSON_HEADER_KEY.encode() + b'":"'
        i = raw.rfind(key)
        if i < 0 or not raw.endswith(b'"}'):
            raise fmt.FramingError("classification without its wire header")
        try:
            decoded = base64.b64decode(raw[i + len(key) : -2], validate=True)
        except binascii.Error:
            raise fmt.FramingError("wire header is not base64") from None
        return [decoded, raw[:i] + b"}"]
    spec = PROTOBUF_LAYOUTS.get(layout)
    if spec is None:
        raise fmt.FramingError(f"unknown layout {layout!r}")
    field = spec[1]
    fields = _protobuf_fields(data, (field, WIRE_HEADER_FIELD) if field else (WIRE_HEADER_FIELD,))
    header = fields.get(WIRE_HEADER_FIELD)
    if header is None:
        raise fmt.FramingError(f"{spec[0]} message without its wire header")
    return [header, fields.get(field, memoryview(b""))] if field else [header]
