"""Label CSV validation and the window boundary rule (streamfuse.train.labels)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamfuse.train.labels import LabelError, Labeller, Span, parse_rows, read_labels, resolve

T0 = 1_767_225_600_000_000_000
S = 1_000_000_000
RANGES = {"room1": (T0, T0 + 60 * S), "room2": (T0, T0 + 60 * S)}


def write(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "labels.csv"
    p.write_text("source,start,end,label\n" + body)
    return p


def rows_ns(*rows: tuple[str, float, float, str]) -> str:
    return "".join(f"{s},{T0 + int(a * S)},{T0 + int(b * S)},{lab}\n" for s, a, b, lab in rows)


def test_absolute_ns_rows_read(tmp_path):
    p = write(tmp_path, rows_ns(("room1", 0, 2, "seven"), ("room2", 1, 3, "one"), ("room1", 2, 4, "two")))
    spans = read_labels(p, RANGES)
    assert spans == [Span("room1", T0, T0 + 2 * S, "seven", 2), Span("room2", T0 + S, T0 + 3 * S, "one", 3),
                     Span("room1", T0 + 2 * S, T0 + 4 * S, "two", 4)]


def test_seconds_are_from_the_sources_first_message(tmp_path):
    p = write(tmp_path, "room1,0.5,2.25,seven\n")
    first = T0 + 123
    (span,) = read_labels(p, {"room1": (first, first + 10 * S)})
    assert (span.start_ns, span.end_ns) == (first + S // 2, first + 2 * S + S // 4)


@pytest.mark.parametrize("body,line,words", [
    (rows_ns(("room1", 0, 2, "a"), ("room1", 1, 3, "b")), 3, "overlaps line 2"),
    (rows_ns(("room1", 4, 6, "a"), ("room1", 0, 2, "b")), 3, "unsorted"),
    (rows_ns(("room1", 0, 2, "a"), ("hall", 0, 2, "b")), 3, "unknown source 'hall'"),
    (rows_ns(("room1", 0, 2, "a"), ("room1", 100, 102, "b")), 3, "out of range"),
    ("room1,-1,2,a\n", 2, "out of range"),
    (rows_ns(("room1", 2, 1, "a")), 2, "not after start"),
    ("room1,abc,2,a\n", 2, "not a number"),
    ("room1,0,2\n", 2, "expected 4 fields"),
    ("room1,0,2,\n", 2, "empty label"),
    (rows_ns(("room1", 0, 2, "a")) + "room1,3,4,b\n", 3, "mixes absolute"),
])
def test_bad_rows_name_their_line(tmp_path, body, line, words):
    p = write(tmp_path, body)
    with pytest.raises(LabelError) as e:
        read_labels(p, RANGES)
    msg = str(e.value)
    assert msg.startswith(f"labels.csv:{line}: "), msg
    assert words in msg


def test_bad_header_and_empty_file():
    with pytest.raises(LabelError, match=r"^x.csv:1: expected the header"):
        parse_rows("start,end,label\n", "x.csv")
    with pytest.raises(LabelError, match=r"^x.csv:1: empty label file"):
        parse_rows("", "x.csv")


def test_range_allows_label_to_end_just_after_last_message():
    rows = parse_rows(f"source,start,end,label\nroom1,{T0},{T0 + 60 * S + S // 2},a\n")
    assert resolve(rows, RANGES)[0].end_ns == T0 + 60 * S + S // 2


def test_window_takes_the_majority_label_only_above_half():
    lab = Labeller([Span("room1", T0, T0 + 2 * S, "seven"), Span("room1", T0 + 2 * S, T0 + 4 * S, "one"),
                    Span("room1", T0 + 5 * S, T0 + 6 * S, "two")])
    half = S // 2
    assert lab.label("room1", T0, T0 + S) == "seven"
    assert lab.label("room1", T0 + S, T0 + 2 * S) == "seven"
    assert lab.label("room1", T0 + 2 * S - half, T0 + 3 * S - half) is None  # 50/50 boundary: dropped
    assert lab.label("room1", T0 + 2 * S - half // 2, T0 + 3 * S - half // 2) == "one"  # 75 % one
    assert lab.label("room1", T0 + 4 * S + half, T0 + 5 * S + half) is None  # half unlabelled
    assert lab.label("room1", T0 + 4 * S + half + 1, T0 + 5 * S + half + 1) == "two"
    assert lab.label("room2", T0, T0 + S) is None
    assert lab.classes == ["one", "seven", "two"]
