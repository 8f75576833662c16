"""Inference on users' imagery: the ``Predictor`` (tiling, one image pass per tile for all its questions, blending),
the files ``segearth predict`` writes, self-contained model bundles and the MLflow model registry, and converters of
other code bases' checkpoints."""
