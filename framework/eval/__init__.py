"""Judging predictions: the benchmark metrics (gIoU, cIoU, Pr@t), undoing the letterbox, test-time augmentation,
results tables beside the floors and the shuffled control, and overlays for reading an evaluation by eye."""
