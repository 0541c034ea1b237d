"""Leave-one-group-out cross-validation: how a recipe does on a group (a speaker) it never met.

One labelled window set (:class:`~streamfuse.train.dataset.WindowSet`, every split of a data
set pooled) and, per window, the group it belongs to (a column of a per-segment table such as
avdigits' ``segments.csv``: the speaker). :func:`leave_one_group_out` makes one fold per
group: that group's windows are the test set, the next group (in sorted order, rotating) is
the validation set (early stopping and the temperature), every other group trains. Windows
that span two groups (a window across the boundary of two segments by two speakers) belong
to no fold. ``disjoint`` values (avdigits: the handwriting image index) may not be shared
between a fold's training and test windows: training windows that show a value some test
window shows are dropped from that fold's training set. ``train_only`` groups (avdigits'
synthetic voices, ``espeak:...``) have no fold and never validate: they train in every fold.

:func:`crossvalidate` trains one model per fold (:func:`streamfuse.train.loop.train`, the
same recipe as ``streamfuse train``) and scores it on the held-out group
(:func:`streamfuse.train.evaluate.evaluate`): fused accuracy, ECE, each modality alone,
and one modality alone over chosen windows (``focus``, given by the data set: avdigits'
audio over the windows with at least 150 ms of the spoken digit, and over those with all of
it). The
report holds the folds, their mean and their worst (:func:`summarise`), as JSON and as a
markdown table (:func:`markdown`).

This module knows no data set: the groups, the disjoint values and the focus windows come
from the caller (``streamfuse crossval``: commands/crossval.py).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from streamfuse.fusion.features import MODALITIES, Preprocessing
from streamfuse.progress import Progress
from streamfuse.train.dataset import DataError, WindowSet, select_features
from streamfuse.train.labels import read_rows_by_source


@dataclass(frozen=True)
class Fold:
    """Row indices into the pooled window set: ``test`` is group ``group``, ``val`` is group
    ``val_group``, ``train`` the other groups' rows (less ``dropped`` rows that shared a
    ``disjoint`` value with the test rows)."""

    group: str
    val_group: str
    train: tuple[int, ...]
    val: tuple[int, ...]
    test: tuple[int, ...]
    dropped: int = 0


def leave_one_group_out(groups: Sequence[str | None],
                        disjoint: Sequence[Iterable[str]] | None = None,
                        train_only: Collection[str] = ()) -> list[Fold]:
    """One :class:`Fold` per distinct group (sorted) not in ``train_only``: test = that group,
    validation = the next such group in sorted order (the first after the last), training =
    the rest, ``train_only`` groups included. Rows whose group is None (spanning several
    groups, or unknown) are in no fold. With ``disjoint`` (per row, the values it shows),
    training rows sharing a value with any test row are dropped. Deterministic: the same
    input gives the same folds. Needs two groups to test and three groups in all."""
    present = sorted({g for g in groups if g is not None})
    names = [g for g in present if g not in train_only]
    if len(names) < 2 or len(present) < 3:
        raise DataError(f"cross-validation needs at least 3 groups (test, validation, "
                        f"training), 2 of them not training-only, found {len(present)}: "
                        f"{', '.join(present) or 'none'}"
                        + (f" ({len(present) - len(names)} training-only)" if train_only
                           else ""))
    rows: dict[str, list[int]] = {g: [] for g in present}
    for i, g in enumerate(groups):
        if g is not None:
            rows[g].append(i)
    folds = []
    for k, g in enumerate(names):
        val_g = names[(k + 1) % len(names)]
        train = [i for h in present if h not in (g, val_g) for i in rows[h]]
        dropped = 0
        if disjoint is not None:
            shown = {v for i in rows[g] for v in disjoint[i]}
            kept = [i for i in train if not shown.intersection(disjoint[i])]
            dropped, train = len(train) - len(kept), kept
        folds.append(Fold(g, val_g, tuple(sorted(train)), tuple(rows[val_g]), tuple(rows[g]),
                          dropped))
    return folds


# ----------------------------------------------------------------------------- segment tables


@dataclass(frozen=True)
class SegmentSpan:
    """One row of a per-segment table: ``[start, end)`` absolute ``t_ns`` and its columns."""

    start: int
    end: int
    values: dict[str, str]


def read_segment_table(paths: Sequence[Path]) -> dict[str, list[SegmentSpan]]:
    """CSV files with ``source``, ``start``, ``end`` (absolute ``t_ns``) and any other columns
    (avdigits' ``segments.csv``), as spans per source in time order. Raises
    :class:`DataError` naming the file and line of a row it cannot read."""
    return read_rows_by_source(
        paths, lambda r: SegmentSpan(int(r["start"]), int(r["end"]), dict(r)), error=DataError)


def window_values(table: dict[str, list[SegmentSpan]], keys: Sequence[tuple[str, int]],
                  window_ns: int, column: str) -> list[frozenset[str]]:
    """Per window (``keys``: ``(source, start_ns)``), the values of ``column`` over the
    segments it overlaps (empty values left out). Raises :class:`DataError` for a column
    the table does not have."""
    if any(column not in s.values for spans in table.values() for s in spans[:1]):
        have = sorted(next(iter(table.values()))[0].values)
        raise DataError(f"no column {column!r} in the segment table (it has {', '.join(have)})")
    out = []
    for source, start in keys:
        end = start + window_ns
        out.append(frozenset(s.values[column] for s in _overlapping(table.get(source, []),
                                                                    start, end)
                             if s.values[column] != ""))
    return out


def _overlapping(spans: list[SegmentSpan], start: int, end: int) -> list[SegmentSpan]:
    import bisect

    i = max(0, bisect.bisect_right([s.start for s in spans], start) - 1)
    out = []
    for s in spans[i:]:
        if s.start >= end:
            break
        if s.end > start:
            out.append(s)
    return out


def single_group(values: Sequence[frozenset[str]]) -> list[str | None]:
    """The one group of each window, None where it has none or several."""
    return [next(iter(v)) if len(v) == 1 else None for v in values]


# ----------------------------------------------------------------------------- running


def subset(ws: WindowSet, rows: Sequence[int]) -> WindowSet:
    """The windows ``rows`` of ``ws`` (summary counts for them)."""
    idx = torch.tensor(list(rows), dtype=torch.int64)
    y = ws.y[idx]
    feats = select_features(ws.features, idx)
    summary = dict(ws.summary, labelled=len(rows),
                   per_class={c: int((y == i).sum()) for i, c in enumerate(ws.classes)},
                   present={m: int(feats.mask[:, j].sum()) for j, m in enumerate(MODALITIES)})
    return WindowSet(feats, y, [ws.keys[i] for i in rows], ws.classes, summary)


def crossvalidate(ws: WindowSet, folds: Sequence[Fold], prep: Preprocessing, opts: Any, *,
                  focus: Mapping[str, tuple[str, Sequence[bool]]] | None = None,
                  quiet: bool = False) -> dict[str, Any]:
    """Train one model per fold with ``opts`` (:class:`~streamfuse.train.loop.TrainOptions`)
    and score it on the fold's test windows; the report (see module docstring)."""
    from streamfuse.train.loop import train

    results = []
    with Progress("cross-validation", len(folds), unit="fold", enabled=not quiet) as bar:
        for fold in folds:
            bar.set_note(f"testing on {fold.group}")
            train_set, val_set = subset(ws, fold.train), subset(ws, fold.val)
            test_set = subset(ws, fold.test)
            model, result = train(train_set, val_set, prep, opts, quiet=quiet)
            fold_focus = {name: (m, [bool(v[i]) for i in fold.test])
                          for name, (m, v) in (focus or {}).items()}
            r = score_fold(model, test_set, fold_focus)
            r.update(group=fold.group, val_group=fold.val_group, n_train=len(fold.train),
                     n_val=len(fold.val), n_test=len(fold.test), dropped_train=fold.dropped,
                     val_accuracy=result["val_accuracy"], val_ece=result["val_ece"],
                     best_epoch=result["best_epoch"], epochs_run=result["epochs_run"],
                     train_seconds=result["train_seconds"],
                     temperature=result["temperature"])
            results.append(r)
            bar.write(fold_line(r))
            bar.update()
    return {"folds": results, **summarise(results),
            "options": {k: list(v) if isinstance(v, tuple) else v
                        for k, v in asdict(opts).items()}}


def score_fold(model: Any, test_set: WindowSet,
               focus: Mapping[str, tuple[str, list[bool]]]) -> dict[str, Any]:
    """Fused accuracy, ECE, each modality alone (all windows, and where present), and for
    each ``focus`` name its modality alone over its windows, of ``model`` on ``test_set``."""
    from streamfuse.train import metrics
    from streamfuse.train.evaluate import evaluate
    from streamfuse.train.loop import predict_logits

    rep = evaluate(model, test_set)
    alone = {m: a["alone"] for m, a in rep["ablation"].items()}
    best = max(alone, key=lambda m: alone[m]) if alone else None
    r: dict[str, Any] = {"accuracy": rep["accuracy"], "macro_f1": rep["macro_f1"],
                         "ece": rep["ece"], "alone": alone,
                         "alone_present": {m: a["alone_present"]
                                           for m, a in rep["ablation"].items()},
                         "best_single": best, "best_single_accuracy": alone.get(best or "", 0.0),
                         "accuracy_any_modality": rep["accuracy_any_modality"], "focus": {}}
    for name, (m, rows) in focus.items():
        if m not in model.cfg.modalities:
            continue
        idx = torch.tensor([i for i, on in enumerate(rows) if on], dtype=torch.int64)
        if idx.numel() == 0:
            r["focus"][name] = {"n": 0, "accuracy": None}
            continue
        part = select_features(test_set.features, idx)
        only = torch.zeros_like(part.mask)
        only[:, MODALITIES.index(m)] = True
        pred = predict_logits(model, part, mask=part.mask & only).argmax(1)
        r["focus"][name] = {"n": int(idx.numel()),
                         "accuracy": metrics.accuracy(pred, test_set.y[idx])}
    return r


SUMMARY_KEYS = ("accuracy", "ece", "best_single_accuracy")


def summarise(folds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and worst (lowest accuracy, highest ECE) over the folds, and on how many folds the
    fused model beat its best single modality."""
    def vals(key: str) -> list[float]:
        return [float(f[key]) for f in folds]

    mean: dict[str, Any] = {k: sum(vals(k)) / len(folds) for k in SUMMARY_KEYS}
    worst: dict[str, Any] = {"accuracy": min(vals("accuracy")), "ece": max(vals("ece")),
                             "best_single_accuracy": min(vals("best_single_accuracy"))}
    mean["focus"], worst["focus"] = {}, {}
    for name in _focus_names(folds):
        accs = [f["focus"][name]["accuracy"] for f in folds
                if name in f["focus"] and f["focus"][name]["accuracy"] is not None]
        if accs:
            mean["focus"][name] = sum(accs) / len(accs)
            worst["focus"][name] = min(accs)
    beats = sum(f["accuracy"] > f["best_single_accuracy"] for f in folds)
    return {"mean": mean, "worst": worst, "fused_beats_best_single": f"{beats}/{len(folds)}"}


def _focus_names(folds: Sequence[dict[str, Any]]) -> list[str]:
    """The focus names of the folds, in their first fold's order."""
    names: list[str] = []
    for f in folds:
        names += [n for n in f["focus"] if n not in names]
    return names


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def fold_line(r: dict[str, Any]) -> str:
    focus = ", ".join(f"{name} {_pct(v['accuracy'])} % ({v['n']})"
                      for name, v in r["focus"].items())
    return (f"fold {r['group']}: fused {_pct(r['accuracy'])} %, ECE {_pct(r['ece'])} %, best "
            f"single {r['best_single']} {_pct(r['best_single_accuracy'])} %"
            + (f", {focus}" if focus else "") + f", {r['train_seconds']:.0f} s training")


def markdown(report: dict[str, Any]) -> str:
    """The per-fold table with its mean and worst rows."""
    folds = report["folds"]
    focus = _focus_names(folds)
    head = ["test group", "validation", "train / val / test windows", "fused %", "ECE %",
            "best single %"] + [f"{name} %" for name in focus] + \
        ["val acc %", "best epoch", "training s"]
    lines = [f"# Leave-one-{report.get('column', 'group')}-out cross-validation", ""]
    if report.get("command"):
        lines += [f"`{report['command']}`", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for f in folds:
        cells = [f["group"], f["val_group"],
                 f"{f['n_train']} / {f['n_val']} / {f['n_test']}"
                 + (f" ({f['dropped_train']} dropped)" if f["dropped_train"] else ""),
                 _pct(f["accuracy"]), _pct(f["ece"]),
                 f"{_pct(f['best_single_accuracy'])} ({f['best_single']})"]
        cells += [f"{_pct(f['focus'][m]['accuracy'])} ({f['focus'][m]['n']})"
                  if m in f["focus"] else "-" for m in focus]
        cells += [_pct(f["val_accuracy"]), f"{f['best_epoch']}/{f['epochs_run']}",
                  f"{f['train_seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    for name in ("mean", "worst"):
        s = report[name]
        cells = [f"**{name}**", "", "", _pct(s["accuracy"]), _pct(s["ece"]),
                 _pct(s["best_single_accuracy"])]
        cells += [_pct(s.get("focus", {}).get(name)) for name in focus] + ["", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Fused above the best single modality in "
                  f"{report['fused_beats_best_single']} folds."]
    if report.get("train_only"):
        lines += ["", f"Training only, in every fold (never tested or validating): "
                      f"{', '.join(report['train_only'])}."]
    lines.append("")
    return "\n".join(lines)


def write_report(directory: str | Path, report: dict[str, Any]) -> list[Path]:
    """``crossval.json`` and ``crossval.md`` under ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths = [d / "crossval.json", d / "crossval.md"]
    paths[0].write_text(json.dumps(report, indent=1) + "\n")
    paths[1].write_text(markdown(report))
    return paths
