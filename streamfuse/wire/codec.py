"""Encode and decode bus messages; decoding validates everything.

``encode`` returns the multipart frames ``[topic, header, *payload]`` ready for
``socket.send_multipart(frames, copy=False)``; arrays are passed as buffers, not
copied. ``decode`` accepts ``bytes`` or ``zmq.Frame`` parts and raises
:class:`DecodeError` (with a short ``reason`` that callers count) for anything
malformed: it never raises anything else on bad input.

Decoding also range-checks every number a publisher chooses (:func:`check_ranges`):
capture and label times must lie in ``[T_MIN_NS, T_MAX_NS)`` (2000-01-01 to
2200-01-01), so that no window end, lateness bound or replay shift computed from
them leaves 64 bits, and ``seq`` must fit in uint64. Encoding does not apply
these checks: a test may stamp messages with small numbers, but nothing outside
the range gets past a decoder.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np

from streamfuse.clock import NS_PER_S
from streamfuse.wire import topics
from streamfuse.wire.schema import (
    ARRAY_DTYPES,
    KINDS,
    MAX_LABEL_CHARS,
    SCHEMA_VERSION,
    AudioHeader,
    ClassHeader,
    FrameHeader,
    FrameRef,
    Header,
    HeartbeatHeader,
    LabelHeader,
    Message,
    TextHeader,
    Window,
    WindowHeader,
)

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
MAX_DIM = 1 << 16
T_MIN_NS = 946_684_800 * NS_PER_S  # 2000-01-01T00:00:00Z
T_MAX_NS = 7_258_118_400 * NS_PER_S  # 2200-01-01T00:00:00Z: 62 years of sums below 2**63
SEQ_MAX = (1 << 64) - 1

_encoder = msgspec.msgpack.Encoder()
_header_decoder = msgspec.msgpack.Decoder(Header)
_version_decoder = msgspec.msgpack.Decoder(dict[str, Any])
_ref_decoder = msgspec.msgpack.Decoder(FrameRef)
FRAME_ENCODINGS = ("raw", "jpeg")  # what a frame's pixels are, inline or by reference
SEGMENT_MAX = 200

Buffer = bytes | memoryview


class DecodeError(ValueError):
    """A malformed message. ``reason`` is one of REASONS, for counters."""

    REASONS = ("parts", "topic", "header", "version", "kind", "size", "too_large", "text", "field",
               "time")

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def buffer(part: Any) -> Buffer:
    """The bytes of a part without copying (zmq.Frame -> memoryview)."""
    cls = part.__class__
    if cls is bytes or cls is memoryview:
        return part
    try:
        # zmq.Frame, bytearray, numpy arrays: the buffer protocol, no copy (and cheaper
        # than zmq.Frame.buffer, which matters at ~100k messages/s)
        return memoryview(part)
    except TypeError:
        raise DecodeError("parts", f"a part is {cls.__name__}, not bytes") from None


# ----------------------------------------------------------------------------- encoding


class _Kind(msgspec.Struct):
    kind: str = ""


_kind_decoder = msgspec.msgpack.Decoder(_Kind)


def header_kind(header: Any) -> str:
    """The ``kind`` of a header part, the other fields unread ('' when it has none)."""
    try:
        return _kind_decoder.decode(buffer(header)).kind
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ""


def encode(msg: Message) -> list[Buffer]:
    """Frames of a message. The header is validated by :func:`check` first."""
    check(msg)
    return [msg.topic.encode(), _encoder.encode(msg.header), *msg.payload]


def encode_header(header: Header) -> bytes:
    return _encoder.encode(header)


def frame_message(source: str, seq: int, t_ns: int, image: np.ndarray | bytes, *,
                  encoding: str = "raw", shape: tuple[int, ...] | None = None) -> Message:
    """A video frame message. ``image``: BGR uint8 ``(h, w, 3)`` for raw, JPEG bytes
    for jpeg (then ``shape`` gives the decoded shape)."""
    if encoding == "raw":
        arr = np.ascontiguousarray(image)
        hdr = FrameHeader(source=source, stream="video", seq=seq, t_ns=t_ns,
                          shape=tuple(arr.shape), dtype=_dtype_name(arr.dtype), encoding="raw")
        return Message(topics.topic(source, "video"), hdr, (arr.data.cast("B"),))
    hdr = FrameHeader(source=source, stream="video", seq=seq, t_ns=t_ns,
                      shape=tuple(shape or ()), dtype="uint8", encoding=encoding)
    return Message(topics.topic(source, "video"), hdr,
                   (bytes(image) if not isinstance(image, (bytes, memoryview)) else image,))


def frame_ref_message(source: str, seq: int, t_ns: int, ref: FrameRef,
                      shape: tuple[int, ...]) -> Message:
    """A frame by reference (encoding ``shm``): ``ref`` says where its pixels are."""
    hdr = FrameHeader(source=source, stream="video", seq=seq, t_ns=t_ns, shape=tuple(shape),
                      dtype="uint8", encoding="shm")
    return Message(topics.topic(source, "video"), hdr, (_encoder.encode(ref),))


def frame_ref(msg: Message) -> FrameRef:
    """The descriptor of a checked ``shm`` frame message."""
    return decode_ref(msg.payload[0], msg.header.shape)  # type: ignore[union-attr]


def inline_message(msg: Message, data: Buffer) -> Message:
    """The inline form of a ``shm`` frame: the same header with the frame's own
    encoding, and its bytes as the payload (byte for byte what an inline capture sends)."""
    ref = frame_ref(msg)
    hdr = msgspec.structs.replace(msg.header, encoding=ref.encoding)
    return Message(msg.topic, hdr, (data,))


def decode_ref(buf: Buffer, shape: tuple[int, ...]) -> FrameRef:
    """A :class:`FrameRef` for a frame of ``shape``, validated (raises DecodeError)."""
    try:
        ref = _ref_decoder.decode(buf)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as e:
        raise DecodeError("field", f"bad frame reference: {e}") from None
    if ref.encoding not in FRAME_ENCODINGS:
        raise DecodeError("field", f"unknown frame encoding {ref.encoding!r} in a reference")
    if not 0 < len(ref.segment) <= SEGMENT_MAX or "/" in ref.segment or ref.slot < 0 \
            or ref.generation < 1 or ref.generation > SEQ_MAX:
        raise DecodeError("field", "bad frame reference")
    if len(shape) != 3 or shape[2] != 3 or not all(0 < d <= MAX_DIM for d in shape):
        raise DecodeError("field", f"frames are (h, w, 3), got {shape}")
    raw = math.prod(shape)
    if (ref.encoding == "raw" and ref.nbytes != raw) or not 0 < ref.nbytes <= 4 * raw + 65536:
        raise DecodeError("size", f"a reference of {ref.nbytes} bytes for a {shape} frame")
    return ref


def audio_message(source: str, seq: int, t_ns: int, block: np.ndarray, samplerate: int) -> Message:
    """An audio block message; ``block`` is ``(frames, channels)``."""
    arr = np.ascontiguousarray(block)
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    hdr = AudioHeader(source=source, stream="audio", seq=seq, t_ns=t_ns, samplerate=samplerate,
                      channels=arr.shape[1], frames=arr.shape[0], dtype=_dtype_name(arr.dtype))
    return Message(topics.topic(source, "audio"), hdr, (arr.data.cast("B"),))


def text_message(source: str, seq: int, t_ns: int, text: str, *, origin: str = "") -> Message:
    hdr = TextHeader(source=source, stream="text", seq=seq, t_ns=t_ns, origin=origin)
    return Message(topics.topic(source, "text"), hdr, (text.encode("utf-8"),))


def heartbeat_message(source: str, stream: str, seq: int, watermark_ns: int) -> Message:
    hdr = HeartbeatHeader(source=source, stream=stream, seq=seq, t_ns=watermark_ns)
    return Message(topics.topic(source, stream), hdr, ())


def class_message(source: str, seq: int, t_start_ns: int, t_end_ns: int, label: str,
                  score: float, payload_json: bytes) -> Message:
    hdr = ClassHeader(source=source, stream="class", seq=seq, t_ns=t_end_ns,
                      label=label, score=score, t_start_ns=t_start_ns)
    return Message(topics.class_topic(source), hdr, (payload_json,))


def shadow_message(source: str, seq: int, t_start_ns: int, t_end_ns: int, label: str,
                   score: float, payload_json: bytes) -> Message:
    """A shadow model's answer: a classification on ``shadow/<source>``."""
    hdr = ClassHeader(source=source, stream="shadow", seq=seq, t_ns=t_end_ns,
                      label=label, score=score, t_start_ns=t_start_ns)
    return Message(topics.shadow_topic(source), hdr, (payload_json,))


def label_message(source: str, seq: int, t_start_ns: int, t_end_ns: int | None,
                  label: str) -> Message:
    """``source`` shows ``label`` over ``[t_start_ns, t_end_ns)``; ``t_end_ns=None``: from
    ``t_start_ns`` until the source's next label message (open-ended)."""
    hdr = LabelHeader(source=source, stream="label", seq=seq, t_ns=t_start_ns, label=label,
                      t_end_ns=t_end_ns or 0)
    return Message(topics.topic(source, "label"), hdr, ())


def label_stop_message(source: str, seq: int, t_ns: int) -> Message:
    """From ``t_ns`` on, ``source`` shows no label (ends an open-ended one)."""
    hdr = LabelHeader(source=source, stream="label", seq=seq, t_ns=t_ns, stop=True)
    return Message(topics.topic(source, "label"), hdr, ())


def label_problem(label: str) -> str | None:
    """Why ``label`` cannot be a label's name, or None."""
    if not label or not label.strip():
        return "the label is empty"
    if len(label) > MAX_LABEL_CHARS:
        return f"the label is {len(label)} characters, at most {MAX_LABEL_CHARS} are allowed"
    if not label.isprintable():
        return "the label holds control characters"
    return None


# ----------------------------------------------------------------------------- validation


# Per-message costs matter at ~100k audio blocks/s: these lookups replace numpy's
# Python-level dtype name/itemsize code and a regex per topic (bench/bus_throughput.py).
_ITEMSIZE = {d: np.dtype(d).itemsize for d in ARRAY_DTYPES}
_DTYPE_NAMES = {np.dtype(d): d for d in ARRAY_DTYPES}


def _dtype_name(dt: np.dtype) -> str:
    return _DTYPE_NAMES.get(dt) or str(dt)


@functools.lru_cache(maxsize=4096)
def _split_topic(topic: str) -> tuple[str, str]:
    return topics.split(topic)  # a ValueError is not cached


def _check_array(shape: tuple[int, ...], dtype: str, nbytes: int) -> None:
    itemsize = _ITEMSIZE.get(dtype)
    if itemsize is None:
        raise DecodeError("field", f"unsupported dtype {dtype!r}")
    for d in shape:
        if d <= 0 or d > MAX_DIM:
            raise DecodeError("field", f"bad shape {shape}")
    expected = math.prod(shape) * itemsize
    if expected != nbytes:
        raise DecodeError("size", f"payload is {nbytes} bytes, "
                                  f"shape {shape} x {dtype} needs {expected}")


def _check_frame(h: FrameHeader, p: Sequence[Any]) -> None:
    """One payload part that fits the frame's encoding (raw pixels, a JPEG, a ring reference)."""
    if len(p) != 1:
        raise DecodeError("parts", f"frame needs 1 payload part, got {len(p)}")
    if h.encoding == "raw":
        if len(h.shape) != 3 or h.shape[2] != 3 or h.dtype != "uint8":
            raise DecodeError("field",
                              f"raw frames are (h, w, 3) uint8, got {h.shape} {h.dtype}")
        _check_array(h.shape, h.dtype, len(p[0]))
    elif h.encoding == "jpeg":
        if len(h.shape) != 3 or h.shape[2] != 3 or not all(0 < d <= MAX_DIM for d in h.shape):
            raise DecodeError("field", f"jpeg frames decode to (h, w, 3), got {h.shape}")
        if len(p[0]) < 4 or bytes(p[0][:2]) != b"\xff\xd8":
            raise DecodeError("field", "jpeg payload does not start with a JPEG marker")
    elif h.encoding == "shm":
        if h.dtype != "uint8":
            raise DecodeError("field", f"frames are uint8, got {h.dtype}")
        decode_ref(p[0], h.shape)
    else:
        raise DecodeError("field", f"unknown frame encoding {h.encoding!r}")


def _check_label(h: LabelHeader, p: Sequence[Any]) -> None:
    """No payload; a label, or a stop without one (and without an end)."""
    if p:
        raise DecodeError("parts", f"label carries no payload, got {len(p)} parts")
    if h.stop != (h.label == ""):
        raise DecodeError("field", "a label message has a label, or is a stop with none")
    if h.stop and h.t_end_ns:
        raise DecodeError("field", "a label stop has no t_end_ns")
    why = label_problem(h.label) if not h.stop else None
    if why:
        raise DecodeError("field", why)


def check(msg: Message) -> None:
    """Validate a message's topic, header and payload sizes (raises DecodeError)."""
    h = msg.header
    if h.v != SCHEMA_VERSION:
        raise DecodeError("version", f"schema version {h.v}, this build reads {SCHEMA_VERSION}")
    try:
        source, stream = _split_topic(msg.topic)
    except ValueError as e:
        raise DecodeError("topic", str(e)) from None
    if source != h.source or stream != h.stream:
        raise DecodeError("topic", f"topic {msg.topic!r} does not match header "
                                   f"{h.source}/{h.stream}")
    if h.seq < 0:
        raise DecodeError("field", f"negative seq {h.seq}")
    if h.t_ns < 0:
        raise DecodeError("field", f"negative t_ns {h.t_ns}")
    p = msg.payload
    if isinstance(h, FrameHeader):
        _check_frame(h, p)
    elif isinstance(h, AudioHeader):
        if len(p) != 1:
            raise DecodeError("parts", f"audio needs 1 payload part, got {len(p)}")
        if h.samplerate <= 0 or h.samplerate > 1_000_000:
            raise DecodeError("field", f"bad samplerate {h.samplerate}")
        _check_array((h.frames, h.channels), h.dtype, len(p[0]))
    elif isinstance(h, (TextHeader, ClassHeader)):
        if len(p) != 1:
            raise DecodeError("parts", f"{msg.kind} needs 1 payload part, got {len(p)}")
        try:
            bytes(p[0]).decode("utf-8")
        except UnicodeDecodeError as e:
            raise DecodeError("text",
                              f"payload is not UTF-8 ({e.reason} at byte {e.start})") from None
    elif isinstance(h, LabelHeader):
        _check_label(h, p)
    elif isinstance(h, HeartbeatHeader):
        if p:
            raise DecodeError("parts", f"{msg.kind} carries no payload, got {len(p)} parts")
    elif isinstance(h, WindowHeader):
        raise DecodeError("kind", "window messages do not travel on the bus")


def decode(parts: Sequence[Any], *, max_bytes: int = DEFAULT_MAX_BYTES) -> Message:
    """Decode and validate ``[topic, header, *payload]`` (bytes or zmq.Frame)."""
    if len(parts) < 2:
        raise DecodeError("parts", f"need at least topic and header, got {len(parts)} parts")
    bufs = [buffer(p) for p in parts]
    total = sum(map(len, bufs))
    if total > max_bytes:
        raise DecodeError("too_large", f"{total} bytes exceeds the limit of {max_bytes}")
    try:
        topic = str(bufs[0], "utf-8")
    except UnicodeDecodeError:
        raise DecodeError("topic", "topic is not UTF-8") from None
    header = _decode_header(bufs[1])
    msg = Message(topic, header, tuple(bufs[2:]))
    check(msg)
    # The common case inline (~0.1 us instead of ~0.3 us a call, at ~100k messages/s).
    if not (T_MIN_NS <= header.t_ns < T_MAX_NS and header.seq <= SEQ_MAX) \
            or header.__class__ in _MORE_TIMES:
        check_ranges(header)
    return msg


_MORE_TIMES = (ClassHeader, LabelHeader)  # headers with times besides t_ns


def _check_time(name: str, t_ns: int) -> None:
    if not T_MIN_NS <= t_ns < T_MAX_NS:
        raise DecodeError("time", f"{name} {t_ns} is not between 2000-01-01 and 2200-01-01")


def check_ranges(h: Header) -> None:
    """Refuse numbers no honest publisher sends (raises DecodeError "time" or "field").

    A classification repeats the times of the window it answers, which its consumers
    only print or compare: it must be ordered and fit in int64 rather than look like a
    capture time (workers fed hand-made windows in tests stamp them near 0).
    """
    if isinstance(h, ClassHeader):
        if h.t_ns > (1 << 63) - 1:
            raise DecodeError("time", f"t_ns {h.t_ns} does not fit in int64")
    else:
        _check_time("t_ns", h.t_ns)
    if h.seq > SEQ_MAX:
        raise DecodeError("field", f"seq {h.seq} does not fit in uint64")
    if isinstance(h, ClassHeader):
        if h.t_start_ns < 0:
            raise DecodeError("field", f"negative t_start_ns {h.t_start_ns}")
        if h.t_start_ns > h.t_ns:
            raise DecodeError("field", "t_start_ns after the window end t_ns")
        if not math.isfinite(h.score):
            raise DecodeError("field", f"score {h.score}")
    elif isinstance(h, LabelHeader) and h.t_end_ns:  # 0: open-ended
        _check_time("t_end_ns", h.t_end_ns)
        if h.t_end_ns <= h.t_ns:
            raise DecodeError("field", "t_end_ns not after t_ns")


def _decode_header(buf: Buffer) -> Header:
    try:
        return _header_decoder.decode(buf)
    except msgspec.ValidationError as e:
        # Tell an unknown version apart from a malformed header.
        try:
            raw = _version_decoder.decode(buf)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
            raw = {}
        if isinstance(raw.get("v"), int) and raw["v"] != SCHEMA_VERSION:
            raise DecodeError("version", f"schema version {raw['v']}, "
                                         f"this build reads {SCHEMA_VERSION}") from None
        if "kind" in str(e) or (raw and raw.get("kind") not in (None, *KINDS)):
            raise DecodeError("kind", str(e)) from None
        raise DecodeError("header", str(e)) from None
    except msgspec.DecodeError as e:
        raise DecodeError("header", f"not MessagePack: {e}") from None
    except UnicodeDecodeError as e:  # msgspec raises it for a non-UTF-8 string in the map
        raise DecodeError("header", f"a header string is not UTF-8 ({e.reason})") from None


# ----------------------------------------------------------------------------- windows


def encode_window(w: Window) -> list[Buffer]:
    """Frames for an aligned window: ``[topic, header, *frames, audio?]``."""
    parts: list[Buffer] = []
    shape: tuple[int, ...] = ()
    for f in w.frames:
        if isinstance(f, np.ndarray):
            arr = np.ascontiguousarray(f)
            shape = tuple(arr.shape)
            parts.append(arr.data.cast("B"))
        elif isinstance(f, FrameRef):
            shape = tuple(w.frame_shape)
            parts.append(_encoder.encode(f))
        else:
            parts.append(f)
    channels = frames = 0
    if w.audio is not None:
        audio = np.ascontiguousarray(w.audio, dtype=np.float32)
        frames, channels = audio.shape
        parts.append(audio.data.cast("B"))
    hdr = WindowHeader(
        source=w.source, stream="window", seq=w.seq, t_ns=w.t_start_ns, t_end_ns=w.t_end_ns,
        present=dict(w.present), frame_encoding=w.frame_encoding, frame_shape=shape,
        frame_t_ns=list(w.frame_t_ns), samplerate=w.samplerate, channels=channels,
        audio_frames=frames, audio_coverage=float(w.audio_coverage), texts=list(w.texts),
        text_t_ns=list(w.text_t_ns), close_ns=w.close_ns, emit_ns=w.emit_ns,
    )
    return [topics.topic(w.source, topics.WINDOW_STREAM).encode(), _encoder.encode(hdr), *parts]


def decode_window(parts: Sequence[Any], *, max_bytes: int = DEFAULT_MAX_BYTES) -> Window:
    """Inverse of :func:`encode_window`; arrays are zero-copy views."""
    if len(parts) < 2:
        raise DecodeError("parts", f"need at least topic and header, got {len(parts)} parts")
    bufs = [buffer(p) for p in parts]
    if sum(len(b) for b in bufs) > max_bytes:
        raise DecodeError("too_large", "window exceeds the size limit")
    h = _decode_header(bufs[1])
    if not isinstance(h, WindowHeader):
        raise DecodeError("kind", f"expected a window, got {type(h).__name__}")
    if h.v != SCHEMA_VERSION:
        raise DecodeError("version", f"schema version {h.v}")
    n_frames = len(h.frame_t_ns)
    has_audio = h.audio_frames > 0
    if len(bufs) != 2 + n_frames + int(has_audio):
        raise DecodeError("parts", f"window needs {n_frames} frame parts "
                                   f"and {int(has_audio)} audio parts")
    if len(h.text_t_ns) != len(h.texts):
        raise DecodeError("field", "texts and text_t_ns differ in length")
    frames: list[np.ndarray | bytes | FrameRef] = []
    for b in bufs[2:2 + n_frames]:
        if h.frame_encoding == "shm":
            frames.append(decode_ref(b, h.frame_shape))
        elif h.frame_encoding == "raw":
            if len(h.frame_shape) != 3:
                raise DecodeError("field", f"bad frame shape {h.frame_shape}")
            _check_array(h.frame_shape, "uint8", len(b))
            frames.append(np.frombuffer(b, dtype=np.uint8).reshape(h.frame_shape))
        else:
            frames.append(bytes(b))
    audio = None
    if has_audio:
        _check_array((h.audio_frames, h.channels), "float32", len(bufs[-1]))
        audio = np.frombuffer(bufs[-1], dtype=np.float32).reshape(h.audio_frames, h.channels)
    return Window(
        source=h.source, seq=h.seq, t_start_ns=h.t_ns, t_end_ns=h.t_end_ns, present=dict(h.present),
        frames=frames, frame_encoding=h.frame_encoding, frame_t_ns=list(h.frame_t_ns),
        frame_shape=tuple(h.frame_shape), audio=audio,
        samplerate=h.samplerate, audio_coverage=h.audio_coverage, texts=list(h.texts),
        text_t_ns=list(h.text_t_ns), close_ns=h.close_ns, emit_ns=h.emit_ns,
    )
