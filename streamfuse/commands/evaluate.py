"""``streamfuse eval``: a model artifact on labelled recordings -> metrics and a report.

The generic evaluator (:mod:`streamfuse.train.evaluate`) knows no data set; a benchmark's
own view of the results (avdigits: by what shows each window's label) is plugged in here.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from streamfuse.config import Config
from streamfuse.datasets import avdigits
from streamfuse.train.dataset import DataError
from streamfuse.train.evaluate import Breakdown, evaluate, write_report
from streamfuse.train.labels import LabelError
from streamfuse.usage import UsageError, check_output_dir


def breakdowns(recordings: list[str], cfg: Config) -> list[Breakdown]:
    """The data sets' views that apply to ``recordings`` (exit 2 for an unreadable one)."""
    try:
        evidence = avdigits.EvidenceBreakdown.for_recordings(
            recordings, window_ms=cfg.align.window_ms, text_context_ms=cfg.align.text_context_ms)
    except avdigits.SegmentsError as e:
        raise UsageError(str(e)) from None
    return [evidence] if evidence is not None else []


def run(args: argparse.Namespace, cfg: Config) -> int:
    """Exit 2 for bad labels, data or model; 0 with the summary on stdout."""
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
    views = breakdowns(list(args.recordings), cfg)
    report = evaluate(loaded.model, ws, device=device, breakdowns=views)
    report["model"] = {"id": loaded.model_id, "path": str(args.model),
                       "fusion": loaded.model.cfg.fusion,
                       "modalities": list(loaded.model.cfg.modalities),
                       "temperature": float(loaded.model.temperature)}
    report["data"] = ws.summary
    _print_summary(str(args.model), len(ws), report)
    if args.report:
        for p in write_report(args.report, report, views):
            print(p, file=sys.stderr)
    return 0


def _print_summary(model: str, n: int, report: dict[str, Any]) -> None:
    print(f"{model} on {n} windows: accuracy {report['accuracy']:.4f}, macro-F1 "
          f"{report['macro_f1']:.4f}, ECE {report['ece']:.4f}")
    if "by_evidence" in report:
        print("  by evidence: " + ", ".join(f"{k} {v['accuracy']:.4f} ({v['n']})"
                                            for k, v in report["by_evidence"].items()))
    for m, a in report["ablation"].items():
        print(f"  {m:5s} alone {a['alone']:.4f}  removed {a['removed']:.4f}")
