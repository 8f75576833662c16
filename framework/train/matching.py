"""Several targets per question: the target queries matched one-to-one to the ground-truth instances (Hungarian, as
Mask2Former and SegEarth-R2), and the loss of the matched masks and of every query's objectness.

Cost of query k for instance g, at the target masks' resolution (instances area-pooled to it, so a pixel's target is
the share of it covered): ``mask_cost`` (BCE + Dice, each weighted 5 as Mask2Former) minus ``score_cost`` times the
query's objectness probability (2). The assignment is scipy's ``linear_sum_assignment`` on that K x G matrix, with
at most min(K, G) pairs: instances beyond K stay unmatched (their pixels are still in the union's loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from framework.eval.metrics import hungarian

MASK_COST = 5.0
SCORE_COST = 2.0


def instance_masks(ids: torch.Tensor) -> torch.Tensor:
    """Instance-id map [H,W] (0 = none, 1..G) -> bool [G,H,W], instance g at row g - 1 (G = the largest id)."""
    count = int(ids.max()) if ids.numel() else 0
    return ids[None] == torch.arange(1, count + 1, device=ids.device, dtype=ids.dtype)[:, None, None]


def pooled_instances(ids: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Instance-id map [H,W] -> float [G,h,w]: each instance's covered share of every cell of an h x w grid."""
    masks = instance_masks(ids).float()
    if masks.shape[0] == 0:
        return masks.new_zeros(0, *size)
    return F.adaptive_avg_pool2d(masks[None], size)[0]


def match_cost(logits: torch.Tensor, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cost [K,G] of predicting instance g (``targets`` [G,h,w] in [0,1]) with query k (``logits`` [K,h,w],
    objectness ``scores`` [K] logits): BCE + Dice of the masks, weighted, less the weighted objectness probability."""
    x = logits.flatten(1).float()
    t = targets.flatten(1).float()
    bce = (F.softplus(x).sum(1, keepdim=True) - x @ t.T) / x.shape[1]  # mean over pixels of BCE(x, t), all pairs
    p = x.sigmoid()
    dice = 1 - (2 * p @ t.T + 1) / (p.sum(1, keepdim=True) + t.sum(1)[None] + 1)
    return MASK_COST * (bce + dice) - SCORE_COST * scores.float().sigmoid()[:, None]


def target_loss(
    logits: torch.Tensor, scores: torch.Tensor, instances: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Terms ``target_mask`` (BCE + Dice of every matched query's mask, mean over the batch's matched pairs) and
    ``target_score`` (BCE of every query's objectness: 1 when matched), from the target queries' ``logits``
    [B,K,h,w] and ``scores`` [B,K] and the instance-id maps ``instances`` [B,H,W]."""
    size = tuple(logits.shape[-2:])
    matched_logits, matched_targets = [], []
    objectness = torch.zeros_like(scores, dtype=torch.float32)
    for b in range(logits.shape[0]):
        targets = pooled_instances(instances[b], size).to(logits.device)
        if targets.shape[0] == 0:
            continue
        rows, columns = hungarian(match_cost(logits[b], scores[b], targets))
        matched_logits.append(logits[b, rows.to(logits.device)])
        matched_targets.append(targets[columns.to(logits.device)])
        objectness[b, rows.to(logits.device)] = 1.0
    score = F.binary_cross_entropy_with_logits(scores.float(), objectness)
    if not matched_logits:
        return {"target_mask": logits.sum() * 0.0, "target_score": score}
    x = torch.cat(matched_logits).flatten(1).float()
    t = torch.cat(matched_targets).flatten(1)
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none").mean(1)
    p = x.sigmoid()
    dice = 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
    return {"target_mask": (bce + dice).mean(), "target_score": score}
