"""Camera frames for browsers: downscaled and JPEG-encoded here, in the web process.

Captures and workers never pay for the console: this runs only in ``streamfuse web``,
at most ``web.max_fps`` times a second per source, and only while a browser watches.
"""

from __future__ import annotations

import threading

import cv2
import msgspec
import numpy as np

from streamfuse.frameplane.ring import RingReader
from streamfuse.wire import codec
from streamfuse.wire.schema import FrameHeader

MAX_WIDTH = 480  # preview width in pixels: enough to see, light on the wire
QUALITY = 75
# Frames by reference are read when a preview is made, not on arrival: the console shows
# a few frames a second and the newest one is still in its ring. One reader, one lock:
# previews of several sources may be made in threads at once.
_plane = RingReader()
_plane_lock = threading.Lock()


def _shared_preview(header: FrameHeader, payload: bytes | memoryview, max_width: int,
                    quality: int) -> tuple[bytes, int, int] | None:
    try:
        ref = codec.decode_ref(payload, header.shape)
    except codec.DecodeError:
        return None
    inline = msgspec.structs.replace(header, encoding=ref.encoding)
    with _plane_lock:
        return _plane.read(ref, lambda v: preview_jpeg(inline, v.data, max_width=max_width,
                                                       quality=quality))


def preview_jpeg(header: FrameHeader, payload: bytes | memoryview, *, max_width: int = MAX_WIDTH,
                 quality: int = QUALITY) -> tuple[bytes, int, int] | None:
    """``(jpeg, width, height)`` of a frame no wider than ``max_width``; None if undecodable.

    A raw frame is the ``(h, w, 3)`` BGR array of the header's shape; a JPEG that is already
    small enough goes out as it came (no decode, no second loss of quality). A frame by
    reference (``shm``) is made from its slot in the frame plane (None if overwritten).
    """
    if header.encoding == "shm":
        return _shared_preview(header, payload, max_width, quality)
    if header.encoding == "jpeg":
        h, w = header.shape[0], header.shape[1]
        if w <= max_width:
            return bytes(payload), w, h
        img = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            return None
    elif header.encoding == "raw":
        img = np.frombuffer(payload, np.uint8).reshape(header.shape)
    else:
        return None
    h, w = img.shape[:2]
    if w > max_width:
        h = max(1, round(h * max_width / w))
        w = max_width
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return (buf.tobytes(), w, h) if ok else None
