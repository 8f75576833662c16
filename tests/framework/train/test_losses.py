import torch

from framework.train.losses import (
    competition_loss,
    dice_loss,
    mask_loss,
    point_sample,
    presence_loss,
    sample_uncertain_points,
)


def test_point_sample_reads_pixel_centres():
    maps = torch.arange(16.0).reshape(1, 4, 4)
    pts = torch.tensor([[[0.125, 0.125], [0.875, 0.375]]])  # centres of (0,0) and (row 1, col 3)
    assert point_sample(maps, pts).tolist() == [[0.0, 7.0]]


def test_uncertain_points_favour_the_boundary():
    logits = torch.full((1, 32, 32), -10.0)
    logits[:, :, 16:] = 10.0
    logits[:, :, 15:17] = 0.0
    torch.manual_seed(0)
    pts = sample_uncertain_points(logits, num_points=200, oversample_ratio=20, importance_ratio=0.75)
    assert pts.shape == (1, 200, 2)
    near = ((pts[0, :150, 0] - 0.5).abs() < 0.07).float().mean()
    uniform = ((pts[0, 150:, 0] - 0.5).abs() < 0.07).float().mean()
    assert near > 0.95 and uniform < 0.5


def test_empty_target_predicted_empty_costs_almost_nothing():
    target = torch.zeros(2, 16, 16)
    confident_empty = torch.full((2, 4, 4), -20.0)
    bce, dice = mask_loss(confident_empty, target, point_sampled=False)
    assert bce < 1e-6 and dice < 1e-6
    bce_p, dice_p = mask_loss(torch.full((2, 4, 4), 5.0), target, point_sampled=True, num_points=64)
    assert bce_p > 1 and dice_p > 0.9


def test_loss_decreases_toward_the_target():
    target = torch.zeros(1, 16, 16)
    target[:, 4:12, 4:12] = 1
    logits = torch.zeros(1, 16, 16, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.5)
    losses = []
    for _ in range(30):
        bce, dice = mask_loss(logits, target, point_sampled=False)
        loss = bce + dice
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


def test_pos_balance_weighs_a_small_target_like_its_background():
    target = torch.zeros(3, 4, 4)
    target[0, 0, 0] = 1  # 1 positive, 15 negatives
    target[1, :3] = 1  # 12 positives, 4 negatives: never down-weighted
    logits = torch.zeros(3, 4, 4)  # every pixel costs log 2
    plain, _ = mask_loss(logits, target, point_sampled=False)
    assert torch.isclose(plain, torch.log(torch.tensor(2.0)))
    balanced, _ = mask_loss(logits, target, point_sampled=False, pos_balance=1.0)
    per_sample = torch.tensor([(15 + 15) / 16, 1.0, 1.0]) * torch.log(torch.tensor(2.0))  # no target: unweighted
    assert torch.isclose(balanced, per_sample.mean())
    half, _ = mask_loss(logits, target, point_sampled=False, pos_balance=0.5)
    assert torch.isclose(half, (torch.tensor([(15 + 15**0.5) / 16, 1.0, 1.0]) * torch.log(torch.tensor(2.0))).mean())


def test_dice_perfect_prediction():
    t = torch.zeros(1, 8)
    t[0, :4] = 1
    logits = (t * 2 - 1) * 50
    assert dice_loss(logits, t) < 1e-6


def test_presence_loss_reads_the_strongest_pixel_against_target_presence():
    logits = torch.full((2, 4, 4), -6.0)
    targets = torch.zeros(2, 8, 8)
    targets[1, :2, :2] = 1
    logits[1, 0, 0] = 6.0  # a target found by one confident pixel
    low = presence_loss(logits, targets)
    assert low < 0.01
    logits[0, 3, 3] = 6.0  # one false-positive pixel on the empty target: the whole image-level term notices
    high = presence_loss(logits, targets)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor([6.0, 6.0]), torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(high, expected)
    # only the strongest pixel of the empty sample gets a gradient
    logits.requires_grad_(True)
    presence_loss(logits, targets).backward()
    assert logits.grad[0].count_nonzero() == 1 and logits.grad[0, 3, 3] > 0


def test_competition_loss_is_a_softmax_over_an_images_questions_and_background():
    # two questions of image 0 (ids 0, 0) and one of image 1 (a singleton: no competitor, no term)
    logits = torch.tensor([[[2.0, -1.0]], [[0.5, 1.0]], [[9.0, 9.0]]])  # [3,1,2]
    targets = torch.zeros(3, 2, 4)
    targets[0, :, :2] = 1  # question 0 owns pixel (0,0) in full
    targets[1, :, 2:3] = 1  # question 1 owns half of pixel (0,1); the other half is background
    groups = torch.tensor([0, 0, 1])
    loss = competition_loss(logits, targets, groups)
    p0 = torch.log_softmax(torch.tensor([2.0, 0.5, 0.0]), 0)
    p1 = torch.log_softmax(torch.tensor([-1.0, 1.0, 0.0]), 0)
    expected = (-p0[0] + -(0.5 * p1[1] + 0.5 * p1[2])) / 2
    torch.testing.assert_close(loss, expected)


def test_competition_loss_splits_shared_pixels_and_rewards_the_right_claim():
    targets = torch.zeros(2, 4, 4)
    targets[:, :2] = 1  # two phrasings of one concept: the same target, so each pixel is shared evenly
    logits = torch.where(targets.bool(), 8.0, -8.0)
    shared = competition_loss(logits, targets, torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(shared, torch.log(torch.tensor(2.0)) / 2, atol=1e-3, rtol=0)  # top half only
    targets[1] = 0
    targets[1, 2:] = 1  # now disjoint: confident right claims cost ~0, swapped claims cost a lot
    right = torch.where(targets.bool(), 8.0, -8.0)
    assert competition_loss(right, targets, torch.zeros(2, dtype=torch.long)) < 1e-3
    assert competition_loss(right.flip(0), targets, torch.zeros(2, dtype=torch.long)) > 8


def test_competition_loss_without_groups_is_zero_and_differentiable():
    logits = torch.randn(3, 4, 4, requires_grad=True)
    loss = competition_loss(logits, torch.ones(3, 8, 8), torch.arange(3))
    loss.backward()
    assert loss.item() == 0 and logits.grad is not None
