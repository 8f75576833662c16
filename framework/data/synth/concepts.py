"""The vocabulary of the synthetic dataset and the numbers that define it: split names, class-level and
relational concept ids, the target shares of no-target and relational samples, and the thresholds under
which a relational concept counts as well-defined (see the package docstring for the definitions)."""

from __future__ import annotations

SPLITS = ("train", "val", "test")
CLASS_CONCEPTS = ("water", "vegetation", "field", "road", "building", "runway", "parking")
RELATIONAL_CONCEPTS = ("largest_field", "building_nearest_water", "field_north_of_road")
CONCEPTS = CLASS_CONCEPTS + RELATIONAL_CONCEPTS
NO_TARGET_SHARE = 0.10
RELATIONAL_SHARE = 0.25
LARGEST_FIELD_RATIO = 1.25
NEAREST_WATER_MARGIN = 0.05
