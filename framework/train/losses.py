"""Mask losses: sigmoid BCE + Dice, on importance-sampled points (Mask2Former / reference) or on full masks.

Empty targets are ordinary targets: BCE pulls every logit down and Dice's +1 smoothing makes an empty
prediction of an empty target cost 0, so no-target samples train toward an empty mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def point_sample(maps: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear values of maps [B,H,W] at normalised points [B,P,2] in [0,1] (x, y) → [B,P]."""
    grid = points[:, :, None, :] * 2.0 - 1.0
    return F.grid_sample(maps[:, None].float(), grid, align_corners=False)[:, 0, :, 0]


def sample_uncertain_points(
    logits: torch.Tensor, num_points: int, oversample_ratio: float, importance_ratio: float
) -> torch.Tensor:
    """Points [B,P,2] in [0,1]: the most uncertain (|logit| smallest) ``importance_ratio`` of
    ``oversample_ratio``·P random candidates, plus uniform random ones (Mask2Former's training recipe)."""
    b = logits.shape[0]
    n_candidates = int(num_points * oversample_ratio)
    candidates = torch.rand(b, n_candidates, 2, device=logits.device)
    uncertainty = -point_sample(logits.detach(), candidates).abs()
    n_important = int(importance_ratio * num_points)
    idx = uncertainty.topk(n_important, dim=1).indices
    important = torch.gather(candidates, 1, idx[..., None].expand(-1, -1, 2))
    uniform = torch.rand(b, num_points - n_important, 2, device=logits.device)
    return torch.cat([important, uniform], dim=1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 − (2Σpt + 1)/(Σp + Σt + 1) per sample over flattened [B,...] values, averaged over the batch."""
    p = logits.sigmoid().flatten(1)
    t = targets.flatten(1)
    return (1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)).mean()


def mask_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    point_sampled: bool = True,
    num_points: int = 12544,
    oversample_ratio: float = 3.0,
    importance_ratio: float = 0.75,
    pos_balance: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(BCE, Dice) of mask logits [B,h,w] against binary targets [B,H,W] (any H,W ≥ h,w).

    Point-sampled: both are read at the same points in normalised coordinates. Full-mask: logits are upsampled
    bilinearly to the target size. ``pos_balance`` β weights each sample's target pixels in the BCE by
    (negatives / positives)^β, at least 1 (0: plain BCE; 1: a sample's positives weigh as much as its negatives),
    so that a small target is not answered by the prior "mostly empty".
    """
    targets = targets.float()
    if point_sampled:
        points = sample_uncertain_points(logits, num_points, oversample_ratio, importance_ratio)
        pred = point_sample(logits, points)
        target = point_sample(targets, points)
    else:
        pred = F.interpolate(logits[:, None].float(), size=targets.shape[-2:], mode="bilinear", align_corners=False)
        pred = pred[:, 0]
        target = targets
    pos_weight = None
    if pos_balance:
        positives = target.flatten(1).sum(1)
        negatives = target[0].numel() - positives
        # a sample without a target has no target term to weigh; at least one pixel keeps the ratio finite
        ratio = (negatives / positives.clamp(min=1.0)).clamp(min=1.0)
        pos_weight = ratio.pow(pos_balance).view(-1, *[1] * (target.dim() - 1))
    bce = F.binary_cross_entropy_with_logits(pred, target, reduction="none", pos_weight=pos_weight)
    bce = bce.flatten(1).mean(1).mean()
    return bce, dice_loss(pred, target)


def presence_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BCE of each mask's largest logit [B] against whether its target [B,H,W] has any pixel.

    An IoU-scored empty target is lost to a single false-positive pixel, which the per-pixel mean of BCE barely
    notices; this image-level term pushes down exactly the strongest false positive of a no-target sample (and
    asks for at least one confident pixel where there is a target). ``loss.presence_weight`` (0 = reference)."""
    strongest = logits.flatten(1).amax(dim=1).float()
    present = targets.flatten(1).amax(dim=1).float()
    return F.binary_cross_entropy_with_logits(strongest, present)


def competition_loss(logits: torch.Tensor, targets: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Per-pixel cross-entropy between the questions asked of one image: logits [B,h,w], targets [B,H,W] (H,W
    multiples of h,w), ``groups`` [B] (equal ids = the same image: ``ModelOutput.image_index``).

    Within a group of k ≥ 2 questions each pixel is a (k+1)-way softmax over the k questions' logits and a fixed
    background logit 0 (the sigmoid's decision boundary: a question claims a pixel when its logit beats 0 and the
    other questions). The target distribution is spread evenly over the questions whose targets cover the pixel
    (area fractions at the logits' resolution), the background taking what they leave. It is the training signal of
    a k-class segmenter, which one-question BCE lacks: a pixel must be claimed by the right question *rather than*
    the others. Mean over the pixels of every group of ≥ 2; 0 when there is none. ``loss.competition_weight``."""
    area = F.adaptive_avg_pool2d(targets[:, None].float(), logits.shape[-2:])[:, 0]
    losses = []
    for g in groups.unique():
        members = (groups == g).nonzero()[:, 0]
        if members.numel() < 2:
            continue
        cover = area[members]  # [k,h,w]
        total = cover.sum(0, keepdim=True)
        share = cover / total.clamp(min=1.0)
        target = torch.cat([share, 1 - share.sum(0, keepdim=True)])  # [k+1,h,w], background last
        scores = torch.cat([logits[members].float(), torch.zeros_like(total)])
        losses.append(-(target * scores.log_softmax(0)).sum(0).mean())
    if not losses:
        return logits.sum() * 0.0
    return torch.stack(losses).mean()
