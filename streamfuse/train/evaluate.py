"""A model on labelled windows -> metrics and a report (``streamfuse eval``: commands/evaluate.py).

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

A data set can add its own view of the results through a :class:`Breakdown` (avdigits:
accuracy by what in each window shows its label); this module knows none of them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from streamfuse.fusion.features import MODALITIES
from streamfuse.train import metrics
from streamfuse.train.dataset import WindowSet


class Breakdown(Protocol):
    """A data set's own view of the results, added to the report by :func:`evaluate`."""

    def compute(self, correct: list[bool], keys: list[tuple[str, int]], classes: list[str],
                y: list[int]) -> dict[str, Any]:
        """Report keys from whether each window (``keys``: ``(source, start_ns)``, true label
        index ``y``) was classified right."""
        ...

    def markdown(self, report: dict[str, Any]) -> list[str]:
        """The lines of ``report.md`` that show what :meth:`compute` added."""
        ...


def presence_pattern(mask_row: list[bool]) -> str:
    names = [m for m, on in zip(MODALITIES, mask_row, strict=True) if on]
    return "+".join(names) if names else "none"


@torch.no_grad()
def evaluate(model: Any, ws: WindowSet, *, device: torch.device | str = "cpu",
             breakdowns: Sequence[Breakdown] = ()) -> dict[str, Any]:
    """All metrics of ``model`` (a :class:`FusionModel` with its temperature) on ``ws``,
    plus what each of ``breakdowns`` (a data set's own views of the results) adds."""
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
            "alone_present": (metrics.accuracy(alone_pred[present], y[present])
                              if bool(present.any()) else None),
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
    correct = (pred == y).cpu().tolist()
    for b in breakdowns:
        report.update(b.compute(correct, ws.keys, ws.classes, ws.y.tolist()))
    return report


# ----------------------------------------------------------------------------- report files


def write_report(directory: str | Path, report: dict[str, Any],
                 breakdowns: Sequence[Breakdown] = ()) -> list[Path]:
    """``report.json``, ``report.md``, ``confusion.png``, ``reliability.png`` under
    ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths = [d / "report.json", d / "report.md", d / "confusion.png", d / "reliability.png"]
    paths[0].write_text(json.dumps(report, indent=1) + "\n")
    paths[1].write_text(markdown(report, breakdowns))
    plot_confusion(paths[2], report["confusion"], report["classes"])
    plot_reliability(paths[3], report["reliability"], report["ece"])
    return paths


def markdown(r: dict[str, Any], breakdowns: Sequence[Breakdown] = ()) -> str:
    model = r.get("model", {})
    lines = [f"# Evaluation of model `{model.get('id', '?')}`", ""]
    if model:
        lines += [f"Fusion `{model.get('fusion')}`, "
                  f"modalities {', '.join(model.get('modalities', []))}, "
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
        lines.append(f"| {m} | {a['alone']:.4f} | {ap} | {a['removed']:.4f} | "
                     f"{a['present_windows']} |")
    if r.get("accuracy_any_modality") is not None:
        lines += ["", f"Windows where the fused model or one modality alone is right: "
                      f"{r['accuracy_any_modality']:.4f} (a perfect choice per window of which "
                      "answer to trust would reach this)."]
    lines += ["", "## Accuracy by the modalities present", "",
              "| present | windows | accuracy |", "|---|---|---|"]
    for k, v in r["by_presence"].items():
        lines.append(f"| {k} | {v['n']} | {v['accuracy']:.4f} |")
    for b in breakdowns:
        lines += b.markdown(r)
    lines += ["", "## Per class", "",
              "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for c, v in r["per_class"].items():
        lines.append(f"| {c} | {v['precision']:.4f} | {v['recall']:.4f} | {v['f1']:.4f} | "
                     f"{v['support']} |")
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
    fig, (ax, axn) = plt.subplots(2, 1, figsize=(5, 6), dpi=100,
                                  gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
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
