"""The live console keeps a bounded number of source panels, whatever names publishers invent.

Real state and live code (:class:`ConsoleState`, :class:`live.Hub`, :class:`live.Client`)
with a socket that acknowledges at once, as a browser that keeps up does; the browser's
panels are replayed from what it is sent (an update or frame adds a panel, ``gone`` removes
it), as ``console.js`` does."""

from __future__ import annotations

import asyncio
import json

import numpy as np
from prometheus_client import REGISTRY

from streamfuse.clock import NS_PER_MS as MS
from streamfuse.clock import NS_PER_S as S
from streamfuse.web import live
from streamfuse.web.state import ACTIVE_NS, MAX_PANELS, ConsoleState
from streamfuse.wire import codec

T0 = 1_700_000_000_000_000_000
IMG = np.full((12, 16, 3), 90, np.uint8)


def frame(source: str, seq: int = 0) -> codec.Message:
    return codec.frame_message(source, seq, T0 + seq * MS, IMG)


def text(source: str, seq: int = 0) -> codec.Message:
    return codec.text_message(source, seq, T0 + seq * MS, "hi")


def test_a_new_source_beyond_the_cap_evicts_the_longest_silent_unconfigured_one() -> None:
    st = ConsoleState(configured=["room1"])
    st.push(frame("room1"), 0)  # the configured camera, silent from now on
    st.push(codec.label_message("s0", 0, T0, T0 + S, "seven"), 1 * S)
    for i in range(MAX_PANELS - 1):
        st.push(text(f"s{i}"), (i + 1) * S)
    assert len(st.sources()) == MAX_PANELS and st.label_spans("s0", 0)
    late = (MAX_PANELS + ACTIVE_NS // S) * S
    st.push(text("s1"), late)  # s1 speaks again: s0 is now the one silent the longest
    st.push(text("new1"), late)
    assert "s0" not in st.sources() and {"room1", "s1", "new1"} <= set(st.sources())
    assert st.evicted == 1 and st.label_spans("s0", 0) == [] and "s0" not in st.labels.spans
    st.push(text("new2"), late)  # next: s2, never room1 (configured), never s1 (just heard)
    assert "s2" not in st.sources() and {"room1", "s1"} <= set(st.sources())
    assert len(st.sources()) == MAX_PANELS
    version, kept = st.frame("room1")
    assert version == 1 and kept is not None  # the dead camera keeps its last frame


def test_when_every_kept_source_is_active_a_new_one_is_not_shown_and_counted() -> None:
    st = ConsoleState(configured=["room1"])
    for i in range(MAX_PANELS):
        st.push(text(f"s{i}"), i * MS)
    now = ACTIVE_NS  # s0 was heard a minute ago, not more: still active
    for _ in range(3):  # one name sending three times counts once
        st.push(frame("intruder"), now)
    st.push(frame("other"), now)
    assert "intruder" not in st.sources() and st.hidden == 2 and st.evicted == 0
    assert st.frame("intruder") == (0, None)
    st.push(text("room1"), now)  # a configured source is always shown, even beyond the cap
    assert "room1" in st.sources() and len(st.sources()) == MAX_PANELS + 1
    st.push(text("late"), now + 2 * MS)  # s0, s1 now silent for over a minute: s0 goes
    assert "late" in st.sources() and "s0" not in st.sources() and "s1" in st.sources()


def test_only_configured_sources_kept_hides_every_other() -> None:
    names = [f"cam{i}" for i in range(MAX_PANELS)]
    st = ConsoleState(configured=names)
    for name in names:
        st.push(text(name), 0)
    st.push(text("x"), 10 * ACTIVE_NS)
    assert "x" not in st.sources() and st.hidden == 1
    assert set(st.sources()) == set(names)


class AckingSocket:
    """A browser that keeps up: every message is acknowledged as soon as it is sent.
    ``panels`` is what its page shows."""

    def __init__(self) -> None:
        self.client: live.Client | None = None
        self.panels: set[str] = set()
        self.peak = 0
        self.hidden = 0
        self.messages = 0

    def _got(self) -> None:
        self.messages += 1
        self.peak = max(self.peak, len(self.panels))
        assert self.client is not None
        self.client.ack()

    async def send_text(self, data: str) -> None:
        msg = json.loads(data)
        self.panels -= set(msg.get("gone", []))
        self.panels |= set(msg["sources"])
        self.hidden = msg.get("hidden", self.hidden)
        self._got()

    async def send_bytes(self, data: bytes) -> None:
        n = int.from_bytes(data[:2], "big")
        self.panels.add(json.loads(data[2 : 2 + n])["source"])
        self._got()


def test_thousands_of_invented_sources_keep_panels_and_browser_state_bounded() -> None:
    """3,000 invented names, one a second, each sending a frame and a text, then 2,000
    more within a second: the state keeps at most MAX_PANELS sources (evicting the longest
    silent while they come one a second, not showing the flood), every per-browser table
    stays within that, the page shows at most that many panels, and the configured camera
    that went silent before all of them keeps its panel and last frame."""
    sources, flood = 3000, 2000

    async def scenario() -> tuple[ConsoleState, live.Hub, live.Client, AckingSocket, int]:
        st = ConsoleState(configured=["room1"])
        hub = live.Hub(st, max_fps=1000)
        sock = AckingSocket()
        client = sock.client = live.Client(sock)
        hub.clients.add(client)
        pump = asyncio.create_task(client.pump(st, hub.sent))
        st.push(frame("room1"), 0)
        peak = 0
        for i in range(sources + flood):
            now = (i + 1) * S if i < sources else (sources + 1) * S + (i - sources) * 100_000
            st.push(frame(f"made-up-{i}", i), now)
            st.push(text(f"made-up-{i}", i), now)
            hub.mark()
            await hub.frames(now)
            for _ in range(4):
                await asyncio.sleep(0)  # the pump sends what is pending
            sizes = (len(st.sources()), len(client.seen) // len(live.PANELS),
                     len(client.frame_seen), len(client.cursors), len(client.gens),
                     len(client.frames), len(client.shown), len(hub._next_frame_ns))
            peak = max(peak, *sizes)
        hub.mark()
        await hub.frames(now + 1)
        for _ in range(8):
            await asyncio.sleep(0)
        pump.cancel()
        return st, hub, client, sock, peak

    st, hub, client, sock, peak = asyncio.run(scenario())
    kept = st.sources()
    assert len(kept) == MAX_PANELS and peak <= MAX_PANELS
    assert "room1" in kept and st.frame("room1")[1] is not None
    # One a second, each name evicts the oldest (silent 63 s); the flood evicts only the
    # few silent over a minute when it starts, and is not shown.
    flood_evicted = st.evicted - (sources + 1 - MAX_PANELS)
    assert 0 < flood_evicted <= 4 and st.hidden == flood - flood_evicted
    assert set(client.gens) == set(kept) and set(client.frame_seen) <= set(kept)
    assert sock.peak <= MAX_PANELS + 1  # a new panel may arrive before the gone one leaves
    assert sock.panels == set(kept) and "room1" in sock.panels
    assert len(client.gone) == 0 and sock.messages > sources and sock.hidden == st.hidden


def test_hidden_sources_reach_the_metric_and_the_page() -> None:
    async def scenario() -> tuple[AckingSocket, float]:
        st = ConsoleState()
        hub = live.Hub(st, max_fps=5)
        sock = AckingSocket()
        client = sock.client = live.Client(sock)
        hub.clients.add(client)
        pump = asyncio.create_task(client.pump(st, hub.sent))
        before = REGISTRY.get_sample_value("streamfuse_web_sources_hidden_total") or 0.0
        for i in range(MAX_PANELS + 5):  # all heard within the minute: 5 are not shown
            st.push(text(f"s{i}"), i * MS)
        hub.mark()
        await asyncio.sleep(0)
        hub.flush_metrics(0)
        pump.cancel()
        after = REGISTRY.get_sample_value("streamfuse_web_sources_hidden_total") or 0.0
        return sock, after - before

    sock, counted = asyncio.run(scenario())
    assert counted == 5 and sock.hidden == 5 and len(sock.panels) == MAX_PANELS
