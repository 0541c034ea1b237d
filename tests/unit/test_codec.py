"""The wire codec: round trips, zero-copy payloads, and one specific error per malformation."""

from __future__ import annotations

import json

import msgspec
import numpy as np
import pytest
import zmq

from streamfuse.wire import codec, topics
from streamfuse.wire.codec import DecodeError
from streamfuse.wire.schema import (
    SCHEMA_VERSION,
    AudioHeader,
    FrameHeader,
    Message,
    TextHeader,
    Window,
)

T = 1_790_000_000_000_000_000  # a plausible capture time (decoders refuse 1970)


def _frame(h: int = 4, w: int = 6) -> np.ndarray:
    return np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)


def _reason(parts) -> str:
    with pytest.raises(DecodeError) as e:
        codec.decode(parts)
    return e.value.reason


def _raw_header(**fields) -> bytes:
    base = {"kind": "text", "v": SCHEMA_VERSION, "source": "room1", "stream": "text", "seq": 0, "t_ns": 1}
    base.update(fields)
    return msgspec.msgpack.encode({k: v for k, v in base.items() if v is not None})


# ----------------------------------------------------------------------------- round trips


def test_every_builder_round_trips() -> None:
    payload = json.dumps({"label": "seven"}).encode()
    messages = [
        codec.frame_message("room1", 0, T + 10, _frame()),
        codec.frame_message("room1", 1, T + 11, b"\xff\xd8\xff\xe0jpegdata", encoding="jpeg",
                            shape=(4, 6, 3)),
        codec.audio_message("room1", 2, T + 12, np.zeros((320, 2), np.float32), 16000),
        codec.text_message("room1", 3, T + 13, "héllo ✓", origin="zmq"),
        codec.heartbeat_message("room1", "video", 4, T + 14),
        codec.class_message("room1", 5, T, T + 15, "seven", 0.9, payload),
        codec.label_message("room1", 6, T + 100, T + 200, "seven"),
    ]
    for m in messages:
        assert codec.decode(codec.encode(m)) == m


def test_arrays_are_zero_copy_views() -> None:
    frame = _frame(48, 64)
    msg = codec.frame_message("cam", 0, T, frame)
    parts = codec.encode(msg)
    assert isinstance(parts[2], memoryview)
    assert np.shares_memory(np.frombuffer(parts[2], np.uint8), frame)
    decoded = codec.decode(parts)
    assert np.shares_memory(decoded.array(), frame)
    assert decoded.array().shape == (48, 64, 3)


def test_audio_1d_block_becomes_one_channel() -> None:
    msg = codec.audio_message("mic", 0, T, np.ones(320, np.float32), 16000)
    h = msg.header
    assert isinstance(h, AudioHeader) and (h.frames, h.channels, h.dtype) == (320, 1, "float32")
    assert codec.decode(codec.encode(msg)).array().shape == (320, 1)


def test_decode_accepts_zmq_frames_without_copying() -> None:
    msg = codec.frame_message("cam", 0, T, _frame())
    frames = [zmq.Frame(bytes(p)) for p in codec.encode(msg)]
    decoded = codec.decode(frames)
    assert decoded == msg
    assert isinstance(decoded.payload[0], memoryview)


def test_window_round_trip() -> None:
    w = Window(source="room1", seq=3, t_start_ns=1000, t_end_ns=2000,
               present={"video": True, "audio": True, "text": True},
               frames=[_frame(), _frame() + 1], frame_t_ns=[1100, 1600],
               audio=np.linspace(-1, 1, 32, dtype=np.float32).reshape(16, 2), samplerate=16,
               audio_coverage=0.5, texts=["a", "ß"], text_t_ns=[1200, 1900], close_ns=2100, emit_ns=2200)
    back = codec.decode_window(codec.encode_window(w))
    assert back.key == w.key and back.present == w.present and back.texts == w.texts
    assert all(np.array_equal(a, b) for a, b in zip(back.frames, w.frames, strict=True))
    assert np.array_equal(back.audio, w.audio) and back.audio_coverage == 0.5
    assert (back.close_ns, back.emit_ns, back.frame_t_ns) == (2100, 2200, [1100, 1600])


# ----------------------------------------------------------------------------- malformed


def test_too_few_parts() -> None:
    assert _reason([b"room1/text"]) == "parts"
    assert _reason([]) == "parts"


def test_bad_topics() -> None:
    hdr = _raw_header()
    assert _reason([b"\xff\xfe", hdr, b"x"]) == "topic"
    assert _reason([b"Room1/text", hdr, b"x"]) == "topic"
    assert _reason([b"room1", hdr, b"x"]) == "topic"
    assert _reason([b"room2/text", hdr, b"x"]) == "topic"  # does not match the header


def test_names_have_at_most_64_characters() -> None:
    """A publisher may not make a name (a key of every per-source table) megabytes long."""
    ok = "r" * topics.NAME_MAX
    msg = codec.text_message(ok, 0, codec.T_MIN_NS, "hi")
    assert codec.decode(codec.encode(msg)) == msg
    long = ok + "r"
    assert _reason([f"{long}/text".encode(), _raw_header(source=long), b"x"]) == "topic"
    assert _reason([b"r/" + b"t" * 65, _raw_header(source="r"), b"x"]) == "topic"
    why = topics.name_problem("x" * 10_000)
    assert why is not None and "at most 64 characters" in why and len(why) < 200


def test_classifications_have_a_prefix_of_their_own() -> None:
    msg = codec.class_message("room1", 0, 0, 15, "seven", 0.9, b"{}")
    assert msg.topic == topics.class_topic("room1") == "class/room1"
    assert topics.is_class_topic(msg.topic) and topics.is_class_topic(b"class/room1")
    assert not topics.is_class_topic("room1/text") and not topics.is_class_topic("room1/class")
    assert topics.split("class/room1") == ("room1", "class")
    assert topics.split("shadow/room1") == ("room1", "shadow")
    assert topics.shadow_topic("room1") == "shadow/room1"
    assert topics.topic("room1", "class") == "class/room1"
    assert topics.topic("room1", "label") == "room1/label"
    # the old spelling is gone: a classification on <source>/class is malformed
    frames = codec.encode(msg)
    assert _reason([b"room1/class", *frames[1:]]) == "topic"
    # and a source cannot take the place of the prefix
    assert _reason([b"class/text", _raw_header(source="class"), b"x"]) == "topic"


def test_bad_headers() -> None:
    assert _reason([b"room1/text", b"not msgpack \xc1", b"x"]) == "header"
    assert _reason([b"room1/text", _raw_header(seq="zero"), b"x"]) == "header"
    assert _reason([b"room1/text", _raw_header(t_ns=None), b"x"]) == "header"
    assert _reason([b"room1/text", msgspec.msgpack.encode([1, 2]), b"x"]) in ("header", "kind")


def test_header_string_that_is_not_utf8() -> None:
    # found by tests/property: msgspec raises UnicodeDecodeError, not a DecodeError
    parts = codec.encode(codec.heartbeat_message("room1", "video", 0, 4))
    hdr = bytes(parts[1]).replace(b"room1", b"\xffoom1")
    assert _reason([parts[0], hdr]) == "header"


def test_unknown_version_and_kind() -> None:
    assert _reason([b"room1/text", _raw_header(v=SCHEMA_VERSION + 1), b"x"]) == "version"
    assert _reason([b"room1/text", _raw_header(kind="telepathy"), b"x"]) == "kind"


def test_negative_numbers() -> None:
    assert _reason([b"room1/text", _raw_header(seq=-1), b"x"]) == "field"
    assert _reason([b"room1/text", _raw_header(t_ns=-5), b"x"]) == "field"


def test_times_outside_2000_to_2200_are_refused() -> None:
    """A hostile publisher's t_ns near 2**64 (or in 1970) never reaches a consumer, so no
    window built on it can overflow 64 bits downstream."""
    for t in (2**64 - 1 - 5 * 10**8, 2**63, codec.T_MAX_NS, codec.T_MIN_NS - 1, 1):
        assert _reason([b"room1/text", _raw_header(t_ns=t), b"x"]) == "time", t
    for t in (codec.T_MIN_NS, codec.T_MAX_NS - 1):
        assert codec.decode([b"room1/text", _raw_header(t_ns=t), b"x"]).t_ns == t
    hb = {"kind": "heartbeat", "stream": "video"}
    assert _reason([b"room1/video", _raw_header(**hb, t_ns=2**64 - 1)]) == "time"
    cls = {"kind": "class", "stream": "class", "t_ns": T}
    assert _reason([b"class/room1", _raw_header(**{**cls, "t_ns": 2**64 - 1}), b"{}"]) == "time"
    assert _reason([b"class/room1", _raw_header(**cls, t_start_ns=-1), b"{}"]) == "field"
    assert _reason([b"class/room1", _raw_header(**cls, t_start_ns=T + 1), b"{}"]) == "field"
    assert _reason([b"class/room1", _raw_header(**cls, t_start_ns=T, score=float("nan")),
                    b"{}"]) == "field"
    lab = {"kind": "label", "stream": "label", "label": "x", "t_ns": T}
    assert _reason([b"room1/label", _raw_header(**lab, t_end_ns=2**64 - 1)]) == "time"
    assert _reason([b"room1/label", _raw_header(**lab, t_end_ns=T - 1)]) == "field"
    assert _reason([b"room1/label", _raw_header(**lab, t_end_ns=T)]) == "field"


def test_label_messages_open_ended_stop_and_bad_names() -> None:
    opened = codec.decode(codec.encode(codec.label_message("room1", 0, T, None, "seven")))
    assert (opened.header.label, opened.header.t_end_ns, opened.header.stop) == ("seven", 0, False)
    stop = codec.decode(codec.encode(codec.label_stop_message("room1", 1, T)))
    assert (stop.header.label, stop.header.stop) == ("", True)
    lab = {"kind": "label", "stream": "label", "t_ns": T}
    for bad in ("", "   ", "x" * 65, "a\nb"):
        assert _reason([b"room1/label", _raw_header(**lab, label=bad)]) == "field", bad
        assert codec.label_problem(bad)
    assert _reason([b"room1/label", _raw_header(**lab, label="x", stop=True)]) == "field"
    assert _reason([b"room1/label", _raw_header(**lab, stop=True, t_end_ns=T + 1)]) == "field"
    assert codec.label_problem("x" * 64) is None


def test_seq_up_to_uint64_decodes_and_nothing_larger_gets_through() -> None:
    top = codec.decode([b"room1/text", _raw_header(seq=2**64 - 1, t_ns=T), b"x"])
    assert top.header.seq == 2**64 - 1
    # MessagePack has no integer above uint64; a header built in Python is checked too.
    big = TextHeader(source="room1", stream="text", seq=2**64, t_ns=T)
    with pytest.raises(DecodeError) as e:
        codec.check_ranges(big)
    assert e.value.reason == "field"


def test_jpeg_shape_is_checked_like_a_raw_one() -> None:
    for shape in ((1 << 40, 1 << 40, 3), (4, 6), (0, 6, 3)):
        hdr = FrameHeader(source="cam", stream="video", seq=0, t_ns=T, shape=shape, encoding="jpeg")
        assert _reason([b"cam/video", codec.encode_header(hdr), b"\xff\xd8\xff\xe0"]) == "field"


def test_frame_size_must_match_shape() -> None:
    parts = codec.encode(codec.frame_message("cam", 0, 1, _frame()))
    assert _reason([parts[0], parts[1], bytes(parts[2])[:-1]]) == "size"
    assert _reason([parts[0], parts[1]]) == "parts"
    assert _reason([parts[0], parts[1], parts[2], b"extra"]) == "parts"
    bad = FrameHeader(source="cam", stream="video", seq=0, t_ns=1, shape=(4, 6), dtype="uint8")
    assert _reason([parts[0], codec.encode_header(bad), parts[2]]) == "field"
    huge = FrameHeader(source="cam", stream="video", seq=0, t_ns=1, shape=(1 << 20, 1 << 20, 3))
    assert _reason([parts[0], codec.encode_header(huge), parts[2]]) == "field"


def test_jpeg_and_encoding_checks() -> None:
    hdr = FrameHeader(source="cam", stream="video", seq=0, t_ns=1, shape=(4, 6, 3), encoding="jpeg")
    assert _reason([b"cam/video", codec.encode_header(hdr), b"GIF89a"]) == "field"
    hdr = FrameHeader(source="cam", stream="video", seq=0, t_ns=1, shape=(4, 6, 3), encoding="webp")
    assert _reason([b"cam/video", codec.encode_header(hdr), b"\xff\xd8\xff\xe0"]) == "field"


def test_audio_checks() -> None:
    good = codec.encode(codec.audio_message("mic", 0, 1, np.zeros((4, 1), np.float32), 16000))
    assert _reason([good[0], good[1], b"\x00" * 15]) == "size"
    for hdr in (AudioHeader(source="mic", stream="audio", seq=0, t_ns=1, samplerate=0, channels=1, frames=4),
                AudioHeader(source="mic", stream="audio", seq=0, t_ns=1, samplerate=16000, channels=1,
                            frames=4, dtype="complex64")):
        assert _reason([b"mic/audio", codec.encode_header(hdr), b"\x00" * 16]) == "field"


def test_text_must_be_utf8() -> None:
    hdr = codec.encode_header(TextHeader(source="room1", stream="text", seq=0, t_ns=T))
    assert _reason([b"room1/text", hdr, b"ab\xff"]) == "text"
    assert codec.decode([b"room1/text", hdr, "ü".encode()]).text() == "ü"


def test_heartbeat_carries_no_payload() -> None:
    parts = codec.encode(codec.heartbeat_message("room1", "text", 0, 5))
    assert _reason([*parts, b"x"]) == "parts"


def test_oversized_message() -> None:
    parts = codec.encode(codec.text_message("room1", 0, 1, "x" * 100))
    with pytest.raises(DecodeError) as e:
        codec.decode(parts, max_bytes=50)
    assert e.value.reason == "too_large"


def test_windows_never_travel_on_the_bus() -> None:
    w = Window(source="room1", seq=0, t_start_ns=0, t_end_ns=1, present={})
    assert _reason(codec.encode_window(w)) == "kind"


def test_encode_validates_before_sending() -> None:
    msg = Message("room1/text", TextHeader(source="room1", stream="text", seq=0, t_ns=1), (b"\xff",))
    with pytest.raises(DecodeError):
        codec.encode(msg)


def test_decode_window_rejects_inconsistent_parts() -> None:
    w = Window(source="room1", seq=0, t_start_ns=0, t_end_ns=1, present={"video": True},
               frames=[_frame()], frame_t_ns=[0])
    parts = codec.encode_window(w)
    with pytest.raises(DecodeError):
        codec.decode_window(parts[:-1])
    with pytest.raises(DecodeError):
        codec.decode_window([parts[0], parts[1], bytes(parts[2])[:-3]])
    with pytest.raises(DecodeError):
        codec.decode_window(codec.encode(codec.text_message("room1", 0, 1, "x")))


# ----------------------------------------------------------------------------- sending


def test_send_parts_delivers_the_multipart_message_whole() -> None:
    from streamfuse.wire.sockets import send_parts

    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    try:
        push.sndhwm = pull.rcvhwm = 1
        pull.bind("inproc://send-parts")
        push.connect("inproc://send-parts")
        big = _frame(300, 300)  # over pyzmq's copy threshold: sent zero-copy
        send_parts(push, codec.encode(codec.frame_message("cam", 3, T, big)))
        got = codec.decode(pull.recv_multipart())
        assert got.header.seq == 3 and np.array_equal(got.array(), big)
        # Fill the queue without reading: NOBLOCK raises zmq.Again on the first part and
        # leaves no half message behind.
        sent = 0
        with pytest.raises(zmq.Again):
            for seq in range(100):
                send_parts(push, codec.encode(codec.text_message("chat", seq, T, "x")), zmq.NOBLOCK)
                sent += 1
        received = []
        while pull.poll(100):
            received.append(codec.decode(pull.recv_multipart()).header.seq)
        assert received == list(range(sent)) and 0 < sent < 100
    finally:
        push.close(0)
        pull.close(0)
        ctx.term()
