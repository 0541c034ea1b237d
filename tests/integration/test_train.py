"""`streamfuse train` and `streamfuse eval` as real processes on a tiny avdigits set.

The set is built from what ships with the code (scikit-learn digits, espeak-ng,
generated noise). Checks: training gets clearly above chance (10 classes), the
artifact loads as the fusion worker loads it and the worker's predictions agree
with eval's, eval writes every report file, bad labels are exit 2 naming the
line, and `torchrun --nproc_per_node 2` (DDP over gloo) lands in the same
accuracy range as one process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from streamfuse.config import Config
from streamfuse.datasets import avdigits

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SEGMENTS = 100
EPOCHS = 25  # the tiny set learns slowly under the default augmentation (bars over frames)
CHANCE = 0.1


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", STREAMFUSE_LOG="WARNING")
    env.pop("STREAMFUSE_CONFIG", None)
    return env


def _run(argv: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


def _train_args(data: Path, out: Path) -> list[str]:
    return ["train", "--recordings", str(data), "--out", str(out), "--epochs", str(EPOCHS), "--seed", "0",
            "--batch-size", "32", "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train") / "avdigits"
    avdigits.build(out, avdigits.Params(segments=SEGMENTS, seed=11, segments_per_file=50))
    return out


@pytest.fixture(scope="module")
def model(data: Path) -> Path:
    out = data.parent / "model"
    r = _run([sys.executable, "-m", "streamfuse", *_train_args(data, out)])
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_trains_above_chance_and_the_worker_loads_it(model: Path, data: Path):
    from streamfuse.align.offline import windows_from_messages
    from streamfuse.fusion.artifact import load_artifact
    from streamfuse.fusion.node import predict
    from streamfuse.record.reader import read_messages
    from streamfuse.train.dataset import load_windows
    from streamfuse.train.loop import predict_logits

    cfg = Config()
    loaded = load_artifact(model, align=cfg.align)  # what the worker does with its config
    manifest = loaded.manifest
    assert manifest["classes"] == list(avdigits.LABELS)
    assert manifest["metrics"]["val_accuracy"] > 3 * CHANCE
    assert 0.05 <= manifest["temperature"] <= 20
    training = manifest["training"]
    assert training["train"]["labelled"] > 0 and training["val"]["labelled"] > 0
    assert set(training["train"]["per_class"]) == set(avdigits.LABELS)
    assert training["options"]["seed"] == 0 and training["world_size"] == 1
    # The worker's own predict() on the aligner's windows of the test split agrees with eval's path.
    windows = list(windows_from_messages(read_messages([data / "test"]), cfg.align))
    probs, _mask, problems = predict(loaded, windows, torch.device("cpu"))
    assert probs.shape == (len(windows), 10) and not problems
    assert abs(float(probs.sum(axis=1).mean()) - 1.0) < 1e-4
    ws = load_windows([data / "test"], cfg.align, loaded.prep, classes=list(loaded.classes))
    ours = predict_logits(loaded.model, ws.features).argmax(1).tolist()
    worker = {w.key: int(p.argmax()) for w, p in zip(windows, probs, strict=True)}
    assert [worker[k] for k in ws.keys] == ours


def test_eval_writes_every_report_file(model: Path, data: Path, tmp_path: Path):
    report = tmp_path / "report"
    r = _run([sys.executable, "-m", "streamfuse", "eval", "--model", str(model), "--recordings",
              str(data / "test"), "--report", str(report)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in report.iterdir()) == ["confusion.png", "reliability.png", "report.json",
                                                         "report.md"]
    for png in ("confusion.png", "reliability.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rep = json.loads((report / "report.json").read_text())
    for key in ("accuracy", "macro_f1", "ece", "n_windows", "per_class", "ablation"):
        assert key in rep
    assert rep["accuracy"] > 2 * CHANCE
    assert 0.0 <= rep["ece"] <= 1.0
    assert set(rep["per_class"]) == set(avdigits.LABELS)
    assert set(rep["ablation"]) == {"video", "audio", "text"}
    assert all(set(v) >= {"alone", "removed"} for v in rep["ablation"].values())
    assert rep["n_windows"] == sum(v["support"] for v in rep["per_class"].values())
    # Fused or one present modality right: at least the fused accuracy and each modality's own.
    assert rep["accuracy_any_modality"] >= rep["accuracy"]
    for a in rep["ablation"].values():
        if a["alone_present"] is not None:
            assert rep["accuracy_any_modality"] * rep["n_windows"] >= a["alone_present"] * a["present_windows"] - 1e-6
    assert "| accuracy |" in (report / "report.md").read_text()
    # The data set's segments.csv beside labels.csv: accuracy by what shows each window's label.
    ev = rep["by_evidence"]
    assert set(ev) <= set(avdigits.EVIDENCE) and "camera" in ev
    assert sum(v["n"] for v in ev.values()) == rep["n_windows"]
    n_seen = rep["n_windows"] - rep["n_unobservable"]
    assert rep["n_unobservable"] == ev.get("none", {"n": 0})["n"]
    correct_seen = sum(round(v["accuracy"] * v["n"]) for k, v in ev.items() if k != "none")
    assert rep["accuracy_observable"] == pytest.approx(correct_seen / n_seen)
    assert "## Accuracy by what shows the label" in (report / "report.md").read_text()
    assert "accuracy" in r.stdout


def test_bad_training_options_exit_2_naming_the_flag(data: Path, tmp_path: Path):
    for flag, value in (("--occlude", "1.5"), ("--aux-weight", "-1"), ("--device", "tpu")):
        r = _run([sys.executable, "-m", "streamfuse", "train", "--recordings", str(data), "--out",
                  str(tmp_path / "m"), flag, value], timeout=120)
        assert r.returncode == 2, (flag, r.stderr[-2000:])
        assert flag in r.stderr
        assert not (tmp_path / "m").exists()


def test_bad_labels_exit_2_naming_the_line(data: Path, tmp_path: Path):
    rows = (data / "train" / "labels.csv").read_text().splitlines()
    bad = tmp_path / "labels.csv"
    bad.write_text("\n".join([rows[0], rows[2], rows[1], *rows[3:]]) + "\n")  # line 3 starts before line 2
    r = _run([sys.executable, "-m", "streamfuse", "train", "--recordings", str(data / "train"),
              "--labels", str(bad), "--out", str(tmp_path / "m")])
    assert r.returncode == 2
    assert "labels.csv:3: unsorted" in r.stderr
    assert "Traceback" not in r.stderr


def test_torchrun_two_processes_train_alike(model: Path, data: Path, tmp_path: Path):
    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "ddp"
    r = _run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "streamfuse",
              *_train_args(data, out)])
    assert r.returncode == 0, r.stderr[-3000:]
    from streamfuse.fusion.artifact import load_artifact

    one = load_artifact(model).manifest
    two = load_artifact(out).manifest
    assert two["training"]["world_size"] == 2
    assert two["classes"] == one["classes"] and two["fusion"] == one["fusion"]
    acc1, acc2 = one["metrics"]["val_accuracy"], two["metrics"]["val_accuracy"]
    assert acc2 > 3 * CHANCE
    assert abs(acc1 - acc2) <= 0.25, (acc1, acc2)
