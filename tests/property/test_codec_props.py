"""Property tests of the wire codec (hypothesis).

- ``decode(encode(m)) == m`` for every message kind.
- Random bytes and mutations of valid messages never crash a decoder: the result
  is a valid message or :class:`DecodeError`, nothing else.
- Any 64-bit ``t_ns`` and ``seq`` a publisher can put in a header either decode to
  values inside the plausible range or are refused with reason ``time``/``field``.
"""

from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamfuse.wire import codec, topics
from streamfuse.wire.codec import DecodeError
from streamfuse.wire.schema import Message, Window

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=12).filter(
    lambda n: topics.name_problem(n) is None)
seqs = st.integers(0, 2**63 - 1)
times = st.integers(codec.T_MIN_NS, codec.T_MAX_NS - 1)
texts = st.text(max_size=200)
label_names = st.text(min_size=1, max_size=64).filter(lambda s: s.strip() != "" and s.isprintable())
dims = st.integers(1, 12)


@st.composite
def frame_messages(draw) -> Message:
    source = draw(names)
    if draw(st.booleans()):
        h, w = draw(dims), draw(dims)
        img = np.frombuffer(draw(st.binary(min_size=h * w * 3, max_size=h * w * 3)), np.uint8).reshape(h, w, 3)
        return codec.frame_message(source, draw(seqs), draw(times), img)
    jpeg = b"\xff\xd8" + draw(st.binary(min_size=2, max_size=300))
    shape = (draw(dims), draw(dims), 3)
    return codec.frame_message(source, draw(seqs), draw(times), jpeg, encoding="jpeg", shape=shape)


@st.composite
def audio_messages(draw) -> Message:
    frames, channels = draw(st.integers(1, 64)), draw(st.integers(1, 4))
    dtype = draw(st.sampled_from(["float32", "int16", "int32", "float64"]))
    raw = draw(st.binary(min_size=frames * channels * np.dtype(dtype).itemsize,
                         max_size=frames * channels * np.dtype(dtype).itemsize))
    block = np.frombuffer(raw, dtype).reshape(frames, channels)
    return codec.audio_message(draw(names), draw(seqs), draw(times), block, draw(st.integers(1, 192000)))


@st.composite
def class_messages(draw) -> Message:
    scores = draw(st.dictionaries(names, st.floats(0, 1), max_size=5))
    payload = json.dumps({"label": draw(texts), "scores": scores}).encode()
    score = draw(st.floats(0, 1, allow_nan=False))
    start, end = sorted((draw(times), draw(times)))
    return codec.class_message(draw(names), draw(seqs), start, end, draw(texts), score, payload)


@st.composite
def label_messages(draw) -> Message:
    start, end = sorted((draw(times), draw(times)))
    kind = draw(st.sampled_from(["span", "open", "stop"]))
    if kind == "stop":
        return codec.label_stop_message(draw(names), draw(seqs), start)
    start = min(start, codec.T_MAX_NS - 2)
    end = max(end, start + 1) if kind == "span" else None  # a span is never empty
    return codec.label_message(draw(names), draw(seqs), start, end, draw(label_names))


messages = st.one_of(
    frame_messages(),
    audio_messages(),
    st.builds(lambda s, q, t, x, o: codec.text_message(s, q, t, x, origin=o), names, seqs, times, texts,
              st.sampled_from(["", "zmq", "stdin", "fifo", "file"])),
    st.builds(codec.heartbeat_message, names, st.sampled_from(["video", "audio", "text", "class"]), seqs, times),
    class_messages(),
    label_messages(),
)


@given(messages)
def test_decode_inverts_encode(msg: Message) -> None:
    parts = [bytes(p) for p in codec.encode(msg)]
    back = codec.decode(parts)
    assert back == msg
    assert back.kind == msg.kind
    if msg.kind in ("frame", "audio") and getattr(msg.header, "encoding", "raw") == "raw":
        assert back.array().tobytes() == msg.array().tobytes()  # bitwise: random floats may be NaN


def _decodes_or_rejects(parts: list[bytes]) -> None:
    try:
        msg = codec.decode(parts)
    except DecodeError as e:
        assert e.reason in DecodeError.REASONS
        return
    codec.check(msg)  # anything accepted is a valid message
    if msg.kind in ("frame", "audio") and getattr(msg.header, "encoding", "raw") == "raw":
        msg.array()
    if msg.kind in ("text", "class"):
        msg.text()


@given(st.lists(st.binary(max_size=64), max_size=5))
def test_random_frames_never_crash_the_decoder(parts: list[bytes]) -> None:
    _decodes_or_rejects(parts)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(messages, st.data())
def test_mutated_messages_never_crash_the_decoder(msg: Message, data: st.DataObject) -> None:
    parts = [bytearray(p) for p in codec.encode(msg)]
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(parts) - 1))
        op = data.draw(st.sampled_from(["flip", "truncate", "extend", "drop", "duplicate"]))
        part = parts[i]
        if op == "flip" and part:
            j = data.draw(st.integers(0, len(part) - 1))
            part[j] ^= data.draw(st.integers(1, 255))
        elif op == "truncate":
            del part[data.draw(st.integers(0, len(part))):]
        elif op == "extend":
            part += data.draw(st.binary(min_size=1, max_size=16))
        elif op == "drop" and len(parts) > 1:
            del parts[i]
        elif op == "duplicate":
            parts.insert(i, bytearray(part))
    _decodes_or_rejects([bytes(p) for p in parts])


@st.composite
def windows(draw) -> Window:
    n = draw(st.integers(0, 3))
    h, w = draw(dims), draw(dims)
    frames = [np.full((h, w, 3), i, np.uint8) for i in range(n)]
    audio = None
    if draw(st.booleans()):
        audio = np.asarray(draw(st.lists(st.floats(-1, 1, width=32), min_size=2, max_size=64, unique=False)),
                           np.float32).reshape(-1, 1)
    msgs = draw(st.lists(texts, max_size=3))
    return Window(source=draw(names), seq=draw(seqs), t_start_ns=draw(times), t_end_ns=draw(times),
                  present={"video": n > 0, "audio": audio is not None, "text": bool(msgs)},
                  frames=frames, frame_t_ns=list(range(n)), audio=audio, samplerate=16000 if audio is not None else 0,
                  texts=msgs, text_t_ns=list(range(len(msgs))))


@given(windows(), st.data())
def test_windows_round_trip_and_mutations_never_crash(w: Window, data: st.DataObject) -> None:
    parts = [bytes(p) for p in codec.encode_window(w)]
    back = codec.decode_window(parts)
    assert back.key == w.key and back.texts == w.texts and len(back.frames) == len(w.frames)
    if w.audio is not None:
        assert np.array_equal(back.audio, w.audio)
    i = data.draw(st.integers(0, len(parts) - 1))
    mutated = bytearray(parts[i])
    if mutated:
        mutated[data.draw(st.integers(0, len(mutated) - 1))] ^= 0xFF
    cut = data.draw(st.integers(0, len(mutated)))
    try:
        codec.decode_window([*parts[:i], bytes(mutated[:cut]), *parts[i + 1:]])
    except DecodeError as e:
        assert e.reason in DecodeError.REASONS


any_int64 = st.one_of(st.integers(-(2**63), 2**64 - 1),
                      st.sampled_from([0, 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64 - 1 - 5 * 10**8]),
                      times)


@given(kind=st.sampled_from(["text", "heartbeat", "audio"]), t=any_int64, seq=any_int64)
def test_absurd_times_and_seqs_decode_in_range_or_are_refused(kind: str, t: int, seq: int) -> None:
    import msgspec

    header = {"kind": kind, "v": 1, "source": "room1", "stream": "text", "seq": seq, "t_ns": t}
    payload = [b"x"]
    if kind == "audio":
        header.update(stream="audio", samplerate=16000, channels=1, frames=2, dtype="int16")
        payload = [b"\0" * 4]
    elif kind == "heartbeat":
        payload = []
    parts = [f"room1/{header['stream']}".encode(), msgspec.msgpack.encode(header), *payload]
    try:
        msg = codec.decode(parts)
    except DecodeError as e:
        assert e.reason in ("time", "field")
        assert not (codec.T_MIN_NS <= t < codec.T_MAX_NS and 0 <= seq <= codec.SEQ_MAX)
        return
    assert codec.T_MIN_NS <= msg.t_ns < codec.T_MAX_NS and 0 <= msg.header.seq <= codec.SEQ_MAX
