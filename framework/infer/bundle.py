"""Model bundles: a trained model in one folder that loads without the files it was first built from, and the
MLflow model registry.

A bundle folder holds ``config.yaml`` (the resolved experiment config; the model section rewritten so that no
slot reads a weights file, a pip package or a GGUF file), ``model.safetensors`` (the state dict of every slot,
frozen ones included), ``tokenizer/`` when the LLM's tokenizer came from its weights folder, and ``bundle.json``
(format, source checkpoint, whether LoRA was merged). ``segearth export`` writes one and optionally registers it:
the folder is logged as the artifacts of an MLflow run, a model version is created from them and an alias (e.g.
``best``; stages are deprecated upstream) points at it. ``models:/NAME@ALIAS`` (or ``models:/NAME/VERSION``) then
resolves to a local copy under ``$SEGEARTH_CACHE/models`` (default ``~/.cache/segearth``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from framework.core.config import save_config
from framework.core.errors import ConfigError, UserError
from framework.core.model import SegEarthModel
from framework.core.weights import CheckpointWeights, WeightsSource, build_model
from framework.track.run_dirs import resolve_checkpoint
from framework.track.run_info import default_tracking_uri, run_tags

BUNDLE_FILE = "bundle.json"
CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
FORMAT = 1
# Component options that say where initial weights come from; a bundle carries the weights, so they are reset.
WEIGHT_SOURCES: dict[str, Any] = {"weights": None, "pretrained": False}
# Options of the ``hf_causal_lm`` LLM that name its weights; replaced by its inline config + the saved tokenizer.
LLM_SOURCES = ("path", "package", "gguf_file", "cache_dir")
MODELS_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))")


def is_registry_uri(ref: str) -> bool:
    return str(ref).startswith("models:/")


def is_bundle(path: str | Path) -> bool:
    return (Path(path) / BUNDLE_FILE).is_file()


# ---------------------------------------------------------------------------------------------- writing
def merge_lora(model: SegEarthModel) -> int:
    """Fold every LoRA adapter into its base layer and put the base layer back in its place; returns how many."""
    from peft.tuners.lora import LoraLayer

    merged = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge(safe_merge=True)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
            merged += 1
    return merged


def self_contained_model_config(model_cfg: dict, model, folder: Path) -> dict:
    """``model_cfg`` with every weights source removed; the LLM described inline (its transformers config) and
    its tokenizer saved to ``folder/tokenizer`` when it came from a weights folder, package or GGUF file."""
    cfg = copy.deepcopy(model_cfg)
    for slot_cfg in cfg.values():
        if isinstance(slot_cfg, dict):
            for key, value in WEIGHT_SOURCES.items():
                if key in slot_cfg:
                    slot_cfg[key] = value
    llm_cfg, llm = cfg["llm"], model.llm
    tokenizer = llm_cfg.get("tokenizer")
    from_files = any(llm_cfg.get(key) for key in LLM_SOURCES) or tokenizer not in (None, "byte")
    if from_files:
        if not (hasattr(llm, "causal_lm") and hasattr(llm, "tokenizer")):
            raise ConfigError(f"export: the LLM component {llm_cfg.get('name')!r} cannot be described inline")
        for key in LLM_SOURCES:
            llm_cfg.pop(key, None)
        llm_cfg["config"] = json.loads(json.dumps(llm.causal_lm.config.to_diff_dict()))  # plain YAML types
        llm.tokenizer.save_pretrained(folder / TOKENIZER_DIR)
        llm_cfg["tokenizer"] = TOKENIZER_DIR
    return cfg


def write_bundle(model, cfg: dict, out: Path, source: str, merged_lora: bool = False, overwrite: bool = False) -> Path:
    """Write ``model`` (a ``SegEarthModel`` built from ``cfg``) as a bundle folder ``out``, atomically."""
    from safetensors.torch import save_model

    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists (use --overwrite to replace it)")
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        bundle_cfg = copy.deepcopy(cfg)
        bundle_cfg["model"] = self_contained_model_config(cfg["model"], model, staging)
        save_config(bundle_cfg, staging / CONFIG_FILE)
        save_model(model, str(staging / WEIGHTS_FILE))  # handles tied tensors (e.g. tied LM embeddings)
        info = {
            "format": FORMAT,
            "name": cfg["name"],
            "source": source,
            "merged_lora": merged_lora,
            "slots": sorted(model.slots()),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (staging / BUNDLE_FILE).write_text(json.dumps(info, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def export(cfg: dict, ckpt_path: Path, out: Path, merge: bool = False, overwrite: bool = False) -> Path:
    """Bundle the checkpoint ``ckpt_path`` of experiment ``cfg``; ``merge`` folds LoRA adapters into the LLM."""
    model = build_model(cfg)
    CheckpointWeights(ckpt_path).load_into(model)
    cfg = copy.deepcopy(cfg)
    merged = False
    if merge:
        if not cfg["model"]["llm"].get("lora"):
            raise ConfigError("--merge-lora: the model has no LoRA adapters (model.llm.lora is not set)")
        merged = merge_lora(model) > 0
        cfg["model"]["llm"].pop("lora")
    return write_bundle(model, cfg, out, source=str(ckpt_path), merged_lora=merged, overwrite=overwrite)


# ---------------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class Bundle:
    """An opened bundle folder: ``config`` is the experiment config with bundle-relative paths made absolute;
    ``source``: how the user named it (the folder, or the ``models:/`` URI it was fetched for)."""

    path: Path
    config: dict
    info: dict
    source: str

    @property
    def model_config(self) -> dict:
        """The ``model`` section the bundle's weights fit (a ``WeightsSource``)."""
        return self.config["model"]

    @property
    def run_dir(self) -> None:
        """A bundle belongs to no run folder."""
        return None

    def build(self) -> SegEarthModel:
        """A fresh ``SegEarthModel`` with the bundle's weights in every slot."""
        model = SegEarthModel(self.config["model"])
        self.load_into(model)
        return model

    def load_into(self, model: SegEarthModel) -> None:
        """Copy the bundle's weights into ``model`` (built from ``config["model"]``; strict: nothing missing or
        extra)."""
        from safetensors.torch import load_model

        load_model(model, str(self.path / WEIGHTS_FILE), strict=True)


def open_bundle(path: str | Path, source: str | None = None) -> Bundle:
    """Read a bundle folder (see the module docstring)."""
    import yaml

    path = Path(path)
    if not is_bundle(path):
        raise UserError(f"{path}: not a model bundle (no {BUNDLE_FILE}; make one with 'segearth export')")
    info = json.loads((path / BUNDLE_FILE).read_text())
    if info.get("format") != FORMAT:
        raise UserError(f"{path}: bundle format {info.get('format')!r}, this version reads format {FORMAT}")
    config = yaml.safe_load((path / CONFIG_FILE).read_text(encoding="utf-8"))
    if config["model"]["llm"].get("tokenizer") == TOKENIZER_DIR:
        config["model"]["llm"]["tokenizer"] = str((path / TOKENIZER_DIR).resolve())
    return Bundle(path=path, config=config, info=info, source=source or str(path))


# ---------------------------------------------------------------------------------------------- registry
def register(
    bundle_dir: Path, name: str, alias: str | None, tracking_uri: str, experiment: str, artifact_root: Path
) -> int:
    """Log ``bundle_dir`` as the artifacts of a new MLflow run in ``experiment``, create a version of registered
    model ``name`` from them and point ``alias`` at it; returns the version number."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
    else:
        location = artifact_root.resolve().as_uri() if tracking_uri.startswith("sqlite:") else None
        experiment_id = client.create_experiment(experiment, artifact_location=location)
    run = client.create_run(experiment_id, run_name=f"{name}-export", tags=run_tags())
    try:
        client.log_artifacts(run.info.run_id, str(bundle_dir), artifact_path="bundle")
    except Exception:
        client.set_terminated(run.info.run_id, status="FAILED")
        raise
    client.set_terminated(run.info.run_id)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="segearth model bundles (segearth export)")
    version = client.create_model_version(name, source=f"{run.info.artifact_uri}/bundle", run_id=run.info.run_id)
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return int(version.version)


def fetch_registered(uri: str, tracking_uri: str | None = None) -> Path:
    """A local bundle folder for ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` (downloaded once, cached)."""
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    match = MODELS_URI.fullmatch(uri)
    if match is None:
        raise UserError(f"{uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    tracking_uri = tracking_uri or default_tracking_uri()
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    name = match["name"]
    try:
        if match["alias"]:
            version = client.get_model_version_by_alias(name, match["alias"])
        else:
            version = client.get_model_version(name, match["version"])
    except MlflowException as exc:
        raise UserError(f"{uri}: not in the model registry at {tracking_uri} ({exc.message})") from None
    key = hashlib.sha256(f"{tracking_uri}|{version.source}|{version.version}".encode()).hexdigest()[:12]
    cache_root = Path(os.environ.get("SEGEARTH_CACHE", "~/.cache/segearth")).expanduser() / "models"
    folder = cache_root / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}-v{version.version}-{key}"
    if not is_bundle(folder):
        staging = cache_root / f".{folder.name}.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            local = Path(
                download_artifacts(artifact_uri=version.source, dst_path=str(staging), tracking_uri=tracking_uri)
            )
            if not is_bundle(local):
                raise UserError(f"{uri}: version {version.version} is not a segearth bundle ({version.source})")
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(local, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def resolve_weights(cfg: dict, ref: str) -> WeightsSource:
    """The weights ``ref`` names for experiment ``cfg``: a bundle folder, ``models:/NAME@ALIAS`` (in
    ``cfg['tracking']['uri']``'s registry), a checkpoint file, or ``best`` / ``last`` of the newest run."""
    bundle = resolve_bundle(ref, cfg["tracking"]["uri"])
    return bundle if bundle is not None else CheckpointWeights(resolve_checkpoint(cfg, ref))


def resolve_bundle(ref: str, tracking_uri: str | None = None) -> Bundle | None:
    """The bundle that ``ref`` names (a ``models:/`` URI or a bundle folder), or None when it names neither."""
    if is_registry_uri(ref):
        return open_bundle(fetch_registered(ref, tracking_uri), source=ref)
    if is_bundle(ref):
        return open_bundle(ref)
    return None
