"""The Foxglove bridge's core, with stand-in channels (no server, no sockets)."""

from __future__ import annotations

import numpy as np

from streamfuse.bridge.foxglove import Bridge
from streamfuse.clock import NS_PER_MS as MS
from streamfuse.record import layout
from streamfuse.wire import codec

T0 = 1_700_000_000_000_000_000


class FakeChannel:
    def __init__(self, spec: layout.ChannelSpec, sinks: bool) -> None:
        self.spec, self.sinks = spec, sinks
        self.logged: list[tuple[bytes, int]] = []

    def has_sinks(self) -> bool:
        return self.sinks

    def log(self, data: bytes, *, log_time: int) -> None:
        self.logged.append((data, log_time))


def make_bridge(max_fps: float, sinks: bool = True) -> tuple[Bridge, dict[str, FakeChannel]]:
    made: dict[str, FakeChannel] = {}

    def factory(spec: layout.ChannelSpec) -> FakeChannel:
        made[spec.topic] = FakeChannel(spec, sinks)
        return made[spec.topic]

    return Bridge(factory, max_fps), made


def test_frames_are_limited_per_topic_and_sent_in_the_recording_layout() -> None:
    bridge, made = make_bridge(max_fps=5)
    img = np.arange(8 * 6 * 3, dtype=np.uint8).reshape(8, 6, 3)
    for i in range(30):  # 1 s of 30 fps on two cameras, arriving in real time
        now = T0 + i * 33 * MS
        for source in ("room1", "room2"):
            bridge.publish(codec.encode(codec.frame_message(source, i, now, img)), now)
    block = np.ones((320, 1), np.float32)
    for i in range(50):  # audio is never limited
        bridge.publish(
            codec.encode(codec.audio_message("room1", i, T0 + i * 20 * MS, block, 16000)), T0
        )
    assert len(made["/room1/video"].logged) == len(made["/room2/video"].logged) == 5
    assert bridge.skipped == 50
    assert len(made["/room1/audio"].logged) == 50
    ch = made["/room1/video"]
    assert ch.spec.schema_name == "foxglove.RawImage" and ch.spec.message_encoding == "protobuf"
    data, log_time = ch.logged[1]
    header, pixels = layout.decode("raw", data)
    assert log_time == codec.decode([b"room1/video", header, pixels]).t_ns == T0 + 7 * 33 * MS
    assert bytes(pixels) == img.tobytes()


def test_nothing_is_encoded_without_a_subscriber_and_bad_input_is_counted() -> None:
    bridge, made = make_bridge(max_fps=30, sinks=False)
    assert not bridge.publish(codec.encode(codec.text_message("room1", 0, T0, "hi")), T0)
    assert made["/room1/text"].logged == [] and bridge.sent == 0
    assert not bridge.publish([b"room1/text", b"\xc1not msgpack"], T0)
    assert not bridge.publish([b"room1/text"], T0)
    assert bridge.bad == 2


def test_the_bridge_is_a_non_essential_child_only_when_listen_is_set() -> None:
    from streamfuse.config import parse
    from streamfuse.service.processes import table

    on = table(parse({"foxglove": {"listen": "127.0.0.1:8765"}}, environ={}), python="py")
    (spec,) = [s for s in on if s.name == "foxglove"]
    assert spec.argv[:4] == ("py", "-m", "streamfuse", "foxglove")
    assert not spec.essential and spec.role == "bridge"
    assert all(s.name != "foxglove" for s in table(parse({}, environ={}), python="py"))


def test_the_frame_throttle_forgets_silent_topics_without_changing_what_passes() -> None:
    """Topics invented one per frame: the table stays bounded, and every frame passes or
    not exactly as with a table that remembers every topic."""
    from streamfuse.bridge.foxglove import Throttle

    throttle = Throttle(max_fps=5)  # one frame per topic every 200 ms
    remembered: dict[bytes, int] = {}
    rng = np.random.default_rng(0)
    now = T0
    for i in range(20_000):
        now += int(rng.integers(0, 2 * MS))
        topic = f"cam{i if i % 3 else int(rng.integers(0, 50))}/video".encode()  # some come back
        last = remembered.get(topic)
        expected = last is None or now - last >= 200 * MS
        if expected:
            remembered[topic] = now
        assert throttle.allow(topic, now) == expected
        assert len(throttle.last) <= 2 * 300 + 256  # at most ~300 topics sent in 200 ms
    assert len(remembered) > 10_000


def _dropped_channels() -> float:
    from prometheus_client import REGISTRY

    labels = {"node": "foxglove", "topic": "_other", "reason": "channels"}
    return REGISTRY.get_sample_value("streamfuse_messages_dropped_total", labels) or 0.0


def test_channels_stop_at_the_cap_for_invented_topics_but_not_for_configured_sources(
    caplog,
) -> None:
    """Invented topics get channels up to MAX_CHANNELS; beyond it their messages are not
    bridged (counted, logged at most once a minute, never read or throttled), channels
    already advertised go on, and configured sources' topics still get channels."""
    import logging

    from streamfuse.bridge.foxglove import MAX_CHANNELS

    made: dict[str, FakeChannel] = {}

    def factory(spec: layout.ChannelSpec) -> FakeChannel:
        made[spec.topic] = FakeChannel(spec, True)
        return made[spec.topic]

    bridge = Bridge(factory, max_fps=5, keep=["room1"])
    before = _dropped_channels()
    for i in range(MAX_CHANNELS):
        assert bridge.publish(codec.encode(codec.text_message(f"made-up-{i}", 0, T0, "x")), T0)
    assert len(bridge.channels) == MAX_CHANNELS and bridge.unbridged == 0
    caplog.set_level(logging.WARNING, logger="streamfuse.foxglove")
    img = np.zeros((4, 4, 3), np.uint8)
    for i in range(300):  # more invented names, within one minute: one log line
        now = T0 + i * 100 * MS
        assert not bridge.publish(codec.encode(codec.text_message(f"new-{i}", 0, now, "x")), now)
        assert not bridge.publish(codec.encode(codec.frame_message(f"new-{i}", 0, now, img)), now)
    assert bridge.unbridged == 600 and len(bridge.channels) == len(made) == MAX_CHANNELS
    assert _dropped_channels() - before == 600
    assert not bridge.throttle.last  # rejected before the frame throttle saw them
    lines = [r for r in caplog.records if "not bridged" in r.getMessage()]
    assert len(lines) == 1
    later = T0 + 61 * 1_000 * MS
    assert not bridge.publish(codec.encode(codec.text_message("new-0", 1, later, "x")), later)
    assert len([r for r in caplog.records if "not bridged" in r.getMessage()]) == 2
    # A channel already advertised keeps its messages...
    assert bridge.publish(codec.encode(codec.text_message("made-up-7", 1, later, "y")), later)
    assert len(made["/made-up-7/text"].logged) == 2
    # ...and a configured source gets every stream's channel, beyond the cap.
    for m in (codec.text_message("room1", 0, later, "hi"),
              codec.frame_message("room1", 0, later, img),
              codec.label_message("room1", 0, later, later + 10**9, "seven"),
              codec.class_message("room1", 0, later - 10**9, later, "seven", 0.9, b"{}")):
        assert bridge.publish(codec.encode(m), later)
    assert {"/room1/text", "/room1/video", "/room1/label"} <= set(made)
    assert sum(t.endswith("class/room1") for t in made) == 1
    assert len(bridge.channels) == MAX_CHANNELS + 4 and bridge.unbridged == 601


def test_a_negative_time_is_counted_as_malformed_not_raised() -> None:
    """Any publisher may send ``t_ns = -1`` (the bridge reads headers without the codec's
    checks): encoding its Foxglove timestamp raised out of ``publish`` and ended the bridge."""
    import msgspec

    bridge, made = make_bridge(max_fps=30)
    for kind, stream, extra, payload in (("text", "text", {}, [b"hi"]),
                                         ("label", "label", {"label": "x"}, [])):
        header = msgspec.msgpack.encode({"v": 1, "kind": kind, "source": "room1", "stream": stream,
                                         "seq": 0, "t_ns": -1, **extra})
        assert not bridge.publish([f"room1/{stream}".encode(), header, *payload], T0)
    assert bridge.bad == 2 and bridge.sent == 0
    assert bridge.publish(codec.encode(codec.text_message("room1", 1, T0, "after")), T0)
    assert [t for _d, t in made["/room1/text"].logged] == [T0]
