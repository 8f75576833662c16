"""Test session settings: offline hub, no albumentations update check, one shared sqlite MLflow store."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# Small test tensors run faster on one thread, and a second busy core would make two threads stall.
torch.set_num_threads(1)

# One sqlite store for the whole session (each new store costs ~2 s of migrations).
_MLFLOW_DIR = Path(tempfile.mkdtemp(prefix="segearth-mlflow-"))
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_MLFLOW_DIR / 'mlruns.db'}"

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def mlflow_uri() -> str:
    return os.environ["MLFLOW_TRACKING_URI"]


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small synthetic dataset (8 scenes at 64 px, written by the CLI), shared read-only by the session."""
    from framework.cli.main import main

    root = tmp_path_factory.mktemp("synth")
    assert main(["data", "synth", "--out", str(root), "--n", "8", "--seed", "1", "--image-size", "64"]) == 0
    return root
