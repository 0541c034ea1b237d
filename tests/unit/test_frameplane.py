"""Frames by reference: the descriptor on the wire, windows of descriptors, the
worker's reads from the plane, and the inline form that leaves the host."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from streamfuse.config import BusConfig
from streamfuse.frameplane import ring
from streamfuse.frameplane.inline import Inliner
from streamfuse.frameplane.writer import PlaneWriter
from streamfuse.fusion.features import Preprocessing, collate
from streamfuse.fusion.frames import WindowFrames
from streamfuse.wire import codec
from streamfuse.wire.schema import FrameRef, Window

T = 1_700_000_000 * 10**9
SHAPE = (48, 64, 3)


@pytest.fixture
def plane(tmp_path: Path) -> ring.RingWriter:
    w = ring.RingWriter(ring.segment_name("0123456789", "cam-video", 7), 3, 48 * 64 * 3 + 65536,
                        directory=tmp_path)
    yield w
    w.close()


def _img(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 255, SHAPE, dtype=np.uint8)


def test_a_reference_goes_back_inline_byte_for_byte(plane, tmp_path: Path) -> None:
    img = _img(0)
    jpg = cv2.imencode(".jpg", img)[1].tobytes()
    for data, enc in ((img, "raw"), (jpg, "jpeg")):
        ref = plane.write(data, enc)
        by_ref = codec.decode(codec.encode(codec.frame_ref_message("cam", 3, T, ref, SHAPE)))
        assert by_ref.header.encoding == "shm" and codec.frame_ref(by_ref) == ref
        inline = codec.frame_message("cam", 3, T, data, encoding=enc, shape=SHAPE)
        inliner = Inliner(ring.RingReader(tmp_path))
        got = inliner.parts(codec.encode(by_ref))
        assert [bytes(p) for p in got] == [bytes(p) for p in codec.encode(inline)]
        inliner.close()


def test_an_overwritten_frame_is_dropped_not_sent(plane, tmp_path: Path) -> None:
    ref = plane.write(_img(0), "raw")
    for i in range(3):
        plane.write(_img(i + 1), "raw")
    inliner = Inliner(ring.RingReader(tmp_path))
    assert inliner.parts(codec.encode(codec.frame_ref_message("cam", 0, T, ref, SHAPE))) is None
    assert inliner.overwritten == 1
    text = codec.encode(codec.text_message("cam", 0, T, "hi"))
    assert inliner.parts(text) is text
    inliner.close()


@pytest.mark.parametrize("ref", [
    FrameRef("x", 0, 1, 10, "png"),            # unknown pixel encoding
    FrameRef("a/../b", 0, 1, 10, "jpeg"),      # a path, not a name
    FrameRef("x", -1, 1, 10, "jpeg"),          # negative slot
    FrameRef("x", 0, 0, 10, "jpeg"),           # generations start at 1
    FrameRef("x", 0, 1, 100, "raw"),           # raw size that does not match the shape
    FrameRef("x", 0, 1, 10**9, "jpeg"),        # absurd size
])
def test_bad_references_are_refused(ref: FrameRef) -> None:
    msg = codec.frame_ref_message("cam", 0, T, ref, SHAPE)
    with pytest.raises(codec.DecodeError):
        codec.decode(codec.encode(msg))


def test_garbage_reference_is_a_decode_error() -> None:
    msg = codec.frame_ref_message("cam", 0, T, FrameRef("x", 0, 1, 9216, "raw"), SHAPE)
    parts = codec.encode(msg)
    parts[2] = b"\x93\x01\x02"
    with pytest.raises(codec.DecodeError):
        codec.decode(parts)


def _window(refs: list[FrameRef], t: list[int]) -> Window:
    return Window(source="cam", seq=0, t_start_ns=0, t_end_ns=10**9, present={"video": True},
                  frames=list(refs), frame_encoding="shm", frame_t_ns=t, frame_shape=SHAPE)


def test_windows_carry_references_and_the_worker_reads_them(plane, tmp_path: Path) -> None:
    imgs = [_img(i) for i in range(4)]
    jpg = cv2.imencode(".jpg", imgs[0])[1].tobytes()
    refs = [plane.write(imgs[0], "raw"), plane.write(jpg, "jpeg")]
    w = codec.decode_window(codec.encode_window(_window(refs, [1, 2])))
    assert w.frames == refs and w.frame_shape == SHAPE
    prep = Preprocessing(frames_per_window=2, image_size=16)
    source = WindowFrames(ring.RingReader(tmp_path))
    by_ref = collate([w], prep, source)
    inline = Window(source="cam", seq=0, t_start_ns=0, t_end_ns=10**9, present={"video": True},
                    frames=[imgs[0], jpg], frame_t_ns=[1, 2])
    want = collate([inline], prep)
    assert bool(by_ref.mask[0, 0]) and np.array_equal(by_ref.frames.numpy(), want.frames.numpy())
    assert source.decoded == 2
    collate([w], prep, source)  # the next window showing the same frames decodes nothing
    assert source.decoded == 2 and source.hits == 2
    source.close()


def test_a_window_whose_frames_were_overwritten_has_no_video(plane, tmp_path: Path) -> None:
    refs = [plane.write(_img(i), "raw") for i in range(2)]
    for i in range(3):
        plane.write(_img(10 + i), "raw")
    source = WindowFrames(ring.RingReader(tmp_path))
    prep = Preprocessing(frames_per_window=2, image_size=16)
    raw = collate([_window(refs, [1, 2])], prep, source)
    assert not bool(raw.mask[0, 0]) and not raw.frames.numpy().any()
    assert source.overwritten == 1 and raw.problems  # counted, and the reason is listed
    source.close()


def test_the_plane_falls_back_to_inline(tmp_path: Path) -> None:
    off = PlaneWriter.open(BusConfig(frame_plane="inline"), "cam-video", slots=2, nbytes=9216)
    assert off.ring is None
    # An edge capture publishing to another host's bus cannot share its memory with it.
    remote = PlaneWriter.open(BusConfig(input="tcp://10.1.2.3:5560"), "cam-video", slots=2,
                              nbytes=9216)
    assert remote.ring is None
    msg = off.message("cam", 0, T, _img(0), encoding="raw", shape=SHAPE)
    assert msg.header.encoding == "raw" and msg == codec.frame_message("cam", 0, T, _img(0))
    on = PlaneWriter.open(BusConfig(input=f"ipc://{tmp_path}/in"), "cam-video", slots=2, nbytes=100)
    try:
        # A frame larger than a slot (the camera changed size) goes inline, not lost.
        msg = on.message("cam", 0, T, _img(0), encoding="raw", shape=SHAPE)
        assert msg.header.encoding == "raw"
        assert on.inline_frames == 1
    finally:
        on.close()


def test_web_preview_of_a_frame_by_reference(plane, tmp_path: Path, monkeypatch) -> None:
    from streamfuse.web import frames

    monkeypatch.setattr(frames, "_plane", ring.RingReader(tmp_path))
    img = _img(0)
    ref = plane.write(img, "raw")
    msg = codec.decode(codec.encode(codec.frame_ref_message("cam", 0, T, ref, SHAPE)))
    got = frames.preview_jpeg(msg.header, msg.payload[0])
    want = frames.preview_jpeg(codec.frame_message("cam", 0, T, img).header, img.data.cast("B"))
    assert got is not None and got == want
    for i in range(3):
        plane.write(_img(i + 1), "raw")
    assert frames.preview_jpeg(msg.header, msg.payload[0]) is None
