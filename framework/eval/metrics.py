"""Geospatial pixel reasoning metrics, exactly as the benchmark defines them.

Per sample i: I_i = |P∧G|, U_i = |P∨G|; iou_i = I_i/U_i, and 1 when U_i = 0 (empty target predicted empty).
gIoU = mean_i iou_i; cIoU = Σ I_i / Σ U_i; Pr@t = share of samples with iou_i > t (strict).
The counts are exact integers per sample, kept with the sample's id: under DDP, the distributed sampler's
padding repeats samples, and a repeated id is counted once. Masks of different sizes (each image at its native
resolution) go in one ``update`` each.

Several targets per question (``TargetMetrics``, as SegEarth-R2 evaluates: per ground-truth mask): the predicted
targets of a sample are matched one-to-one to its ground-truth instances by the largest total IoU (Hungarian);
``target_giou`` is the mean over every ground-truth instance of the split of its matched IoU (0 when unmatched),
``target_count_acc`` the share of samples with as many predicted targets as instances.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torchmetrics import Metric

PR_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def sample_counts(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> dict:
    """Per-sample integer counts of boolean masks [B,H,W]: intersection, union, target and pred areas, and the
    area of the valid (non-padding) region."""
    pred, target = pred.bool(), target.bool()
    if valid is None:
        valid = torch.ones_like(target)
    dims = tuple(range(1, pred.ndim))
    return {
        "inter": (pred & target).sum(dims).long(),
        "union": (pred | target).sum(dims).long(),
        "target_area": target.sum(dims).long(),
        "pred_area": pred.sum(dims).long(),
        "valid_area": valid.bool().sum(dims).long(),
    }


def iou_per_sample(inter: torch.Tensor, union: torch.Tensor) -> torch.Tensor:
    """iou_i = I_i/U_i, and exactly 1 when U_i = 0."""
    inter, union = inter.double(), union.double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def summarize(inter: torch.Tensor, union: torch.Tensor) -> dict[str, float]:
    """gIoU, cIoU and Pr@t from per-sample counts."""
    iou = iou_per_sample(inter, union)
    total_union = union.sum().double()
    out = {
        "giou": iou.mean().item() if len(iou) else float("nan"),
        "ciou": (inter.sum().double() / total_union).item() if total_union > 0 else float("nan"),
    }
    for t in PR_THRESHOLDS:
        out[f"pr_{t:.1f}"] = (iou > t).double().mean().item() if len(iou) else float("nan")
    out["n"] = int(len(iou))
    return out


def first_per_id(metric: Metric, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The per-sample states ``names`` of ``metric`` (lists of tensors, or tensors once synced; ``ids`` first)
    concatenated, sorted by id, each id kept once (DDP padding repeats samples)."""
    data = {}
    for name in names:
        value = getattr(metric, name)
        if isinstance(value, list):
            value = torch.cat(value) if value else torch.zeros(0, dtype=torch.long, device=metric.device)
        data[name] = value
    order = torch.argsort(data["ids"], stable=True)
    first = torch.ones_like(order, dtype=torch.bool)
    first[1:] = data["ids"][order][1:] != data["ids"][order][:-1]
    return {name: value[order[first]] for name, value in data.items()}


class ReasoningSegMetrics(Metric):
    """gIoU / cIoU / Pr@t, plus the trivial floors and empty-target accuracy of the same samples.

    ``update(pred [B,H,W] bool, target [B,H,W], ids [B] long, valid [B,H,W] | None)``; ``compute()`` returns a
    dict of floats: giou, ciou, pr_0.5…pr_0.9, n, n_empty, n_acc and t_acc (as GSVA: the share of empty-target
    samples answered "no target", i.e. with an empty mask, and of the others answered with a mask), and
    floor_empty_* / floor_full_* (always predict nothing / the whole valid image).
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("ids", "inter", "union", "target_area", "pred_area", "valid_area"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self, pred: torch.Tensor, target: torch.Tensor, ids: torch.Tensor, valid: torch.Tensor | None = None
    ) -> None:
        counts = sample_counts(pred, target, valid)
        self.ids.append(ids.long().reshape(-1))
        for key, value in counts.items():
            getattr(self, key).append(value)

    def _gathered(self) -> dict[str, torch.Tensor]:
        return first_per_id(self, ("ids", "inter", "union", "target_area", "pred_area", "valid_area"))

    def compute(self) -> dict[str, float]:
        d = self._gathered()
        out = summarize(d["inter"], d["union"])
        empty = d["target_area"] == 0
        answered = d["pred_area"] > 0
        out["n_empty"] = int(empty.sum())
        out["n_acc"] = (~answered[empty]).double().mean().item() if empty.any() else float("nan")
        out["t_acc"] = answered[~empty].double().mean().item() if (~empty).any() else float("nan")
        zeros = torch.zeros_like(d["inter"])
        for prefix, (inter, union) in {
            "floor_empty": (zeros, d["target_area"]),
            "floor_full": (d["target_area"], d["valid_area"]),
        }.items():
            floor = summarize(inter, union)
            out[f"{prefix}_giou"] = floor["giou"]
            out[f"{prefix}_ciou"] = floor["ciou"] if not torch.isnan(torch.tensor(floor["ciou"])) else 0.0
            out[f"{prefix}_pr_0.5"] = floor["pr_0.5"]
        # the floors' answers: never a mask (every empty target right), always one (every other target right)
        out["floor_empty_n_acc"], out["floor_empty_t_acc"] = (1.0, 0.0)
        out["floor_full_n_acc"], out["floor_full_t_acc"] = (0.0, 1.0)
        return out

    def per_sample(self) -> dict[str, list]:
        """Per-sample ids, counts and IoU of every process (deduplicated, sorted by id), for results files.
        Under DDP every process must call it (it gathers, as ``compute`` does)."""
        with self.sync_context():
            d = self._gathered()
        iou = iou_per_sample(d["inter"], d["union"])
        return {**{k: v.tolist() for k, v in d.items()}, "iou": iou.tolist()}


def hungarian(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, columns) [min(K,G)] of the one-to-one assignment of least total ``cost`` [K,G] (scipy's)."""
    rows, columns = linear_sum_assignment(cost.detach().float().cpu().numpy())
    return torch.from_numpy(rows.astype(np.int64)), torch.from_numpy(columns.astype(np.int64))


def matched_ious(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Each ground-truth instance's IoU [G] with the prediction matched to it, predictions bool [P,H,W] and instances
    bool [G,H,W] assigned one-to-one by the largest total IoU; 0 for an instance left unmatched (P < G)."""
    ious = torch.zeros(target.shape[0], dtype=torch.float64)
    if pred.shape[0] == 0 or target.shape[0] == 0:
        return ious
    p, t = pred.flatten(1).double(), target.flatten(1).double()
    inter = p @ t.T
    union = p.sum(1, keepdim=True) + t.sum(1)[None] - inter
    iou = (inter / union.clamp(min=1)).cpu()
    rows, columns = hungarian(-iou)
    ious[columns] = iou[rows, columns]
    return ious


class TargetMetrics(Metric):
    """Per-target matched IoU (module docstring). ``update(preds, targets, ids)``: per sample, its predicted target
    masks bool [P_i,H,W] and its ground-truth instances bool [G_i,H,W]; ``compute()``: ``target_giou``,
    ``target_count_acc`` and ``n_targets`` (instances counted); ``per_sample()``: ids, ``targets`` (G_i),
    ``predicted_targets`` (P_i) and ``target_iou_sum`` per sample."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("ids", "targets", "predicted_targets", "target_iou_sum"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, preds: list[torch.Tensor], targets: list[torch.Tensor], ids: torch.Tensor) -> None:
        sums = [float(matched_ious(p, t).sum()) for p, t in zip(preds, targets, strict=True)]
        self.ids.append(ids.long().reshape(-1))
        self.targets.append(torch.tensor([t.shape[0] for t in targets], dtype=torch.long, device=self.device))
        self.predicted_targets.append(torch.tensor([p.shape[0] for p in preds], dtype=torch.long, device=self.device))
        self.target_iou_sum.append(torch.tensor(sums, dtype=torch.float64, device=self.device))

    def _gathered(self) -> dict[str, torch.Tensor]:
        return first_per_id(self, ("ids", "targets", "predicted_targets", "target_iou_sum"))

    def compute(self) -> dict[str, float]:
        d = self._gathered()
        total = int(d["targets"].sum())
        return {
            "target_giou": float(d["target_iou_sum"].sum()) / total if total else float("nan"),
            "target_count_acc": (d["targets"] == d["predicted_targets"]).double().mean().item()
            if len(d["ids"]) else float("nan"),
            "n_targets": total,
        }

    def per_sample(self) -> dict[str, list]:
        """Per-sample ids and counts of every process (deduplicated, sorted by id). Under DDP every process must
        call it."""
        with self.sync_context():
            d = self._gathered()
        return {k: v.tolist() for k, v in d.items()}
