"""``streamfuse convert FILE...``: rewrite recordings in the current (Foxglove) layout.

Every message is read back as its exact wire parts (:func:`reader.read_raw`, which reads
both layouts) and written again with its recorded ``log_time``, so the converted file
replays the same messages. The ``streamfuse`` metadata record is carried over, with
``converted_from`` added.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from mcap.exceptions import McapError
from mcap.reader import make_reader

from streamfuse.record import format as fmt
from streamfuse.record import reader
from streamfuse.record.writer import RecordingWriter


def converted_path(src: Path) -> Path:
    """``rec.mcap`` -> ``rec-converted.mcap`` beside it."""
    return src.with_name(f"{src.stem}-converted.mcap")


def _metadata(src: Path) -> dict[str, str]:
    """The source file's ``streamfuse`` metadata record (empty when unreadable)."""
    try:
        with open(src, "rb") as f:
            for m in make_reader(f).iter_metadata():
                if m.name == fmt.METADATA_NAME:
                    return {k: v for k, v in m.metadata.items() if k != "message_encoding"}
    except (McapError, OSError, ValueError, EOFError, KeyError):
        pass  # a file without a summary or with a damaged tail: converted without it
    return {}


def convert_file(
    src: Path, dst: Path, *, chunk_size: int = 4 * 1024 * 1024
) -> tuple[dict[str, int], Counter[str]]:
    """Write ``src`` to ``dst`` in the current layout. Returns messages per channel
    (``"<MCAP topic> <schema>"``) and the records of ``src`` that could not be read."""
    errors: Counter[str] = Counter()
    md = {**_metadata(src), "converted_from": src.name}
    tmp = dst.with_name(f".{dst.name}.partial")
    try:
        with RecordingWriter(tmp, chunk_size=chunk_size, metadata=md) as w:
            for _topic, t_ns, parts in reader.read_raw([src], errors=errors):
                w.write(parts, t_ns=t_ns)
            counts = w.channel_counts()
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return counts, errors
