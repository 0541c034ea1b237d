"""``streamfuse eval``: a model artifact on labelled recordings -> metrics and a report.

The artifact is loaded as the daemon loads it (validated against the config's
``[align]``), the windows are made by the same offline aligner with the same
parameters and labelled by the same majority rule as in training
(:mod:`streamfuse.train.dataset`). Probabilities are the calibrated ones
(``logits / temperature``).

Metrics: accuracy, macro-F1, per-class precision / recall / F1, expected
calibration error (15 equal-width confidence bins), the confusion matrix,
accuracy by which modalities were present, and an ablation from the one model
through its presence mask:

- ``alone``: only that modality is given to the model, over **all** windows
  (where it is absent the model has nothing and guesses from its bias): what a
  single-sensor system built from this model would score;
- ``alone_present``: the same over the windows where that modality is present;
- ``removed``: that modality masked out in every window (the others as recorded).

``--report DIR`` writes ``report.json`` (the keys README.md lists and more),
``report.md``, ``confusion.png`` and ``reliability.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from streamfuse.config import AlignConfig, Config
from streamfuse.datasets import avdigits
from streamfuse.fusion.features import MODALITIES
from streamfuse.train import metrics
from streamfuse.train.dataset import DataError, WindowSet
from streamfuse.train.labels import LabelError


def presence_pattern(mask_row: list[bool]) -> str:
    names = [m for m, on in zip(MODALITIES, mask_row, strict=True) if on]
    return "+".join(names) if names else "none"


@torch.no_grad()
def evaluate(model: Any, ws: WindowSet, *, device: torch.device | str = "cpu",
             segments: dict[str, list[avdigits.SegmentRow]] | None = None,
             align: AlignConfig | None = None) -> dict[str, Any]:
    """All metrics of ``model`` (a :class:`FusionModel` with its temperature) on ``ws``;
    with avdigits ``segments`` (and the ``align`` that made the windows) also accuracy by
    what shows each window's label (:func:`by_evidence`)."""
    from streamfuse.train.loop import predict_logits

    feats = ws.features.to(device)
    y = ws.y.to(device)
    t = float(model.temperature)
    classes = list(model.cfg.classes)

    def probs(mask: torch.Tensor | None = None) -> torch.Tensor:
        return torch.softmax(predict_logits(model, feats, mask=mask) / t, dim=1)

    p = probs()
    pred = p.argmax(1)
    report = metrics.summary(p.cpu(), y.cpu(), classes)
    report["classes"] = classes
    report["reliability"] = metrics.reliability(p.cpu(), y.cpu())
    mask = feats.mask.bool()
    ablation: dict[str, dict[str, Any]] = {}
    any_right = pred == y  # the fused prediction, or one modality's alone, is right
    for m in model.cfg.modalities:
        col = MODALITIES.index(m)
        only = torch.zeros_like(mask)
        only[:, col] = True
        alone_pred = probs(mask & only).argmax(1)
        removed_pred = probs(mask & ~only).argmax(1)
        present = mask[:, col]
        any_right |= (alone_pred == y) & present
        ablation[m] = {
            "alone": metrics.accuracy(alone_pred, y),
            "alone_present": metrics.accuracy(alone_pred[present], y[present]) if bool(present.any()) else None,
            "removed": metrics.accuracy(removed_pred, y),
            "present_windows": int(present.sum()),
        }
    report["ablation"] = ablation
    # The share of windows that the fused model or one present modality alone gets right: what
    # a perfect choice, per window, of which of these answers to trust would reach. Beyond it
    # lie only windows that no modality gets right alone (docs/results.md, "the oracle bound").
    report["accuracy_any_modality"] = float(any_right.float().mean()) if any_right.numel() else 0.0
    patterns: dict[str, dict[str, Any]] = {}
    for row, ok in zip(mask.cpu().tolist(), (pred == y).cpu().tolist(), strict=True):
        d = patterns.setdefault(presence_pattern(row), {"n": 0, "correct": 0})
        d["n"] += 1
        d["correct"] += int(ok)
    report["by_presence"] = {k: {"n": v["n"], "accuracy": v["correct"] / v["n"]}
                             for k, v in sorted(patterns.items(), key=lambda kv: -kv[1]["n"])}
    if segments is not None and align is not None:
        report.update(by_evidence((pred == y).cpu().tolist(), ws.keys, segments, align, ws.classes, ws.y.tolist()))
    return report


def by_evidence(correct: list[bool], keys: list[tuple[str, int]], segments: dict[str, list[avdigits.SegmentRow]],
                align: AlignConfig, classes: list[str], y: list[int]) -> dict[str, Any]:
    """Accuracy by what in each window shows its label (avdigits ``segments.csv``, see
    :func:`streamfuse.datasets.avdigits.window_evidence`), and the accuracy over the
    windows where something does (``accuracy_observable``)."""
    window_ns, context_ns = align.window_ms * 1_000_000, align.text_context_ms * 1_000_000
    groups: dict[str, list[int]] = {}
    for ok, (source, start), label in zip(correct, keys, y, strict=True):
        kind = avdigits.window_evidence(segments.get(source, []), start, window_ns, context_ns, classes[label])
        groups.setdefault(kind, [0, 0])
        groups[kind][0] += 1
        groups[kind][1] += int(ok)
    seen = [v for k, v in groups.items() if k != "none"]
    n_seen = sum(v[0] for v in seen)
    return {"by_evidence": {k: {"n": groups[k][0], "accuracy": groups[k][1] / groups[k][0]}
                            for k in avdigits.EVIDENCE if k in groups},
            "accuracy_observable": sum(v[1] for v in seen) / n_seen if n_seen else None,
            "n_unobservable": groups.get("none", [0])[0]}


# ----------------------------------------------------------------------------- report files


def write_report(directory: str | Path, report: dict[str, Any]) -> list[Path]:
    """``report.json``, ``report.md``, ``confusion.png``, ``reliability.png`` under ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths = [d / "report.json", d / "report.md", d / "confusion.png", d / "reliability.png"]
    paths[0].write_text(json.dumps(report, indent=1) + "\n")
    paths[1].write_text(markdown(report))
    plot_confusion(paths[2], report["confusion"], report["classes"])
    plot_reliability(paths[3], report["reliability"], report["ece"])
    return paths


def markdown(r: dict[str, Any]) -> str:
    model = r.get("model", {})
    lines = [f"# Evaluation of model `{model.get('id', '?')}`", ""]
    if model:
        lines += [f"Fusion `{model.get('fusion')}`, modalities {', '.join(model.get('modalities', []))}, "
                  f"temperature {model.get('temperature', 1.0):.3f}.", ""]
    if r.get("data"):
        lines += [f"Data: {', '.join(r['data'].get('recordings', []))} "
                  f"({r['data'].get('windows', 0)} windows, {r['n_windows']} labelled).", ""]
    lines += ["| metric | value |", "|---|---|",
              f"| accuracy | {r['accuracy']:.4f} |", f"| macro-F1 | {r['macro_f1']:.4f} |",
              f"| ECE (15 bins) | {r['ece']:.4f} |", f"| windows | {r['n_windows']} |", ""]
    lines += ["## Ablation (one model, presence mask)", "",
              "| modality | alone (all windows) | alone (where present) | removed | present in |",
              "|---|---|---|---|---|"]
    for m, a in r["ablation"].items():
        ap = "-" if a["alone_present"] is None else f"{a['alone_present']:.4f}"
        lines.append(f"| {m} | {a['alone']:.4f} | {ap} | {a['removed']:.4f} | {a['present_windows']} |")
    if r.get("accuracy_any_modality") is not None:
        lines += ["", f"Windows where the fused model or one modality alone is right: "
                      f"{r['accuracy_any_modality']:.4f} (a perfect choice per window of which answer to trust would reach this)."]
    lines += ["", "## Accuracy by the modalities present", "", "| present | windows | accuracy |", "|---|---|---|"]
    for k, v in r["by_presence"].items():
        lines.append(f"| {k} | {v['n']} | {v['accuracy']:.4f} |")
    if r.get("by_evidence"):
        lines += ["", "## Accuracy by what shows the label (avdigits segments.csv)", "",
                  "| evidence in the window | windows | accuracy |", "|---|---|---|"]
        for k, v in r["by_evidence"].items():
            lines.append(f"| {k} | {v['n']} | {v['accuracy']:.4f} |")
        if r.get("accuracy_observable") is not None:
            lines += ["", f"Accuracy over the windows where some modality shows the label: "
                          f"{r['accuracy_observable']:.4f} ({r['n_unobservable']} windows show it nowhere)."]
    lines += ["", "## Per class", "", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for c, v in r["per_class"].items():
        lines.append(f"| {c} | {v['precision']:.4f} | {v['recall']:.4f} | {v['f1']:.4f} | {v['support']} |")
    lines += ["", "![confusion matrix](confusion.png) ![reliability diagram](reliability.png)", ""]
    return "\n".join(lines)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(path: Path, conf: list[list[int]], classes: list[str]) -> None:
    plt = _pyplot()
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n), dpi=100)
    ax.imshow(conf, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = max((max(row) for row in conf), default=0)
    for i in range(n):
        for j in range(n):
            if conf[i][j]:
                ax.text(j, i, str(conf[i][j]), ha="center", va="center", fontsize=8,
                        color="white" if conf[i][j] > peak / 2 else "black")
    ax.set_title("confusion matrix")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_reliability(path: Path, rel: dict[str, list[float]], ece: float) -> None:
    plt = _pyplot()
    edges = rel["edges"]
    centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
    width = edges[1] - edges[0]
    fig, (ax, axn) = plt.subplots(2, 1, figsize=(5, 6), dpi=100, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    used = [i for i, c in enumerate(rel["count"]) if c]
    ax.bar([centers[i] for i in used], [rel["accuracy"][i] for i in used], width=width * 0.9,
           edgecolor="black", label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.plot([centers[i] for i in used], [rel["confidence"][i] for i in used], "o", color="red",
            label="mean confidence in bin")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"reliability (ECE {ece:.4f}, 15 bins)")
    ax.legend(loc="upper left")
    axn.bar(centers, rel["count"], width=width * 0.9, color="grey")
    axn.set_yscale("symlog")
    axn.set_xlabel("confidence")
    axn.set_ylabel("windows")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ----------------------------------------------------------------------------- command


def cli(args: argparse.Namespace, cfg: Config) -> int:
    """``streamfuse eval``: exit 2 for bad labels/data/model, 0 with the summary on stdout."""
    from streamfuse.cli import UsageError, check_output_dir
    from streamfuse.fusion.artifact import ArtifactError, load_artifact
    from streamfuse.train.dataset import load_windows
    from streamfuse.train.loop import _pick_device

    if args.report:
        check_output_dir(args.report, "--report")
    device = _pick_device(args.device)
    try:
        loaded = load_artifact(args.model, align=cfg.align, device=device)
        ws = load_windows(args.recordings, cfg.align, loaded.prep, labels=args.labels,
                          classes=list(loaded.model.cfg.classes), progress=True)
    except (ArtifactError, DataError, LabelError) as e:
        raise UsageError(str(e)) from None
    try:
        segment_files = avdigits.find_segment_files(list(args.recordings))
        segments = avdigits.read_segments(segment_files) if segment_files else None
    except avdigits.SegmentsError as e:
        raise UsageError(str(e)) from None
    report = evaluate(loaded.model, ws, device=device, segments=segments, align=cfg.align)
    report["model"] = {"id": loaded.model_id, "path": str(args.model), "fusion": loaded.model.cfg.fusion,
                       "modalities": list(loaded.model.cfg.modalities), "temperature": float(loaded.model.temperature)}
    report["data"] = ws.summary
    print(f"{args.model} on {len(ws)} windows: accuracy {report['accuracy']:.4f}, macro-F1 "
          f"{report['macro_f1']:.4f}, ECE {report['ece']:.4f}")
    if "by_evidence" in report:
        print("  by evidence: " + ", ".join(f"{k} {v['accuracy']:.4f} ({v['n']})"
                                            for k, v in report["by_evidence"].items()))
    for m, a in report["ablation"].items():
        print(f"  {m:5s} alone {a['alone']:.4f}  removed {a['removed']:.4f}")
    if args.report:
        for p in write_report(args.report, report):
            print(p, file=sys.stderr)
    return 0
