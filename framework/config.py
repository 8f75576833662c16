"""Experiment configs: YAML with ``base:`` inheritance, dotted overrides, interpolation, load-time validation.

A config is data. ``load_config`` returns a plain, fully resolved ``dict``: every run is reproducible from the
YAML that ``save_config`` writes next to it (no ``base:`` left, interpolations resolved).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from framework.errors import ConfigError


@dataclass
class ModelSchema:
    """One mapping per slot: ``{name: <registered name>, frozen: bool, **component kwargs}``."""

    encoder: dict[str, Any] = field(default_factory=dict)
    compressor: Optional[dict[str, Any]] = None
    llm: dict[str, Any] = field(default_factory=dict)
    projector: dict[str, Any] = field(default_factory=dict)
    mask_head: dict[str, Any] = field(default_factory=dict)
    # One learned query per named concept asks the mask head in training in place of the projector's, which is
    # trained to reproduce it (loss.concept_query_weight). Every training sample must name one of these concepts.
    concepts: Optional[list[str]] = None
    # With concepts, what answers outside training (framework/model.py ConceptQueries): "projector" (the projector's
    # query asks the head) or "choice" (every pixel goes to at most one concept; a question gets its nearest concept's).
    concept_readout: str = "projector"


@dataclass
class DataSchema:
    format: str = "earthreason"
    root: Optional[str] = None
    image_size: int = 1024
    batch_size: int = 1
    # Training only: each item is this many questions of one image with one augmentation draw, and the encoder runs
    # once per distinct image of a batch (framework/data/grouping.py); must divide batch_size. 1 = independent samples.
    questions_per_image: int = 1
    eval_batch_size: int = 4
    num_workers: int = 0
    train_questions: str = "all"  # every question of an image is a training sample (the reference: first only)
    eval_questions: str = "first"  # "first" = reference-comparable; "all" = every question is a sample
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    bands: Optional[list[int]] = None  # three 1-based band numbers used as R, G, B (multiband images)
    scale: Union[str, int, float] = "auto"  # >8-bit data: "auto" = 2-98 % stretch; a number divides
    on_bad_sample: str = "error"  # "error" | "skip" (skipped files are listed and logged)
    augment: Optional[dict[str, Any]] = None  # train split only; keys and meaning: framework/data/augment.py


@dataclass
class OptimSchema:
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.0
    # Multiplies ``lr`` per slot (encoder, compressor, llm, projector, mask_head); missing slots use 1.
    slot_lr_scale: dict[str, float] = field(default_factory=dict)
    # A NaN/inf training loss: "stop" (error naming step, sample ids, last good checkpoint) or "skip" the step.
    on_nonfinite: str = "stop"
    # Exponential moving average of the trained weights, updated after every optimiser step (0 = off). Validation,
    # checkpoints' state_dict (so `segearth test`, predict and export) and the model after fit use the average.
    ema_decay: float = 0.0


@dataclass
class CheckpointSchema:
    # last.ckpt also every N optimiser steps (0: at validation only); a killed run resumes from it (--resume last)
    every_n_steps: int = 0


@dataclass
class LossSchema:
    bce_weight: float = 5.0
    dice_weight: float = 5.0
    pos_balance: float = 0.0  # BCE weight of a sample's target pixels: (negatives / positives)^β; 0 = reference
    lm_weight: float = 1.0
    point_sample: bool = True
    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    deep_supervision: bool = True
    presence_weight: float = 0.0  # image-level BCE on each mask's largest logit (framework/losses.py); 0 = reference
    competition_weight: float = 0.0  # per-pixel softmax across the questions of one image (framework/losses.py)
    concept_query_weight: float = 1.0  # with model.concepts: MSE of the projector's query to its concept's query


@dataclass
class TrackingSchema:
    enabled: bool = True
    # MLflow's own environment variable wins when set; otherwise a sqlite store in the working directory.
    uri: str = "${oc.env:MLFLOW_TRACKING_URI,sqlite:///mlruns.db}"
    experiment: str = "segearth"
    run_name: Optional[str] = None
    # an http(s) server that does not answer at start: false = stop with an error, true = log to sqlite:///mlruns.db
    offline_fallback: bool = False
    system_metrics: bool = True  # fit: CPU/GPU memory and utilisation (system/* metrics, MLflow's monitor)
    val_overlays: int = 4  # fit: overlays of the first N val samples logged as images per validation (0 = none)
    log_checkpoints: bool = False  # fit: best.ckpt and last.ckpt as run artifacts (checkpoints/)


@dataclass
class EvalSchema:
    threshold: float = 0.0  # logit threshold (0 = sigmoid 0.5, as the reference)
    tta: str = "none"  # val/test: "none" | "flips" (4 views) | "dihedral" (8): mean logits (framework/tta.py)
    shuffled_control: bool = True
    shuffle_seed: int = 0
    native: bool = True  # also score each image at its native resolution (logits cut out of the letterbox, resized)
    overlays: int = 8  # `segearth test`: PNG overlays of the first N test samples (0 = none)


@dataclass
class PredictSchema:
    """Inference on user imagery (``segearth predict``, ``framework.predict``): how scenes are tiled."""

    tiling: str = "auto"  # "auto": tile images with a side > tile_size; "always"; "never" (letterbox the whole image)
    tile_size: Optional[int] = None  # tile side in native pixels; None = data.image_size (training frame size)
    overlap: float = 0.25  # fraction of the tile shared with each neighbour; logits are blended there
    tile_batch: int = 4  # tiles encoded at once: bounds memory together with the scene-sized output
    tta: str = "none"  # "none" | "flips" | "dihedral": each tile seen in 4 or 8 views, mean logits (framework/tta.py)


@dataclass
class ExperimentSchema:
    name: str = "experiment"
    seed: int = 0
    output_dir: str = "runs"
    model: ModelSchema = field(default_factory=ModelSchema)
    data: DataSchema = field(default_factory=DataSchema)
    optim: OptimSchema = field(default_factory=OptimSchema)
    loss: LossSchema = field(default_factory=LossSchema)
    trainer: dict[str, Any] = field(default_factory=dict)
    tracking: TrackingSchema = field(default_factory=TrackingSchema)
    eval: EvalSchema = field(default_factory=EvalSchema)
    predict: PredictSchema = field(default_factory=PredictSchema)
    checkpoint: CheckpointSchema = field(default_factory=CheckpointSchema)


TOP_LEVEL_KEYS = [f.name for f in dataclasses.fields(ExperimentSchema)]


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config ({exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: malformed YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping at the top level, got {type(data).__name__}")
    return data


def _load_with_bases(path: Path, chain: tuple[Path, ...]) -> DictConfig:
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise ConfigError(f"{chain[-1]}: 'base:' cycle: {cycle}")
    data = _read_yaml(path)
    bases = data.pop("base", None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    elif not (isinstance(bases, list) and all(isinstance(b, str) for b in bases)):
        raise ConfigError(f"{path}: 'base:' must be a path or a list of paths")
    merged = OmegaConf.create()
    for base in bases:
        merged = OmegaConf.merge(merged, _load_with_bases(path.parent / base, (*chain, path)))
    try:
        return OmegaConf.merge(_without_swapped_slots(merged, data), OmegaConf.create(data))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{path}: {_omegaconf_message(exc)}") from None


def _without_swapped_slots(base: DictConfig, data: dict[str, Any]) -> DictConfig:
    """``base`` less each model slot that ``data`` (a child config or the dotted overrides) gives another
    component ``name``.

    The old component's parameters mean nothing to the new one, so swapping a slot's component starts that slot
    from the given keys only (a slot that keeps its name still merges key by key).
    """
    model = data.get("model")
    if not isinstance(model, dict) or not isinstance(base.get("model"), DictConfig):
        return base
    swapped = [
        slot
        for slot, given in model.items()
        if isinstance(given, dict) and "name" in given
        and isinstance(base.model.get(slot), DictConfig) and base.model[slot].get("name") != given["name"]
    ]
    if not swapped:
        return base
    base = base.copy()
    for slot in swapped:
        base.model[slot] = None
    return base


def _omegaconf_message(exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", None)
    message = str(exc).splitlines()[0]
    return f"{key}: {message}" if key else message


def _apply_overrides(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.path=value")
        key, _ = item.split("=", 1)
        if not key or key.startswith(".") or key.endswith("."):
            raise ConfigError(f"override '{item}': bad key '{key}'")
    try:
        given = OmegaConf.from_dotlist(list(overrides))
        return OmegaConf.merge(_without_swapped_slots(cfg, OmegaConf.to_container(given)), given)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"override: {_omegaconf_message(exc)}") from None


def load_config(path: str | Path, overrides: list[str] | None = None, validate_components: bool = True) -> dict:
    """Load an experiment: bases, overrides, schema validation, interpolation; returns a resolved dict.

    With ``validate_components`` every slot config is also checked against the named component's signature
    (imports the components, so it costs the torch import).
    """
    path = Path(path)
    raw = _apply_overrides(_load_with_bases(path, ()), overrides or [])
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            import difflib

            close = difflib.get_close_matches(str(key), TOP_LEVEL_KEYS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{path}: unknown top-level key '{key}'{hint}; valid: {', '.join(TOP_LEVEL_KEYS)}")
    resolved = with_defaults(raw, source=str(path))
    _check_choices(path, resolved)
    if validate_components:
        from framework.model import check_model_config

        try:
            check_model_config(resolved["model"])
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return resolved


def with_defaults(cfg: dict | DictConfig, source: str = "saved config") -> dict:
    """``cfg`` typed against the schema, every missing key at its default, interpolations resolved. Also how a
    config saved by an earlier version (a checkpoint's) gets the keys added since (e.g. ``optim.ema_decay``: 0, as
    trained). A type error is a ConfigError naming ``source``."""
    try:
        resolved = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(ExperimentSchema), cfg), resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{source}: {_omegaconf_message(exc)}") from None
    assert isinstance(resolved, dict)
    return resolved


def _check_choices(path: Path, cfg: dict) -> None:
    if cfg["optim"]["on_nonfinite"] not in ("stop", "skip"):
        raise ConfigError(f"{path}: optim.on_nonfinite must be 'stop' or 'skip', got {cfg['optim']['on_nonfinite']!r}")
    if not 0 <= cfg["optim"]["ema_decay"] < 1:
        raise ConfigError(f"{path}: optim.ema_decay must be in [0, 1) (0 = off), got {cfg['optim']['ema_decay']}")
    strategy = cfg["trainer"].get("strategy")
    if cfg["optim"]["ema_decay"] and isinstance(strategy, str) and strategy.startswith(("fsdp", "deepspeed")):
        # the average is kept per process over whole tensors; sharded or DeepSpeed-owned weights are neither
        raise ConfigError(f"{path}: optim.ema_decay works with strategy auto, ddp or ddp_spawn, not {strategy}")
    if cfg["checkpoint"]["every_n_steps"] < 0:
        raise ConfigError(f"{path}: checkpoint.every_n_steps must be >= 0, got {cfg['checkpoint']['every_n_steps']}")
    for key in ("train_questions", "eval_questions"):
        if cfg["data"][key] not in ("all", "first"):
            raise ConfigError(f"{path}: data.{key} must be 'all' or 'first', got {cfg['data'][key]!r}")
    from framework.tta import TTA_MODES

    for section in ("eval", "predict"):
        if cfg[section]["tta"] not in TTA_MODES:
            raise ConfigError(f"{path}: {section}.tta must be one of {', '.join(TTA_MODES)}, got {cfg[section]['tta']!r}")
    from framework.data.augment import augment_from_config

    try:
        augment_from_config(cfg["data"]["augment"])
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    for slot in ("encoder", "llm", "projector", "mask_head"):
        if not cfg["model"][slot]:
            raise ConfigError(f"{path}: model.{slot} is missing (needs at least 'name')")


def save_config(cfg: dict, path: str | Path) -> Path:
    """Write the resolved config as YAML; ``load_config`` of that file gives back the same dict."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path
