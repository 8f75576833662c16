"""The target queries' matching to ground-truth instances and its loss."""

import itertools

import pytest
import torch

from framework.eval.metrics import hungarian
from framework.train.matching import instance_masks, match_cost, pooled_instances, target_loss


def brute_force(cost: torch.Tensor) -> float:
    """The least total cost of a one-to-one assignment of min(K, G) pairs, over every choice."""
    k, g = cost.shape
    if k >= g:
        return min(sum(float(cost[r, c]) for c, r in enumerate(rows)) for rows in itertools.permutations(range(k), g))
    return min(sum(float(cost[r, c]) for r, c in enumerate(cols)) for cols in itertools.permutations(range(g), k))


@pytest.mark.parametrize("shape", [(3, 3), (5, 2), (2, 4), (6, 6), (1, 1)])
def test_hungarian_finds_the_least_total_cost_as_brute_force(shape):
    generator = torch.Generator().manual_seed(sum(shape))
    for _ in range(20):
        cost = torch.randn(*shape, generator=generator)
        rows, columns = hungarian(cost)
        assert len(rows) == min(shape) and len(set(rows.tolist())) == len(rows) == len(set(columns.tolist()))
        assert float(cost[rows, columns].sum()) == pytest.approx(brute_force(cost), abs=1e-5)


def test_instance_masks_and_their_pooled_shares():
    ids = torch.zeros(8, 8, dtype=torch.uint8)
    ids[:4, :4], ids[4:, 6:] = 1, 2
    masks = instance_masks(ids)
    assert masks.shape == (2, 8, 8) and masks[0].sum() == 16 and masks[1].sum() == 8
    pooled = pooled_instances(ids, (2, 2))
    torch.testing.assert_close(pooled, torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.5]]]))
    assert instance_masks(torch.zeros(4, 4, dtype=torch.uint8)).shape == (0, 4, 4)


def test_the_cost_prefers_the_query_whose_mask_is_the_instance():
    ids = torch.zeros(8, 8, dtype=torch.uint8)
    ids[:4], ids[4:] = 1, 2
    targets = pooled_instances(ids, (8, 8))
    logits = torch.stack([targets[1] * 20 - 10, targets[0] * 20 - 10, torch.full((8, 8), -10.0)])
    cost = match_cost(logits, torch.zeros(3), targets)
    rows, columns = hungarian(cost)
    assert dict(zip(columns.tolist(), rows.tolist(), strict=True)) == {0: 1, 1: 0}
    # objectness breaks a tie between two equal masks
    twin = match_cost(torch.stack([logits[1], logits[1]]), torch.tensor([-3.0, 3.0]), targets[:1])
    assert twin[1, 0] < twin[0, 0]


def test_the_target_loss_trains_matched_masks_and_every_querys_objectness():
    ids = torch.zeros(2, 16, 16, dtype=torch.uint8)
    ids[0, :8, :8], ids[0, 8:, 8:] = 1, 2  # two instances; the second sample has no target
    logits = torch.zeros(2, 4, 8, 8, requires_grad=True)
    scores = torch.zeros(2, 4, requires_grad=True)
    terms = target_loss(logits, scores, ids)
    assert set(terms) == {"target_mask", "target_score"}
    (terms["target_mask"] + terms["target_score"]).backward()
    # two queries of the first sample are matched and pulled towards their instances; the rest only lose objectness
    moved = logits.grad.flatten(2).abs().sum(2)
    assert int((moved[0] > 0).sum()) == 2 and float(moved[1].sum()) == 0.0
    assert int((scores.grad[0] < 0).sum()) == 2 and bool((scores.grad[1] > 0).all())
    # a perfect prediction costs less than a blank one
    perfect = pooled_instances(ids[0], (8, 8)) * 40 - 20
    good = torch.cat([perfect, torch.full((2, 8, 8), -20.0)])[None]
    blank = torch.full((1, 4, 8, 8), -20.0)
    confident = torch.tensor([[9.0, 9.0, -9.0, -9.0]])
    assert target_loss(good, confident, ids[:1])["target_mask"] < 0.05 < target_loss(blank, confident, ids[:1])["target_mask"]
