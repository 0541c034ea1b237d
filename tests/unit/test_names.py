"""Bounded name tables (streamfuse.names) and the aligner's statistics keyed by them."""

from __future__ import annotations

import logging

import pytest

from streamfuse.align.window import Aligner
from streamfuse.clock import NS_PER_S as S
from streamfuse.config import AlignConfig
from streamfuse.names import MAX_NAMES, OTHER, NameTable, put_recent
from streamfuse.wire import codec
from tests.unit.test_align_window import MS, T0, av, feed, text


def test_the_first_names_keep_their_own_key_and_the_rest_fold() -> None:
    t = NameTable("source", cap=4)
    assert [t(n) for n in ["a", "b", "a", "c", "d", "e", "f", "b"]] == \
        ["a", "b", "a", "c", "d", OTHER, OTHER, "b"]
    assert len(t) == 4 and t.folded == 2
    assert t("e") == OTHER and t("d") == "d"  # a name's key never changes


def test_configured_names_never_fold() -> None:
    t = NameTable("source", ["cam2", "cam1"], cap=3)
    assert [t(n) for n in ["x", "y", "z", "cam1", "cam2"]] == ["x", OTHER, OTHER, "cam1", "cam2"]
    many = [f"cfg{i}" for i in range(10)]  # more configured names than the cap
    t = NameTable("source", many, cap=3)
    assert [t(n) for n in many] == many and t("new") == OTHER


def test_the_keys_depend_only_on_the_order_of_the_names() -> None:
    names = [f"n{i % 700}" for i in range(0, 5000, 3)]  # 700 names, in a scrambled order
    a, b = NameTable("source"), NameTable("source")
    keys = [a(n) for n in names]
    assert keys == [b(n) for n in names]
    first = list(dict.fromkeys(names))[:MAX_NAMES]
    assert {k for k in keys if k != OTHER} == set(first) and OTHER in keys


def test_the_overflow_key_is_never_a_slot_of_its_own() -> None:
    t = NameTable("source", cap=4)
    assert t(OTHER) == OTHER and len(t) == 0


def test_topics_fold_their_source() -> None:
    t = NameTable("source", cap=1)
    assert t.topic("room1/video") == "room1/video"
    assert t.topic("room2/audio") == "_other/audio"
    assert t.topic("class/room1") == "class/room1"
    assert t.topic("class/room3") == "class/_other"
    assert t.topic("not a topic") == OTHER  # malformed: itself a name, folded here


def test_folded_names_are_counted_once_while_they_keep_coming_and_logged_rarely(
        caplog: pytest.LogCaptureFixture) -> None:
    t = NameTable("source", cap=2)
    with caplog.at_level(logging.WARNING, logger="streamfuse.names"):
        for i in range(1000):
            t(f"x{i}")
            t(f"x{i}")  # the same name again: not a new folded name
    assert t.folded == 998
    # the 1st, 2nd, 4th, ... 512th folded name: 10 lines for 998 names
    assert len(caplog.records) == 10
    assert "more than 2 distinct source names seen: 'x2'" in caplog.messages[0]
    assert "'_other'" in caplog.messages[0]


def test_put_recent_drops_the_least_recently_put_key() -> None:
    d: dict[str, int] = {}
    assert put_recent(d, "a", 1, 2) is None
    put_recent(d, "b", 1, 2)
    assert put_recent(d, "a", 2, 2) == 1  # "a" is now the most recent
    put_recent(d, "c", 1, 2)
    assert d == {"a": 2, "c": 1}


def test_aligner_stats_stay_bounded_under_invented_names() -> None:
    """Thousands of invented names, each one text message, after a real source: every
    statistics table keeps at most the cap plus ``_other``, the real source has its own
    exact counts, and the windows keep every name."""
    al = Aligner(AlignConfig(required=[]))
    out = feed(al, av(T0, T0 + 2 * S, src="early", video=False))
    n = 3000
    for i in range(n):
        t = T0 + 2 * S + i * MS
        al.push(text(t, "hi", src=f"inv-{i}"), t)
        al.push(codec.text_message(f"inv-{i}", 1, 1, "bad time"), t)  # rejected: "time"
        out += al.pop_ready(t)
    out += al.flush()
    assert {w.source for w in out} == {"early"} | {f"inv-{i}" for i in range(n)}
    st = al.stats
    for table in (st.windows, st.coverage_n, st.repeated, st.resyncs):
        assert len(set(table)) <= MAX_NAMES + 1
    for pairs in (st.absent, st.late, st.rejected, st.restarts):
        assert len({k[0] for k in pairs}) <= MAX_NAMES + 1
    # "early" took the first key, the first invented names the rest of the cap
    assert {k[0] for k in st.rejected} == {f"inv-{i}" for i in range(MAX_NAMES - 1)} | {OTHER}
    early = [w for w in out if w.source == "early"]
    assert st.windows["early"] == len(early) >= 4  # its own count, untouched by the flood
    assert st.coverage_n["early"] == len([w for w in early if w.audio is not None])
    assert st.rejected[("early", "text", "time")] == 0
    assert sum(st.windows.values()) == len(out)
    assert st.rejected[(OTHER, "text", "time")] == n - (MAX_NAMES - 1)
    assert len(al.names) == MAX_NAMES


def test_configured_sources_keep_their_stats() -> None:
    names = [f"cam{i}" for i in range(MAX_NAMES + 10)]  # more configured sources than the cap
    al = Aligner(AlignConfig(required=[]), sources=names)
    for i, name in enumerate(names):
        al.push(text(T0 + i * MS, "x", src=name), T0 + i * MS)
    al.flush()
    assert set(al.stats.windows) == set(names)
