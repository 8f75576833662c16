"""Data: the registered dataset formats (EarthReason, RRSIS-D, RefSegRS, manifests), reading images, masks and
GeoTIFFs, letterboxing, question-aware augmentation, training order and image grouping, the datamodule, and the
dataset makers (the synthetic scene generator, the Dubai converter)."""
