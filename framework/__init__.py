"""segearth: geospatial pixel reasoning as a framework of swappable, registered components."""


def __getattr__(name: str):
    """``from framework import load_model`` (imported on first use: the CLI's start-up stays light)."""
    if name == "load_model":
        from framework.infer.predictor import load_model

        return load_model
    raise AttributeError(f"module 'framework' has no attribute {name!r}")
