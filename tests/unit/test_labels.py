"""Label CSV validation and the window boundary rule (streamfuse.train.labels)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamfuse.clock import NS_PER_S as S
from streamfuse.train import labels as lab
from streamfuse.train.labels import LabelError, Labeller, Span, parse_rows, read_labels, resolve

T0 = 1_767_225_600_000_000_000

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


# ----------------------------------------------------------------------------- label messages


def test_label_stream_open_ended_labels_end_at_the_next_message_or_a_stop():
    ls = lab.LabelStream()
    ls.push("room1", 10, 0, "seven")  # open-ended
    ls.push("room1", 30, 40, "three")  # ends "seven" at 30
    ls.push("room1", 50, 0, "one")
    ls.push("room1", 60, 0, "", stop=True)  # ends "one" at 60
    ls.push("room1", 70, 0, "two")  # still open at the end: ends at room1's last message
    ls.push("room2", 5, 0, "nine")
    spans = ls.finish({"room1": (0, 90), "room2": (0, 8)})
    got = [(s.source, s.start_ns, s.end_ns, s.label) for s in spans]
    assert got == [("room1", 10, 30, "seven"), ("room1", 30, 40, "three"), ("room1", 50, 60, "one"),
                   ("room1", 70, 90, "two"), ("room2", 5, 8, "nine")]


def test_a_label_message_cuts_a_running_span_short():
    ls = lab.LabelStream()
    ls.push("room1", 10, 100, "seven")
    ls.push("room1", 40, 0, "", stop=True)
    assert [(s.start_ns, s.end_ns) for s in ls.finish({"room1": (0, 200)})] == [(10, 40)]


def test_csv_and_label_stream_disagreeing_name_the_span_and_both_labels():
    ns = lab.NS_PER_S
    csv_spans = [lab.Span("room1", 0, 2 * ns, "seven", line=2),
                 lab.Span("room1", 2 * ns, 4 * ns, "three", line=3)]
    late = [lab.Span("room1", ns // 5, 2 * ns + ns // 5, "seven"),
            lab.Span("room1", 2 * ns + ns // 5, 4 * ns, "three")]
    lab.check_agree(csv_spans, late)  # a key pressed 0.2 s late is not a disagreement
    wrong = [lab.Span("room1", 0, 2 * ns, "seven"), lab.Span("room1", 2 * ns, 4 * ns, "eight")]
    with pytest.raises(lab.LabelError) as e:
        lab.check_agree(csv_spans, wrong)
    msg = str(e.value)
    assert msg.startswith("labels.csv:3: room1 [2000000000, 4000000000)")
    assert "'three'" in msg and "'eight'" in msg


def test_the_aligner_makes_the_same_windows_with_or_without_label_messages():
    import numpy as np

    from streamfuse.align.offline import windows_from_messages
    from streamfuse.config import AlignConfig
    from streamfuse.wire import codec

    block = np.zeros((320, 1), np.float32)
    img = np.zeros((8, 8, 3), np.uint8)
    media = []
    for i in range(200):  # 4 s of 20 ms audio blocks, a frame every 100 ms
        t = T0 + i * 20_000_000
        media.append(codec.audio_message("room1", i, t, block, 16000))
        if i % 5 == 0:
            media.append(codec.frame_message("room1", i // 5, t, img))
    labels = [codec.label_message("room1", 0, T0 + S, None, "seven"),
              codec.label_stop_message("room1", 1, T0 + 2 * S)]
    mixed = sorted(media + labels, key=lambda m: m.t_ns)
    plain = [(w.key, w.present) for w in windows_from_messages(media, AlignConfig())]
    with_labels = [(w.key, w.present) for w in windows_from_messages(mixed, AlignConfig())]
    assert plain and with_labels == plain
