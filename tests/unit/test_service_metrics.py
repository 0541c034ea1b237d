"""The supervisor's view of the children's metric files (prometheus-client multiprocess format)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.mmap_dict import MmapedDict, mmap_key

from streamfuse.service.metrics import model_ids_by_pid


def _gauge_file(d: Path, pid: int, model_id: str, value: float) -> None:
    m = MmapedDict(str(d / f"gauge_liveall_{pid}.db"))
    m.write_value(mmap_key("streamfuse_model_info", "streamfuse_model_info", ["model_id"], [model_id], "x"),
                  value, 0.0)
    m.close()


def test_model_ids_by_pid_skips_a_file_being_created(tmp_path: Path) -> None:
    _gauge_file(tmp_path, 101, "abc", 1.0)
    _gauge_file(tmp_path, 102, "old", 0.0)  # a model no longer served
    (tmp_path / "counter_103.db").write_bytes(b"")  # a child that has just created its file
    assert model_ids_by_pid(tmp_path) == {101: "abc"}
