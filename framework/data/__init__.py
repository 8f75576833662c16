"""Datasets: on-disk formats, the synthetic demo scene generator, transforms and the datamodule."""
