"""Importing this module registers every built-in dataset format with ``framework.core.registry.DATASETS``."""

from framework.data import earthreason, manifest, refsegrs, rrsisd  # noqa: F401
