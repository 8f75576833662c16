"""Sweep YAML: the base experiment, objective, budget, sampler, pruner and a search space in config.

``load_sweep`` validates the whole file up front (every component choice and every enqueued trial is turned into
an experiment config and checked by ``load_config``), so a bad sweep fails in one line before any trial runs.

Search space entries are keyed by the dotted config key they set (which is also the Optuna parameter name):

- ``{type: categorical, choices: [...]}``: any scalar choices (numbers, strings, bools, null);
- ``{type: int, low, high, step: 1, log: false}`` and ``{type: float, low, high, step: null, log: false}``;
- ``{type: component, choices: {name: {fixed slot keys}}}`` on a ``model.<slot>.name`` key: the slot's mapping is
  replaced by ``{name: <choice>, **fixed keys}`` (components take different parameters, so nothing of the base
  slot survives a switch);
- ``when: {earlier.param: [values]}`` on any entry makes it conditional: it is sampled (and set) only in trials
  where every named earlier parameter took one of the listed values.
"""

from __future__ import annotations

import copy
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from framework.core.config import _read_yaml, load_config
from framework.core.errors import ConfigError

SAMPLERS = ("tpe", "random")
PRUNERS = {
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "threshold": "ThresholdPruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "hyperband": "HyperbandPruner",
    "nop": "NopPruner",
}
TOP_KEYS = ("study", "experiment", "overrides", "objective", "budget", "sampler", "pruner", "faults", "space",
            "enqueue", "report")
PARAM_TYPES = ("categorical", "int", "float", "component")
Scalar = (str, int, float, bool, type(None))


@dataclass
class Param:
    """One search-space entry (``key`` is both the dotted config key and the Optuna parameter name)."""

    key: str
    type: str
    choices: list[Any] = field(default_factory=list)  # categorical values / component names
    fixed: dict[str, dict[str, Any]] = field(default_factory=dict)  # component: fixed slot keys per choice
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    when: dict[str, list[Any]] = field(default_factory=dict)

    def applies(self, params: dict[str, Any]) -> bool:
        """Whether this parameter exists in a trial whose earlier parameters are ``params``."""
        return all(name in params and params[name] in values for name, values in self.when.items())

    def suggest(self, trial) -> Any:
        """Ask an ``optuna.trial.Trial`` for this parameter's value."""
        if self.type in ("categorical", "component"):
            return trial.suggest_categorical(self.key, self.choices)
        if self.type == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def contains(self, value: Any) -> bool:
        if self.type in ("categorical", "component"):
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.type == "int" and not isinstance(value, int):
            return False
        return self.low <= value <= self.high

    @property
    def categorical(self) -> bool:
        return self.type in ("categorical", "component")


@dataclass
class SweepSpec:
    path: Path
    study: str
    experiment: Path
    base: dict[str, Any]  # resolved base experiment with ``overrides`` applied
    metric: str  # e.g. val/giou
    direction: str  # maximize | minimize
    n_trials: int
    timeout_s: float | None
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    heartbeat_s: int
    grace_s: int
    max_retry: int
    storage_retry_s: float  # how long controllers and jobs wait out an unreachable database before they give up
    space: list[Param]
    enqueue: list[dict[str, Any]]
    slice_params: list[str]

    @property
    def fit_key(self) -> str:
        """The key of the objective in ``fit.json``'s ``val`` mapping."""
        return self.metric.split("/", 1)[1]

    def param(self, key: str) -> Param:
        return next(p for p in self.space if p.key == key)


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _only(section: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(allowed)}")


def _number(value: Any, where: str, integer: bool = False, positive: bool = False) -> Any:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or (isinstance(value, float) and not math.isfinite(value)):
        raise ConfigError(f"{where}: expected {'an integer' if integer else 'a number'}, got {value!r}")
    if positive and value <= 0:
        raise ConfigError(f"{where}: must be > 0, got {value!r}")
    return value


def set_key(cfg: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key in a nested config dict, creating mappings on the way (a null slot becomes a mapping)."""
    *parents, last = key.split(".")
    node = cfg
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[last] = copy.deepcopy(value)


def apply_params(base: dict[str, Any], space: list[Param], params: dict[str, Any]) -> dict[str, Any]:
    """The experiment config of one trial: ``base`` with the sampled ``params`` set, in search-space order."""
    cfg = copy.deepcopy(base)
    for param in space:
        if param.key not in params:
            continue
        value = params[param.key]
        if param.type == "component":
            slot = param.key.rsplit(".", 1)[0]
            set_key(cfg, slot, {"name": value, **param.fixed[value]})
        else:
            set_key(cfg, param.key, value)
    return cfg


def sample(trial, space: list[Param]) -> dict[str, Any]:
    """Suggest every parameter that applies, in order (conditions look at earlier parameters only)."""
    params: dict[str, Any] = {}
    for param in space:
        if param.applies(params):
            params[param.key] = param.suggest(trial)
    return params


def _parse_param(key: str, raw: Any, earlier: dict[str, Param]) -> Param:
    where = f"space.{key}"
    raw = _mapping(raw, where)
    kind = raw.get("type")
    if kind not in PARAM_TYPES:
        raise ConfigError(f"{where}.type: one of {', '.join(PARAM_TYPES)}, got {kind!r}")
    common = ("type", "when")
    param = Param(key=key, type=kind)
    if kind == "categorical":
        _only(raw, (*common, "choices"), where)
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices or not all(isinstance(c, Scalar) for c in choices):
            raise ConfigError(f"{where}.choices: a non-empty list of scalars (numbers, strings, bools, null)")
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"{where}.choices: repeated values in {choices}")
        param.choices = list(choices)
    elif kind == "component":
        _only(raw, (*common, "choices"), where)
        parts = key.split(".")
        if len(parts) != 3 or parts[0] != "model" or parts[2] != "name":
            raise ConfigError(f"{where}: a component choice is keyed model.<slot>.name, e.g. model.projector.name")
        choices = raw.get("choices")
        if not isinstance(choices, dict) or not choices:
            raise ConfigError(f"{where}.choices: a mapping of component name -> its fixed slot keys ({{}} for none)")
        for name, fixed in choices.items():
            fixed = _mapping(fixed, f"{where}.choices.{name}")
            if "name" in fixed:
                raise ConfigError(f"{where}.choices.{name}: 'name' is the choice itself, not a fixed key")
            param.fixed[str(name)] = fixed
        param.choices = list(param.fixed)
    else:
        _only(raw, (*common, "low", "high", "step", "log"), where)
        integer = kind == "int"
        for bound in ("low", "high"):
            if bound not in raw:
                raise ConfigError(f"{where}: needs '{bound}'")
        param.low = _number(raw["low"], f"{where}.low", integer)
        param.high = _number(raw["high"], f"{where}.high", integer)
        if param.low >= param.high:
            raise ConfigError(f"{where}: low ({param.low}) must be < high ({param.high})")
        param.log = raw.get("log", False)
        if not isinstance(param.log, bool):
            raise ConfigError(f"{where}.log: expected true or false, got {param.log!r}")
        if param.log and param.low <= 0:
            raise ConfigError(f"{where}: a log scale needs low > 0, got {param.low}")
        if raw.get("step") is not None:
            param.step = _number(raw["step"], f"{where}.step", integer, positive=True)
            if param.log:
                raise ConfigError(f"{where}: step and log cannot be combined (Optuna samples log scales continuously)")
    for name, values in _mapping(raw.get("when"), f"{where}.when").items():
        if name not in earlier:
            raise ConfigError(f"{where}.when: '{name}' is not an earlier parameter of the space (conditions look back)")
        if not earlier[name].categorical:
            raise ConfigError(f"{where}.when: '{name}' is {earlier[name].type}; conditions need a categorical/component")
        values = values if isinstance(values, list) else [values]
        bad = [v for v in values if v not in earlier[name].choices]
        if bad:
            raise ConfigError(f"{where}.when.{name}: {bad} not among its choices {earlier[name].choices}")
        param.when[name] = values
    return param


def _parse_enqueued(raw: Any, space: list[Param], index: int) -> dict[str, Any]:
    where = f"enqueue[{index}]"
    raw = _mapping(raw, where)
    keys = {p.key: p for p in space}
    unknown = sorted(set(raw) - set(keys))
    if unknown:
        raise ConfigError(f"{where}: {', '.join(unknown)} not in the search space")
    params: dict[str, Any] = {}
    for param in space:
        if param.key not in raw:
            continue
        if not param.applies(params):
            raise ConfigError(f"{where}: {param.key} does not apply here (only when {param.when})")
        if not param.contains(raw[param.key]):
            raise ConfigError(f"{where}: {param.key}={raw[param.key]!r} is outside its search space")
        params[param.key] = raw[param.key]
    return params


def _check_experiment(cfg: dict[str, Any], where: str) -> None:
    """Run ``load_config`` (schema, component signatures) on a trial config, naming ``where`` on failure."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trial.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        try:
            load_config(path)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {str(exc).replace(str(path) + ': ', '')}") from None


def _representative(space: list[Param], fixed: dict[str, Any]) -> dict[str, Any]:
    """Params with ``fixed`` values first, every other applicable parameter at its first choice / low bound."""
    params: dict[str, Any] = {}
    for param in space:
        if not param.applies(params):
            continue
        params[param.key] = fixed.get(param.key, param.choices[0] if param.categorical else param.low)
    return params


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep YAML; every trial config it can produce is checked against the schema."""
    path = Path(path)
    raw = _read_yaml(path)
    _only(raw, TOP_KEYS, str(path))
    if not isinstance(raw.get("experiment"), str):
        raise ConfigError(f"{path}: 'experiment' must name the base experiment YAML (relative to the sweep file)")
    experiment = (path.parent / raw["experiment"]).resolve()
    if not experiment.is_file():
        raise ConfigError(f"{path}: experiment: {experiment} not found")
    base = load_config(experiment, validate_components=False)
    for key, value in _mapping(raw.get("overrides"), "overrides").items():
        set_key(base, str(key), value)

    objective = _mapping(raw.get("objective"), "objective")
    _only(objective, ("metric", "direction"), "objective")
    metric = objective.get("metric", "val/giou")
    if not isinstance(metric, str) or not metric.startswith("val/") or metric == "val/":
        raise ConfigError(f"objective.metric: a validation metric 'val/<name>' (e.g. val/giou), got {metric!r}")
    direction = objective.get("direction", "maximize")
    if direction not in ("maximize", "minimize"):
        raise ConfigError(f"objective.direction: 'maximize' or 'minimize', got {direction!r}")

    budget = _mapping(raw.get("budget"), "budget")
    _only(budget, ("n_trials", "timeout_s"), "budget")
    if "n_trials" not in budget:
        raise ConfigError("budget.n_trials: required (trials that end COMPLETE or PRUNED, over all workers)")
    n_trials = _number(budget["n_trials"], "budget.n_trials", integer=True, positive=True)
    timeout = budget.get("timeout_s")
    timeout = None if timeout is None else _number(timeout, "budget.timeout_s", positive=True)

    sampler = dict(_mapping(raw.get("sampler"), "sampler")) or {"name": "tpe"}
    if sampler.get("name") not in SAMPLERS:
        raise ConfigError(f"sampler.name: one of {', '.join(SAMPLERS)}, got {sampler.get('name')!r}")
    pruner = dict(_mapping(raw.get("pruner"), "pruner")) or {"name": "nop"}
    if pruner.get("name") not in PRUNERS:
        raise ConfigError(f"pruner.name: one of {', '.join(PRUNERS)}, got {pruner.get('name')!r}")
    make_sampler(sampler, 0), make_pruner(pruner)  # options are checked by constructing them once

    faults = _mapping(raw.get("faults"), "faults")
    _only(faults, ("heartbeat_s", "grace_s", "max_retry", "storage_retry_s"), "faults")
    heartbeat_s = _number(faults.get("heartbeat_s", 10), "faults.heartbeat_s", integer=True, positive=True)
    grace_s = _number(faults.get("grace_s", 6 * heartbeat_s), "faults.grace_s", integer=True, positive=True)
    if grace_s <= heartbeat_s:
        raise ConfigError(f"faults.grace_s ({grace_s}) must exceed faults.heartbeat_s ({heartbeat_s})")
    max_retry = _number(faults.get("max_retry", 2), "faults.max_retry", integer=True)
    storage_retry_s = _number(faults.get("storage_retry_s", 120), "faults.storage_retry_s", positive=True)

    space_raw = _mapping(raw.get("space"), "space")
    if not space_raw:
        raise ConfigError(f"{path}: 'space' is empty; give at least one parameter")
    space: list[Param] = []
    for key, entry in space_raw.items():
        space.append(_parse_param(str(key), entry, {p.key: p for p in space}))
    enqueue_raw = raw.get("enqueue") or []
    if not isinstance(enqueue_raw, list):
        raise ConfigError("enqueue: a list of trials (mappings of parameter -> value), run first, in order")
    enqueue = [_parse_enqueued(entry, space, i) for i, entry in enumerate(enqueue_raw)]

    report = _mapping(raw.get("report"), "report")
    _only(report, ("slice",), "report")
    slice_params = report.get("slice") or [p.key for p in space]
    missing = [k for k in slice_params if k not in {p.key for p in space}]
    if missing:
        raise ConfigError(f"report.slice: {', '.join(map(str, missing))} not in the search space")

    _check_experiment(base, f"{path}: base experiment with overrides")
    for i, params in enumerate(enqueue):
        _check_experiment(apply_params(base, space, _representative(space, params)), f"{path}: enqueue[{i}]")
    for param in space:
        for choice in param.choices if param.type == "component" else []:
            params = _representative(space, {param.key: choice})
            _check_experiment(apply_params(base, space, params), f"{path}: space.{param.key} choice {choice!r}")

    study = raw.get("study", path.stem)
    if not isinstance(study, str) or not study:
        raise ConfigError(f"study: a non-empty name, got {study!r}")
    return SweepSpec(
        path=path,
        study=study,
        experiment=experiment,
        base=base,
        metric=metric,
        direction=direction,
        n_trials=n_trials,
        timeout_s=timeout,
        sampler=sampler,
        pruner=pruner,
        heartbeat_s=heartbeat_s,
        grace_s=grace_s,
        max_retry=max_retry,
        storage_retry_s=storage_retry_s,
        space=space,
        enqueue=enqueue,
        slice_params=list(slice_params),
    )


def make_sampler(options: dict[str, Any], seed_offset: int):
    """An Optuna sampler from ``{name, seed, **options}``; the seed is shifted by ``seed_offset`` (the trial
    number), so parallel workers with the same history still draw different trials, reproducibly."""
    import optuna

    options = dict(options)
    name = options.pop("name")
    seed = options.pop("seed", None)
    seed = None if seed is None else _number(seed, "sampler.seed", integer=True) + seed_offset
    cls = optuna.samplers.TPESampler if name == "tpe" else optuna.samplers.RandomSampler
    try:
        return cls(seed=seed, **options)
    except TypeError as exc:
        raise ConfigError(f"sampler ({name}): {exc}") from None


def make_pruner(options: dict[str, Any]):
    """An Optuna pruner from ``{name, **options}`` (warm-up and start-up counts are in validation epochs)."""
    import optuna

    options = dict(options)
    name = options.pop("name")
    try:
        return getattr(optuna.pruners, PRUNERS[name])(**options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"pruner ({name}): {exc}") from None
