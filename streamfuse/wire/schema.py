"""Every message type on the bus, with one shared envelope (docs/protocol.md).

A wire message is ``[topic, header, payload...]``: the header is a MessagePack
map described by one of the ``*Header`` structs below (tagged by ``kind``), the
payload frames are raw bytes (numpy buffers, JPEG, UTF-8, JSON).

Rules: add fields with defaults, never reuse or retype one; bump
``SCHEMA_VERSION`` only for a change old readers cannot ignore. Units are in
the names (``_ns``, ``_ms``, ``_hz``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import msgspec
import numpy as np

SCHEMA_VERSION = 1
# Shipped in the package; docs/schemas/ holds the same file for readers of the repository.
CLASSIFICATION_SCHEMA = "data/schemas/classification.schema.json"

# dtypes allowed on the wire for arrays (frames and audio).
ARRAY_DTYPES = ("uint8", "int16", "int32", "float32", "float64")


class Envelope(msgspec.Struct, kw_only=True, frozen=True, tag_field="kind"):
    """Fields every header carries. ``t_ns``: epoch nanoseconds at capture."""

    v: int = SCHEMA_VERSION
    source: str
    stream: str
    seq: int
    t_ns: int


class FrameHeader(Envelope, tag="frame", frozen=True):
    """A camera frame. ``raw``: BGR uint8, ``shape`` = (height, width, 3), payload
    is the C-contiguous array. ``jpeg``: payload is a JPEG file; ``shape`` is the
    decoded shape. ``shm``: the frame is in this host's frame plane; the payload is
    a MessagePack :class:`FrameRef` whose ``encoding`` is the frame's own (``raw``
    or ``jpeg``)."""

    shape: tuple[int, ...]
    dtype: str = "uint8"
    encoding: str = "raw"


class FrameRef(msgspec.Struct, frozen=True, array_like=True):
    """Where a frame lies in the frame plane: ``slot`` of shared-memory segment
    ``segment`` holds ``nbytes`` bytes of the frame (``encoding`` ``raw`` or ``jpeg``)
    for as long as the slot's generation is ``generation`` (docs/protocol.md,
    "Frames by reference")."""

    segment: str
    slot: int
    generation: int
    nbytes: int
    encoding: str


class AudioHeader(Envelope, tag="audio", frozen=True):
    """A block of ``frames`` audio frames; payload is ``(frames, channels)``
    interleaved samples of ``dtype``. ``t_ns`` is the first sample's ADC time."""

    samplerate: int
    channels: int
    frames: int
    dtype: str = "float32"


class TextHeader(Envelope, tag="text", frozen=True):
    """A text message; payload is the UTF-8 text. ``t_ns`` is the receive time."""

    origin: str = ""  # "zmq", "stdin", "fifo", "file"


class HeartbeatHeader(Envelope, tag="heartbeat", frozen=True):
    """Watermark: the stream will publish nothing with ``t_ns`` older than this."""


class ClassHeader(Envelope, tag="class", frozen=True):
    """A classification; payload is the UTF-8 JSON object of docs/protocol.md,
    "Classification" (JSON Schema: :func:`classification_json_schema`).
    ``t_ns`` is the window's end."""

    label: str = ""
    score: float = 0.0
    t_start_ns: int = 0


def classification_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a classification's payload."""
    text = resources.files("streamfuse").joinpath(CLASSIFICATION_SCHEMA).read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


# A label is a short name a person types: 1..MAX_LABEL_CHARS printable characters.
MAX_LABEL_CHARS = 64


class LabelHeader(Envelope, tag="label", frozen=True):
    """Ground truth: ``source`` shows ``label`` over ``[t_ns, t_end_ns)``.

    ``t_end_ns = 0``: open-ended, "from ``t_ns`` on", until the source's next label
    message. ``stop``: no label from ``t_ns`` on (``label`` is then empty). Every label
    message ends the spans of its source still running at its ``t_ns``
    (docs/protocol.md, "label").
    """

    label: str = ""
    t_end_ns: int = 0
    stop: bool = False


class WindowHeader(Envelope, tag="window", frozen=True):
    """An aligned window (aligner -> worker over PUSH/PULL, not the broker).

    ``t_ns`` is the window start; payload frames are the video frames in order
    (each raw or JPEG, or with ``frame_encoding`` ``shm`` a MessagePack
    :class:`FrameRef` each) followed by the audio buffer when audio is present.
    ``close_ns`` is the source-clock instant the window closed and ``emit_ns``
    the aligner's clock when it sent it, so a worker can report latency on the
    source's clock (docs/architecture.md, "Time").
    """

    t_end_ns: int
    present: dict[str, bool]
    frame_encoding: str = "raw"
    frame_shape: tuple[int, ...] = ()
    frame_t_ns: list[int] = []
    samplerate: int = 0
    channels: int = 0
    audio_frames: int = 0
    audio_coverage: float = 0.0
    texts: list[str] = []
    text_t_ns: list[int] = []
    close_ns: int = 0
    emit_ns: int = 0


Header = (FrameHeader | AudioHeader | TextHeader | HeartbeatHeader | ClassHeader | LabelHeader
          | WindowHeader)
KINDS = ("frame", "audio", "text", "heartbeat", "class", "label", "window")


class Message(msgspec.Struct, frozen=True, eq=False):
    """One decoded bus message. ``payload`` holds buffers, not copies.

    A frozen ``msgspec.Struct`` rather than a frozen dataclass: one is made per
    message sent and per message decoded, and the dataclass's ``__init__`` cost
    ~1 us against ~0.2 us (bench/bus_throughput.py runs ~20k audio blocks/s).
    It is never serialised itself; :func:`streamfuse.wire.codec.encode` writes it.
    """

    topic: str
    header: Header
    payload: tuple[bytes | memoryview, ...] = ()

    @property
    def kind(self) -> str:
        return type(self.header).__struct_config__.tag  # type: ignore[return-value]

    @property
    def t_ns(self) -> int:
        return self.header.t_ns

    def array(self) -> np.ndarray:
        """A zero-copy numpy view of a raw frame ``(h, w, 3)`` or an audio block
        ``(frames, channels)``."""
        h = self.header
        if isinstance(h, FrameHeader) and h.encoding == "raw":
            return np.frombuffer(self.payload[0], dtype=h.dtype).reshape(h.shape)
        if isinstance(h, AudioHeader):
            return np.frombuffer(self.payload[0], dtype=h.dtype).reshape(h.frames, h.channels)
        raise TypeError(f"{self.kind} message has no array payload")

    def text(self) -> str:
        return bytes(self.payload[0]).decode("utf-8") if self.payload else ""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return (
            self.topic == other.topic
            and self.header == other.header
            and [bytes(p) for p in self.payload] == [bytes(p) for p in other.payload]
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(eq=False)
class Window:
    """One source's aligned window ``[t_start_ns, t_end_ns)``.

    frames: the video frames (raw ``(h, w, 3)`` uint8 arrays, JPEG bytes, or
        :class:`FrameRef` into the frame plane when ``frame_encoding`` is ``shm``),
        ``frames_per_window`` of them, or none when video is absent.
    audio: ``(samples, channels)`` float32, exactly ``window * samplerate``
        samples, or None when audio is absent; gaps are zeros.
    texts: the newest text messages in the text context, oldest first.
    """

    source: str
    seq: int
    t_start_ns: int
    t_end_ns: int
    present: dict[str, bool]
    frames: list[np.ndarray | bytes | FrameRef] = field(default_factory=list)
    frame_encoding: str = "raw"
    frame_t_ns: list[int] = field(default_factory=list)
    frame_shape: tuple[int, ...] = ()  # the decoded shape, needed for frames by reference
    audio: np.ndarray | None = None
    samplerate: int = 0
    audio_coverage: float = 0.0
    texts: list[str] = field(default_factory=list)
    text_t_ns: list[int] = field(default_factory=list)
    close_ns: int = 0
    emit_ns: int = 0

    @property
    def key(self) -> tuple[str, int]:
        """Identity of a window: answered at most once per key."""
        return (self.source, self.t_start_ns)
