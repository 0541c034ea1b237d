"""Classification metrics on tensors: accuracy, confusion, per-class P/R/F1, ECE.

All functions are pure and take ``probs`` ``(N, C)`` float (rows sum to 1) or
predictions ``(N,)`` int64 and targets ``y`` ``(N,)`` int64 on any device.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

ECE_BINS = 15


def accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float((pred == y).float().mean()) if y.numel() else 0.0


def confusion(pred: torch.Tensor, y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``(C, C)`` int64 counts; row = true class, column = predicted class."""
    idx = y.cpu() * n_classes + pred.cpu()
    return torch.bincount(idx, minlength=n_classes * n_classes).view(n_classes, n_classes)


def per_class(conf: torch.Tensor, classes: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support per class (0 where undefined)."""
    tp = conf.diag().double()
    predicted = conf.sum(dim=0).double()
    support = conf.sum(dim=1).double()
    out = {}
    for i, c in enumerate(classes):
        p = float(tp[i] / predicted[i]) if predicted[i] > 0 else 0.0
        r = float(tp[i] / support[i]) if support[i] > 0 else 0.0
        f1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
        out[c] = {"precision": p, "recall": r, "f1": f1, "support": int(support[i])}
    return out


def macro_f1(conf: torch.Tensor) -> float:
    """Mean F1 over the classes that occur (in truth or predictions)."""
    tp = conf.diag().double()
    predicted = conf.sum(dim=0).double()
    support = conf.sum(dim=1).double()
    seen = (support + predicted) > 0
    f1 = torch.where(seen, 2 * tp / (support + predicted).clamp(min=1), torch.zeros_like(tp))
    return float(f1[seen].mean()) if bool(seen.any()) else 0.0


def reliability(probs: torch.Tensor, y: torch.Tensor,
                bins: int = ECE_BINS) -> dict[str, list[float]]:
    """Per confidence bin (equal width on [0, 1]): count, mean confidence, accuracy."""
    conf, pred = probs.max(dim=1)
    correct = (pred == y).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    # bin i holds confidences in (edges[i], edges[i+1]]; confidence 0 goes to bin 0
    which = torch.clamp(torch.bucketize(conf.double().cpu(), edges, right=False) - 1, 0, bins - 1)
    counts, confs, accs = [], [], []
    for i in range(bins):
        sel = which == i
        n = int(sel.sum())
        counts.append(n)
        confs.append(float(conf.double().cpu()[sel].mean()) if n else 0.0)
        accs.append(float(correct.cpu()[sel].mean()) if n else 0.0)
    return {"edges": edges.tolist(), "count": counts, "confidence": confs, "accuracy": accs}


def ece(probs: torch.Tensor, y: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error: sum over bins of (n_bin / N) * |accuracy - confidence|."""
    r = reliability(probs, y, bins)
    n = max(1, sum(r["count"]))
    rows = zip(r["count"], r["accuracy"], r["confidence"], strict=True)
    return float(sum(c / n * abs(a - m) for c, a, m in rows))


def nll(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float(F.cross_entropy(logits.float(), y)) if y.numel() else 0.0


def fit_temperature(logits: torch.Tensor, y: torch.Tensor, *, max_iter: int = 100) -> float:
    """The temperature T > 0 minimising the NLL of ``logits / T`` (LBFGS on log T).

    Falls back to a grid search if LBFGS does not give a finite answer.
    """
    logits = logits.detach().float().cpu()
    y = y.cpu()
    if y.numel() == 0:
        return 1.0
    log_t = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    if not (t > 0 and t < 1e3 and t == t):
        grid = torch.logspace(-1.5, 1.5, 121)
        losses = torch.stack([F.cross_entropy(logits / g, y) for g in grid])
        t = float(grid[int(losses.argmin())])
    return min(max(t, 0.05), 20.0)


def summary(probs: torch.Tensor, y: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """accuracy, macro_f1, ece, n_windows, per_class and the confusion matrix."""
    pred = probs.argmax(dim=1)
    conf = confusion(pred, y, len(classes))
    return {
        "accuracy": accuracy(pred, y),
        "macro_f1": macro_f1(conf),
        "ece": ece(probs, y),
        "n_windows": int(y.numel()),
        "per_class": per_class(conf, classes),
        "confusion": conf.tolist(),
    }
