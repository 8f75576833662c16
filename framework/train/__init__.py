"""Training and evaluation with Lightning: the ``SegEarthTask`` (losses, metrics, optimiser groups, slim
checkpoints), the mask losses, strategies and the non-finite guard, resumable checkpoints, the weight average, and
the ``fit`` / ``evaluate`` entry points that make run folders and MLflow runs."""
