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

from framework.core.errors import ConfigError
from framework.core.slots import DEFAULT_READOUT, SLOT_NAMES, SLOT_SPECS


@dataclass
class ModelSchema:
    """One mapping per slot: ``{name: <registered name>, frozen: bool, **component kwargs}``."""

    encoder: dict[str, Any] = field(default_factory=dict)
    compressor: Optional[dict[str, Any]] = None
    llm: dict[str, Any] = field(default_factory=dict)
    projector: dict[str, Any] = field(default_factory=dict)
    mask_head: dict[str, Any] = field(default_factory=dict)
    # How the head is asked and its answers become one mask per question: {name: query} (the projector's queries),
    # concept_teacher or concept_choice with their concepts (framework/core/readout.py)
    readout: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_READOUT))
    # The "no target" decision, {name: mask_statistics, ...} (framework/core/target.py); null = the reference's: an
    # answer has no target only when its mask is empty
    target_decision: Optional[dict[str, Any]] = None


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
    augment: Optional[dict[str, Any]] = None  # train split only; keys and meaning: AUGMENT_OPTIONS below


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
    presence_weight: float = 0.0  # image-level BCE on each mask's largest logit (framework/train/losses.py); 0 = reference
    competition_weight: float = 0.0  # per-pixel softmax across the questions of one image (framework/train/losses.py)
    concept_query_weight: float = 1.0  # concept read-outs: MSE of the projector's query to its concept's query
    # the targets read-out: its matched queries' masks (BCE + Dice) and every query's objectness (framework/train/matching.py)
    target_mask_weight: float = 5.0
    target_score_weight: float = 2.0


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
    # fit, a server that stops answering: its logging is kept; a kept call tries the server again every retry_s,
    # and at the end waits final_wait_s for it before the metrics it never got go to the run folder
    retry_s: float = 15.0
    final_wait_s: float = 300.0


@dataclass
class EvalSchema:
    threshold: float = 0.0  # logit threshold (0 = sigmoid 0.5, as the reference)
    target_threshold: float = 0.5  # model.target_decision: an answer below this target probability is "no target"
    tta: str = "none"  # val/test: "none" | "flips" (4 views) | "dihedral" (8): mean logits (framework/eval/tta.py)
    shuffled_control: bool = True
    shuffle_seed: int = 0
    # `segearth test` of a model with visual tokens: also answer each question with another image's visual tokens
    image_blind_control: bool = True
    native: bool = True  # also score each image at its native resolution (logits cut out of the letterbox, resized)
    overlays: int = 8  # `segearth test`: PNG overlays of the first N test samples (0 = none)


@dataclass
class PredictSchema:
    """Inference on user imagery (``segearth predict``, ``framework.infer.predictor``): how scenes are tiled."""

    tiling: str = "auto"  # "auto": tile images with a side > tile_size; "always"; "never" (letterbox the whole image)
    tile_size: Optional[int] = None  # tile side in native pixels; None = data.image_size (training frame size)
    overlap: float = 0.25  # fraction of the tile shared with each neighbour; logits are blended there
    tile_batch: int = 4  # tiles encoded at once: bounds memory together with the scene-sized output
    tta: str = "none"  # "none" | "flips" | "dihedral": each tile seen in 4 or 8 views, mean logits (framework/eval/tta.py)
    answer_tokens: int = 32  # most tokens of the answer text (greedy) of a model trained with the LM loss; 0: none
    # an answer's targets (predict and the per-target metric of test): "auto" = the model's target queries when it
    # has them (one-tile images), else the connected regions of the answer mask; "regions" = always the regions
    targets: str = "auto"


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
            OmegaConf.from_dotlist([item])
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            value = item.split("=", 1)[1]
            raise ConfigError(
                f"override '{item}': the value is not valid YAML ({problem}); quote it for YAML inside the shell's "
                f"quotes: \"{key}='{value}'\""
            ) from None
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
    try:
        validate(resolved)
        if validate_components:
            # the components' signatures: importing them costs the torch import, which --help must not pay
            from framework.core.model import check_model_config

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


TTA_MODES = ("none", "flips", "dihedral")  # the views of each: framework/eval/tta.py
TARGET_MODES = ("auto", "regions")
TILING_MODES = ("auto", "always", "never")
QUESTION_MODES = ("all", "first")
BAD_SAMPLE_MODES = ("error", "skip")
NONFINITE_MODES = ("stop", "skip")
# data.augment: every key with the value it has when not given (meaning: framework/data/augment.py)
AUGMENT_OPTIONS: dict[str, Any] = {
    "hflip": 0.0,
    "vflip": 0.0,
    "rot90": 0.0,
    "color": 0.0,
    "scale": None,
    "translate": 0.0,
    "keep_target": True,
    "directional": "rewrite",
}
DIRECTIONAL_MODES = ("rewrite", "skip")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _choice(where: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{where}: expected one of {', '.join(choices)}, got {value!r}")


def _at_least(where: str, value: Any, low: float) -> None:
    if not _number(value) or value < low:
        raise ConfigError(f"{where}: expected a number >= {low:g}, got {value!r}")


def _fraction(where: str, value: Any, closed: bool = True) -> None:
    """``value`` in [0, 1] (``closed``) or [0, 1)."""
    if not _number(value) or not (0 <= value <= 1 if closed else 0 <= value < 1):
        raise ConfigError(f"{where}: expected a fraction in [0, 1{']' if closed else ')'}, got {value!r}")


def check_augment(cfg: Any) -> dict[str, Any] | None:
    """``data.augment`` with every key (``AUGMENT_OPTIONS``) checked and filled in; None when empty (no augmentation).
    Unknown keys and bad values: ConfigError."""
    if not cfg:
        return None
    if not isinstance(cfg, dict):
        raise ConfigError(f"data.augment: expected a mapping with keys {', '.join(AUGMENT_OPTIONS)}, got {cfg!r}")
    unknown = [key for key in cfg if key not in AUGMENT_OPTIONS]
    if unknown:
        raise ConfigError(f"data.augment: unknown key {unknown[0]!r}; valid: {', '.join(AUGMENT_OPTIONS)}")
    options = {**AUGMENT_OPTIONS, **cfg}
    for key in ("hflip", "vflip", "rot90", "color"):
        if not _number(options[key]) or not 0 <= options[key] <= 1:
            raise ConfigError(f"data.augment.{key}: expected a probability in [0, 1], got {options[key]!r}")
        options[key] = float(options[key])
    scale = options["scale"]
    if scale is not None:
        if not (isinstance(scale, (list, tuple)) and len(scale) == 2 and all(_number(v) for v in scale)) or not (
            0 < scale[0] <= scale[1]
        ):
            raise ConfigError(f"data.augment.scale: expected [low, high] zoom factors with 0 < low <= high, got {scale!r}")
        options["scale"] = (float(scale[0]), float(scale[1]))
    if not _number(options["translate"]) or not 0 <= options["translate"] < 1:
        raise ConfigError(f"data.augment.translate: expected a fraction in [0, 1), got {options['translate']!r}")
    options["translate"] = float(options["translate"])
    if not isinstance(options["keep_target"], bool):
        raise ConfigError(f"data.augment.keep_target: expected true or false, got {options['keep_target']!r}")
    _choice("data.augment.directional", options["directional"], DIRECTIONAL_MODES)
    return options


def check_predict(options: dict[str, Any]) -> None:
    """The ``predict`` section (or the options that override it)."""
    _choice("predict.tiling", options["tiling"], TILING_MODES)
    if options["tile_size"] is not None and (not _number(options["tile_size"]) or options["tile_size"] < 1):
        raise ConfigError(f"predict.tile_size: must be a positive number of pixels, got {options['tile_size']}")
    _fraction("predict.overlap", options["overlap"], closed=False)
    _at_least("predict.tile_batch", options["tile_batch"], 1)
    _choice("predict.tta", options["tta"], TTA_MODES)
    _at_least("predict.answer_tokens", options["answer_tokens"], 0)
    _choice("predict.targets", options["targets"], TARGET_MODES)


def _check_optim(cfg: dict[str, Any]) -> None:
    oc = cfg["optim"]
    _choice("optim.on_nonfinite", oc["on_nonfinite"], NONFINITE_MODES)
    if not 0 <= oc["ema_decay"] < 1:
        raise ConfigError(f"optim.ema_decay must be in [0, 1) (0 = off), got {oc['ema_decay']}")
    strategy = cfg["trainer"].get("strategy")
    if oc["ema_decay"] and isinstance(strategy, str) and strategy.startswith(("fsdp", "deepspeed")):
        # the average is kept per process over whole tensors; sharded or DeepSpeed-owned weights are neither
        raise ConfigError(f"optim.ema_decay works with strategy auto, ddp or ddp_spawn, not {strategy}")
    betas = oc["betas"]
    if not (isinstance(betas, list) and len(betas) == 2 and all(_number(b) and 0 <= b < 1 for b in betas)):
        raise ConfigError(f"optim.betas: expected [beta1, beta2], each in [0, 1), got {betas!r}")
    _at_least("optim.lr", oc["lr"], 0)
    _at_least("optim.weight_decay", oc["weight_decay"], 0)
    _fraction("optim.warmup_ratio", oc["warmup_ratio"], closed=False)
    _fraction("optim.min_lr_ratio", oc["min_lr_ratio"])
    unknown = sorted(set(oc["slot_lr_scale"]) - set(SLOT_NAMES))
    if unknown:
        raise ConfigError(f"optim.slot_lr_scale: unknown slot(s) {unknown}; slots: {', '.join(SLOT_NAMES)}")
    for slot, scale in oc["slot_lr_scale"].items():
        _at_least(f"optim.slot_lr_scale.{slot}", scale, 0)


def _check_data(cfg: dict[str, Any]) -> None:
    dc = cfg["data"]
    for key in ("train_questions", "eval_questions"):
        _choice(f"data.{key}", dc[key], QUESTION_MODES)
    _choice("data.on_bad_sample", dc["on_bad_sample"], BAD_SAMPLE_MODES)
    for key in ("image_size", "batch_size", "eval_batch_size", "questions_per_image"):
        _at_least(f"data.{key}", dc[key], 1)
    _at_least("data.num_workers", dc["num_workers"], 0)
    if dc["batch_size"] % dc["questions_per_image"]:
        raise ConfigError(
            f"data.questions_per_image: {dc['questions_per_image']} must divide data.batch_size ({dc['batch_size']})"
        )
    check_augment(dc["augment"])


LOSS_WEIGHTS = ("bce_weight", "dice_weight", "pos_balance", "lm_weight", "presence_weight", "competition_weight",
                "concept_query_weight")


def _check_loss(lc: dict[str, Any]) -> None:
    for key in LOSS_WEIGHTS:
        _at_least(f"loss.{key}", lc[key], 0)
    _at_least("loss.num_points", lc["num_points"], 1)
    _at_least("loss.oversample_ratio", lc["oversample_ratio"], 1)
    _fraction("loss.importance_sample_ratio", lc["importance_sample_ratio"])


# numeric Lightning Trainer arguments and the least value each takes (-1: no limit); None (Lightning's default) passes
TRAINER_MINIMUMS = {"max_epochs": -1, "min_epochs": 0, "max_steps": -1, "min_steps": 0, "accumulate_grad_batches": 1,
                    "check_val_every_n_epoch": 1, "num_sanity_val_steps": -1, "log_every_n_steps": 0,
                    "gradient_clip_val": 0, "limit_train_batches": 0, "limit_val_batches": 0, "limit_test_batches": 0,
                    "limit_predict_batches": 0}


def _check_trainer(tc: dict[str, Any]) -> None:
    """The numeric ``trainer`` arguments Lightning would take and only fail on mid-fit (a division by zero) or
    with a traceback; the rest is checked by building a Trainer (``framework.train.strategies.trainer_kwargs``)."""
    for key, low in TRAINER_MINIMUMS.items():
        if tc.get(key) is not None:
            _at_least(f"trainer.{key}", tc[key], low)
    interval = tc.get("val_check_interval")
    if interval is not None and (not _number(interval) or interval <= 0):
        raise ConfigError(f"trainer.val_check_interval: expected a number > 0 (a fraction of an epoch or a number "
                          f"of batches), got {interval!r}")


def validate(cfg: dict[str, Any]) -> None:
    """Every section of a resolved config checked for what can be known without building anything; with
    ``check_model_config`` (the components' signatures) that is the whole load-time validation."""
    for slot in SLOT_NAMES:
        if not SLOT_SPECS[slot].optional and not cfg["model"][slot]:
            raise ConfigError(f"model.{slot} is missing (needs at least 'name')")
    _check_optim(cfg)
    _check_data(cfg)
    _check_loss(cfg["loss"])
    _check_trainer(cfg["trainer"])
    if not _number(cfg["seed"]) or not 0 <= cfg["seed"] < 2**32:
        raise ConfigError(f"seed: expected an integer in [0, 2**32), got {cfg['seed']!r}")
    _at_least("checkpoint.every_n_steps", cfg["checkpoint"]["every_n_steps"], 0)
    _choice("eval.tta", cfg["eval"]["tta"], TTA_MODES)
    _at_least("eval.overlays", cfg["eval"]["overlays"], 0)
    _fraction("eval.target_threshold", cfg["eval"]["target_threshold"])
    for key in ("val_overlays", "retry_s", "final_wait_s"):
        _at_least(f"tracking.{key}", cfg["tracking"][key], 0)
    check_predict(cfg["predict"])


def save_config(cfg: dict, path: str | Path) -> Path:
    """Write the resolved config as YAML; ``load_config`` of that file gives back the same dict."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path
