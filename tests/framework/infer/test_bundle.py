"""Model bundles and the MLflow registry: export, alias, load back by ``models:/NAME@best``, same predictions."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml

from framework.cli.main import main
from framework.core.config import load_config
from framework.core.errors import UserError
from framework.infer.bundle import WEIGHTS_FILE, open_bundle
from framework.infer.predictor import load_model
from framework.train.task import SegEarthTask
from tests.tiny import tiny_config, write_config

QUESTION = "Where could a seaplane land?"


def write_checkpoint(cfg: dict, path: Path, seed: int = 0) -> Path:
    """A checkpoint as ``segearth fit`` writes it (slim: frozen slots left out), of a model with every weight
    trainable weight perturbed (LoRA adapters included), as after training."""
    torch.manual_seed(cfg["seed"])
    task = SegEarthTask(cfg)
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in task.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.02)
    checkpoint = {"state_dict": task.state_dict(), "hyper_parameters": {"config": cfg}}
    task.on_save_checkpoint(checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def tiny_experiment(folder: Path, **llm) -> tuple[Path, dict]:
    raw = tiny_config(output_dir=str(folder / "runs"))
    raw["model"]["llm"] = {**raw["model"]["llm"], **llm}
    raw["tracking"] = {"experiment": "bundles"}
    path = write_config(folder / "tiny.yaml", raw)
    return path, load_config(path)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)


def test_export_register_and_load_by_alias_gives_the_same_predictions(tmp_path, image, mlflow_uri, monkeypatch):
    monkeypatch.setenv("SEGEARTH_CACHE", str(tmp_path / "cache"))
    config_path, cfg = tiny_experiment(tmp_path, frozen=True)  # a frozen LLM: left out of the checkpoint
    ckpt = write_checkpoint(cfg, tmp_path / "runs" / "tiny" / "20260101-000000" / "checkpoints" / "best.ckpt")
    out = tmp_path / "bundle"
    assert main(["export", str(config_path), "--ckpt", "best", "--out", str(out), "--register", "tiny-bundle",
                 "--alias", "best"]) == 0
    bundle = open_bundle(out)
    assert json.loads((out / "bundle.json").read_text())["source"] == str(ckpt)
    assert "llm.causal_lm.model.embed_tokens.weight" in _keys(out / WEIGHTS_FILE)  # the frozen slot is inside
    assert bundle.config["model"]["encoder"]["pretrained"] is False

    client = mlflow.MlflowClient(mlflow_uri, registry_uri=mlflow_uri)
    version = client.get_model_version_by_alias("tiny-bundle", "best")
    assert int(version.version) == 1 and version.source.endswith("/bundle")

    from_checkpoint = load_model(ckpt).predict(image, QUESTION)
    from_registry = load_model("models:/tiny-bundle@best", tracking_uri=mlflow_uri).predict(image, QUESTION)
    np.testing.assert_array_equal(from_registry.probability, from_checkpoint.probability)
    assert from_registry.mask.any() != from_registry.mask.all() or from_registry.mask.shape == (70, 90)

    # a second export moves the alias to version 2; the version number still loads version 1
    assert main(["export", str(config_path), "--ckpt", str(ckpt), "--out", str(out), "--overwrite",
                 "--register", "tiny-bundle", "--alias", "best"]) == 0
    assert int(client.get_model_version_by_alias("tiny-bundle", "best").version) == 2
    assert load_model("models:/tiny-bundle/1", tracking_uri=mlflow_uri).predict(image, QUESTION).score == pytest.approx(
        from_checkpoint.score
    )


def _keys(path: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return set(f.keys())


def test_lora_is_merged_on_request(tmp_path, image):
    config_path, cfg = tiny_experiment(tmp_path, lora={"r": 4, "alpha": 8})
    ckpt = write_checkpoint(cfg, tmp_path / "lora.ckpt")
    assert main(["export", str(config_path), "--ckpt", str(ckpt), "--out", str(tmp_path / "merged"),
                 "--merge-lora"]) == 0
    assert main(["export", str(config_path), "--ckpt", str(ckpt), "--out", str(tmp_path / "adapters")]) == 0
    merged, adapters = open_bundle(tmp_path / "merged"), open_bundle(tmp_path / "adapters")
    assert "lora" not in merged.config["model"]["llm"] and merged.info["merged_lora"] is True
    assert "lora" in adapters.config["model"]["llm"] and not adapters.info["merged_lora"]
    assert not any("lora_" in k for k in _keys(tmp_path / "merged" / WEIGHTS_FILE))
    assert any("lora_" in k for k in _keys(tmp_path / "adapters" / WEIGHTS_FILE))
    want = load_model(ckpt).predict(image, QUESTION).probability
    for folder in ("merged", "adapters"):
        got = load_model(tmp_path / folder).predict(image, QUESTION).probability
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_export_errors_exit_2(tmp_path, capsys):
    config_path, cfg = tiny_experiment(tmp_path)
    ckpt = write_checkpoint(cfg, tmp_path / "plain.ckpt")
    assert main(["export", str(config_path), "--ckpt", str(ckpt), "--out", str(tmp_path / "b"), "--merge-lora"]) == 2
    assert "no LoRA adapters" in capsys.readouterr().err and not (tmp_path / "b").exists()
    (tmp_path / "b").mkdir()
    assert main(["export", str(config_path), "--ckpt", str(ckpt), "--out", str(tmp_path / "b")]) == 2
    assert "exists (use --overwrite" in capsys.readouterr().err
    assert main(["export", str(config_path), "--ckpt", "last", "--out", str(tmp_path / "c")]) == 2
    assert "no 'last' checkpoint" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left


def test_unknown_registry_entries_are_user_errors(mlflow_uri, capsys):
    with pytest.raises(UserError, match="not in the model registry"):
        load_model("models:/no-such-model@best", tracking_uri=mlflow_uri)
    with pytest.raises(UserError, match="expected models:/NAME@ALIAS"):
        load_model("models:/a/b/c", tracking_uri=mlflow_uri)


@pytest.mark.slow
def test_segearth_test_evaluates_a_registered_bundle_like_its_checkpoint(tmp_path, mlflow_uri, monkeypatch):
    """``segearth test CONFIG --ckpt models:/NAME@best``: the model comes from the registry (its weights files
    are not needed), data and evaluation settings from CONFIG; the metrics equal the checkpoint's."""
    monkeypatch.setenv("SEGEARTH_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(data), "--n", "6", "--seed", "2", "--image-size", "64"]) == 0
    config_path, cfg = tiny_experiment(tmp_path)
    cfg_path = write_config(tmp_path / "eval.yaml", {**yaml.safe_load(config_path.read_text()), "data": {
        **cfg["data"], "root": str(data)}})
    ckpt = write_checkpoint(cfg, tmp_path / "eval.ckpt")
    assert main(["export", str(cfg_path), "--ckpt", str(ckpt), "--out", str(tmp_path / "bundle"),
                 "--register", "tiny-eval", "--alias", "best"]) == 0
    results = {}
    for name, ref in (("ckpt", str(ckpt)), ("registry", "models:/tiny-eval@best")):
        assert main(["test", str(cfg_path), "--ckpt", ref, "--out", str(tmp_path / name), "--no-shuffled"]) == 0
        results[name] = json.loads((tmp_path / name / "results.json").read_text())
    assert results["registry"]["checkpoint"] == "models:/tiny-eval@best"
    assert results["registry"]["test"]["metrics"] == results["ckpt"]["test"]["metrics"]


def test_a_bundle_loads_without_the_weights_files_it_was_built_from(tmp_path, image):
    """An LLM from a local weights folder (and its own tokenizer) is described inline in the bundle, its
    tokenizer saved inside: deleting the folder changes nothing."""
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM

    from components.llms._byte_tokenizer import byte_tokenizer
    from tests.tiny import TINY_LLM

    llm_dir = tmp_path / "llm"
    options = dict(TINY_LLM["config"])
    AutoModelForCausalLM.from_config(AutoConfig.for_model(options.pop("model_type"), **options)).save_pretrained(llm_dir)
    byte_tokenizer().save_pretrained(llm_dir)
    config_path, cfg = tiny_experiment(tmp_path, config=None, path=str(llm_dir), tokenizer=None)
    ckpt = write_checkpoint(cfg, tmp_path / "path.ckpt")
    want = load_model(ckpt).predict(image, QUESTION).probability
    assert main(["export", str(config_path), "--ckpt", str(ckpt), "--out", str(tmp_path / "bundle")]) == 0
    shutil.rmtree(llm_dir)
    llm_cfg = open_bundle(tmp_path / "bundle").config["model"]["llm"]
    assert "path" not in llm_cfg and llm_cfg["config"]["model_type"] == "llama"
    assert Path(llm_cfg["tokenizer"]) == (tmp_path / "bundle" / "tokenizer").resolve()
    np.testing.assert_array_equal(load_model(tmp_path / "bundle").predict(image, QUESTION).probability, want)
