"""The Foxglove layout of recorded messages: exact round trips, fallbacks, bad data."""

from __future__ import annotations

import json

import msgspec
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamfuse.record import format as fmt
from streamfuse.record import layout
from streamfuse.wire import codec

T0 = 1_700_000_000_123_456_789


def roundtrip(parts: list) -> tuple[str, list[bytes]]:
    info = layout.read_info(parts[1])
    lay = layout.choose(info, parts[2:])
    data = b"".join(bytes(p) for p in layout.encode(lay, info, parts[1], parts[2:]))
    return lay, [bytes(p) for p in layout.decode(lay, data)]


CLASS_JSON = b'{"source": "room1", "label": "seven", "scores": {"seven": 0.9} }'


@pytest.mark.parametrize(
    ("msg", "want_layout"),
    [
        (
            codec.frame_message(
                "room1", 1, T0, np.arange(6 * 4 * 3, dtype=np.uint8).reshape(6, 4, 3)
            ),
            "raw",
        ),
        (
            codec.frame_message(
                "room1", 2, T0, b"\xff\xd8jpegdata", encoding="jpeg", shape=(6, 4, 3)
            ),
            "jpeg",
        ),
        (
            codec.audio_message("room1", 3, T0, np.arange(8, dtype=np.int16).reshape(4, 2), 8000),
            "audio",
        ),
        (codec.text_message("room1", 4, T0, ""), "text"),
        (codec.label_message("room1", 5, T0, T0 + 10, "seven"), "label"),
        (codec.class_message("room1", 6, T0 - 5, T0, "seven", 0.9, CLASS_JSON), "class"),
        (codec.class_message("room1", 7, T0 - 5, T0, "seven", 0.9, b'{"a": "\\u007d"}'), "class"),
        (
            codec.class_message("room1", 8, T0 - 5, T0, "seven", 0.9, b"{}"),
            "wire",
        ),  # nothing to append to
        (
            codec.class_message("room1", 9, T0 - 5, T0, "seven", 0.9, b'{"a": 1}\n'),
            "wire",
        ),  # not brace-final
        (codec.class_message("room1", 10, T0 - 5, T0, "seven", 0.9, b"[1, 2]"), "wire"),
        (codec.heartbeat_message("room1", "text", 11, T0), "wire"),
    ],
)
def test_every_message_comes_back_byte_for_byte(msg, want_layout: str) -> None:
    parts = [bytes(p) for p in codec.encode(msg)]
    lay, back = roundtrip(parts)
    assert lay == want_layout
    assert back == parts[1:]


def test_what_a_foxglove_schema_cannot_hold_exactly_goes_to_wire() -> None:
    header = msgspec.msgpack.encode(
        {"v": 1, "kind": "text", "source": "room1", "stream": "text", "seq": 0, "t_ns": T0}
    )
    assert roundtrip([b"room1/text", header, b"\xff\xfe not utf-8"]) == (
        "wire",
        [header, b"\xff\xfe not utf-8"],
    )
    frame = msgspec.msgpack.encode(
        {
            "v": 1,
            "kind": "frame",
            "source": "room1",
            "stream": "video",
            "seq": 0,
            "t_ns": T0,
            "shape": [2, 2, 3],
            "encoding": "raw",
            "dtype": "uint8",
        }
    )
    assert (
        roundtrip([b"room1/video", frame, b"short"])[0] == "wire"
    )  # size does not match the shape
    assert roundtrip([b"room1/video", frame, b"x" * 12, b"y"])[0] == "wire"  # two payload parts


def test_channels_name_topics_as_foxglove_does_and_map_back() -> None:
    spec = layout.channel_spec("class/room1", "class")
    assert (spec.topic, spec.message_encoding, spec.schema_encoding) == (
        "/class/room1",
        "json",
        "jsonschema",
    )
    assert json.loads(spec.schema_data)["properties"][layout.JSON_HEADER_KEY]["type"] == "string"
    assert layout.route(spec.message_encoding, spec.topic, spec.metadata) == (
        "class/room1",
        "class",
    )
    hb = layout.channel_spec("room1/text", "wire")
    assert hb.topic == "/streamfuse/wire/room1/text"
    assert layout.route(hb.message_encoding, hb.topic, hb.metadata) == ("room1/text", "wire")
    # A channel of an old recording, and one from another program.
    assert layout.route(fmt.MESSAGE_ENCODING, "room1/video", {"source": "room1"}) == (
        "room1/video",
        "wire",
    )
    assert layout.route("json", "/pose", {}) == ("/pose", "")


@given(
    st.sampled_from(["raw", "jpeg", "audio", "text", "label", "class", "wire"]),
    st.binary(max_size=200),
)
def test_random_data_raises_only_framing_errors(lay: str, data: bytes) -> None:
    try:
        layout.decode(lay, data)
    except fmt.FramingError:
        pass
