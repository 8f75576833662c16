import numpy as np
import pytest
import torch

from framework.eval.metrics import PR_THRESHOLDS, ReasoningSegMetrics, TargetMetrics, iou_per_sample, matched_ious


def numpy_reference(preds: np.ndarray, targets: np.ndarray) -> dict:
    """The benchmark formulas, written directly."""
    ious, inters, unions = [], [], []
    for p, g in zip(preds, targets):
        i = np.logical_and(p, g).sum()
        u = np.logical_or(p, g).sum()
        ious.append(1.0 if u == 0 else i / u)
        inters.append(i)
        unions.append(u)
    ious = np.array(ious)
    out = {"giou": ious.mean(), "ciou": np.sum(inters) / np.sum(unions)}
    for t in PR_THRESHOLDS:
        out[f"pr_{t:.1f}"] = np.mean(ious > t)
    return out


def test_matches_numpy_on_thousands_of_random_masks():
    rng = np.random.default_rng(0)
    n, h, w = 3000, 12, 10
    density = rng.uniform(0, 1, size=(n, 1, 1))
    preds = rng.uniform(size=(n, h, w)) < density
    targets = rng.uniform(size=(n, h, w)) < rng.uniform(0, 1, size=(n, 1, 1))
    targets[::7] = False  # empty targets
    preds[::14] = False  # some of them predicted empty
    metric = ReasoningSegMetrics()
    for start in range(0, n, 256):
        sl = slice(start, start + 256)
        metric.update(torch.from_numpy(preds[sl]), torch.from_numpy(targets[sl]), torch.arange(n)[sl])
    got = metric.compute()
    want = numpy_reference(preds, targets)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key
    assert got["n"] == n


def test_hand_computed_cases():
    p = torch.zeros(4, 2, 2, dtype=torch.bool)
    g = torch.zeros(4, 2, 2, dtype=torch.bool)
    # 0: empty target predicted empty -> 1; 1: empty target, 1 FP pixel -> 0
    p[1, 0, 0] = True
    # 2: target 2 px, prediction 1 of them -> 0.5; 3: target 1 px, pred 4 px -> 0.25
    g[2, 0] = True
    p[2, 0, 0] = True
    g[3, 1, 1] = True
    p[3] = True
    m = ReasoningSegMetrics()
    m.update(p, g, torch.arange(4))
    r = m.compute()
    assert r["giou"] == pytest.approx((1 + 0 + 0.5 + 0.25) / 4)
    assert r["ciou"] == pytest.approx((0 + 0 + 1 + 1) / (0 + 1 + 2 + 4))
    assert r["pr_0.5"] == pytest.approx(0.25)  # strict >: 0.5 does not count
    # N-acc: empty targets answered empty (sample 0 of 0, 1); T-acc: the others answered with a mask (2 and 3)
    assert r["n_empty"] == 2 and r["n_acc"] == pytest.approx(0.5) and r["t_acc"] == 1.0
    assert (r["floor_empty_n_acc"], r["floor_empty_t_acc"], r["floor_full_n_acc"], r["floor_full_t_acc"]) == (1, 0, 0, 1)
    # floors: always-empty gets the two empty targets right; whole image gets |G|/4
    assert r["floor_empty_giou"] == pytest.approx(0.5) and r["floor_empty_ciou"] == 0
    assert r["floor_full_giou"] == pytest.approx((0 + 0 + 0.5 + 0.25) / 4)
    assert r["floor_full_ciou"] == pytest.approx(3 / 16)


def test_repeated_ids_count_once():
    """DDP's sampler pads by repeating samples; a repeated id must not count twice."""
    p = torch.zeros(3, 2, 2, dtype=torch.bool)
    g = torch.ones(3, 2, 2, dtype=torch.bool)
    p[0] = True
    m = ReasoningSegMetrics()
    m.update(p, g, torch.tensor([0, 1, 2]))
    m.update(p[:1], g[:1], torch.tensor([0]))
    r = m.compute()
    assert r["n"] == 3 and r["giou"] == pytest.approx(1 / 3)


def test_valid_region_sets_the_whole_image_floor():
    g = torch.zeros(1, 4, 4, dtype=torch.bool)
    g[0, 1, 1] = True
    valid = torch.zeros(1, 4, 4, dtype=torch.bool)
    valid[0, :2] = True
    m = ReasoningSegMetrics()
    m.update(g.clone(), g, torch.tensor([0]), valid)
    assert m.compute()["floor_full_giou"] == pytest.approx(1 / 8)


def test_iou_per_sample_empty_union_is_one():
    assert iou_per_sample(torch.tensor([0, 1]), torch.tensor([0, 2])).tolist() == [1.0, 0.5]


def test_masks_of_different_sizes_per_update_and_per_sample_rows():
    """Native-resolution scoring: one update per image at its own size; rows come back once per id, by id."""
    m = ReasoningSegMetrics()
    big_p = torch.zeros(1, 6, 9, dtype=torch.bool)
    big_p[0, :2] = True  # 18 px
    big_g = torch.zeros(1, 6, 9, dtype=torch.bool)
    big_g[0, 1:3] = True  # 18 px, 9 shared
    small = torch.ones(1, 2, 3, dtype=torch.bool)
    m.update(big_p, big_g, torch.tensor([7]))
    m.update(small, small, torch.tensor([3]))
    m.update(small, small, torch.tensor([3]))  # DDP padding repeats it
    rows = m.per_sample()
    assert rows["ids"] == [3, 7]
    assert rows["inter"] == [6, 9] and rows["union"] == [6, 27] and rows["valid_area"] == [6, 54]
    assert rows["iou"] == [1.0, pytest.approx(1 / 3)]
    r = m.compute()
    assert r["n"] == 2 and r["ciou"] == pytest.approx(15 / 33)
    assert r["floor_full_giou"] == pytest.approx((1 + 18 / 54) / 2)


def test_matched_ious_pair_each_instance_with_its_best_one_to_one_prediction():
    target = torch.zeros(3, 4, 4, dtype=torch.bool)
    target[0, :2, :2], target[1, 2:, 2:], target[2, 0, 3] = True, True, True
    pred = torch.zeros(2, 4, 4, dtype=torch.bool)
    pred[0, 2:, 2:] = True  # instance 1 exactly
    pred[1, :2, :1] = True  # half of instance 0
    ious = matched_ious(pred, target)
    torch.testing.assert_close(ious, torch.tensor([0.5, 1.0, 0.0], dtype=torch.float64))
    # one prediction covering two instances matches one of them only
    both = (target[0] | target[1])[None]
    assert sorted(matched_ious(both, target[:2]).tolist()) == [0.0, 0.5]
    assert matched_ious(pred[:0], target).tolist() == [0.0, 0.0, 0.0]


def test_target_metrics_average_over_instances_and_count_each_sample_once():
    metric = TargetMetrics()
    one = torch.ones(1, 2, 2, dtype=torch.bool)
    two = torch.stack([torch.tensor([[1, 0], [0, 0]]), torch.tensor([[0, 0], [0, 1]])]).bool()
    metric.update([two, one[:0]], [two, one], torch.tensor([0, 1]))
    metric.update([two], [two], torch.tensor([0]))  # a repeat (DDP padding) counts once
    out = metric.compute()
    assert out["n_targets"] == 3 and out["target_giou"] == pytest.approx(2 / 3)
    assert out["target_count_acc"] == pytest.approx(0.5)
    assert metric.per_sample() == {"ids": [0, 1], "targets": [2, 1], "predicted_targets": [2, 0],
                                   "target_iou_sum": [2.0, 0.0]}
