"""A sweep's MLflow runs (one parent per study, one nested child per trial) and its report.

The report (``<sweep dir>/report/``) answers "which choice is best" with numbers and plots: ``trials.md`` (the
best trial, a table per categorical parameter and per combination of them, every trial with its state), and
Optuna's parameter importances, optimisation history, parallel coordinates and slice plot, each as interactive HTML
(plotly) and PNG (matplotlib, which needs no browser). ``best.yaml`` next to it is the best trial's resolved
experiment config. All of it is logged to the study's parent MLflow run.
"""

from __future__ import annotations

import os
import statistics
import warnings
from pathlib import Path
from typing import Any

import yaml

from framework.sweep.spec import SweepSpec
from framework.sweep.storage import PRUNED_ATTR, redact, sweep_dir
from framework.track.run_info import flatten, run_tags

PARENT_ATTR = "mlflow.parent_run_id"  # study user attribute holding the parent run's id


def _client(spec: SweepSpec):
    tc = spec.base["tracking"]
    if not tc["enabled"]:
        return None
    import mlflow

    return mlflow.MlflowClient(tc["uri"])


def parent_run(spec: SweepSpec, study, storage_url: str) -> str | None:
    """The study's MLflow parent run (created by the first controller, marked RUNNING again on resume)."""
    client = _client(spec)
    if client is None:
        return None
    run_id = study.user_attrs.get(PARENT_ATTR)
    if run_id is not None:
        client.update_run(run_id, status="RUNNING")
        return run_id
    tc = spec.base["tracking"]
    experiment = client.get_experiment_by_name(tc["experiment"])
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        # as framework.track.mlflow_run does: a sqlite store keeps artifacts next to the runs, not in ./mlruns
        location = (Path(os.path.abspath(spec.base["output_dir"])) / "mlartifacts").as_uri() if tc["uri"].startswith("sqlite:") else None
        experiment_id = client.create_experiment(tc["experiment"], artifact_location=location)
    tags = {
        **run_tags(),
        "optuna.study": spec.study,
        "optuna.storage": redact(storage_url),
        "sweep.file": str(spec.path),
        "sweep.experiment": str(spec.experiment),
    }
    run_id = client.create_run(experiment_id, run_name=f"sweep-{spec.study}", tags=tags).info.run_id
    params = flatten({
        "objective": {"metric": spec.metric, "direction": spec.direction},
        "budget": {"n_trials": spec.n_trials, "timeout_s": spec.timeout_s},
        "sampler": spec.sampler,
        "pruner": spec.pruner,
        "space": [p.key for p in spec.space],
    })
    for key, value in params.items():
        client.log_param(run_id, key, value)
    client.log_artifact(run_id, str(spec.path))
    study.set_user_attr(PARENT_ATTR, run_id)
    return run_id


def child_tags(study, trial, params: dict[str, Any]) -> dict[str, str]:
    """Tags of a trial's ``fit`` run: nested under the parent, with the trial number and sampled params."""
    tags = {"optuna.study": study.study_name, "optuna.trial": str(trial.number)}
    parent = study.user_attrs.get(PARENT_ATTR)
    if parent:
        tags["mlflow.parentRunId"] = parent
    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
    retry_of = frozen.system_attrs.get("failed_trial")
    if retry_of is not None:
        tags["optuna.retry_of"] = str(retry_of)
    tags.update({f"optuna.param.{key}": str(value) for key, value in params.items()})
    return tags


def sync_child_runs(spec: SweepSpec, study) -> None:
    """Copy each trial's outcome onto its child run (tags ``optuna.state``, ``optuna.value``, ``optuna.error``);
    a child run still RUNNING although its trial ended (its job was killed with its controller) ends KILLED."""
    client = _client(spec)
    parent = study.user_attrs.get(PARENT_ATTR)
    if client is None or parent is None:
        return
    experiment_id = client.get_run(parent).info.experiment_id
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    runs = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'", max_results=50000)
    for run in runs:
        trial = trials.get(int(run.data.tags.get("optuna.trial", -1)))
        if trial is None:
            continue
        wanted = {"optuna.state": trial.state.name}
        if trial.value is not None:
            wanted["optuna.value"] = f"{trial.value:.6g}"
        if trial.user_attrs.get("error"):
            wanted["optuna.error"] = str(trial.user_attrs["error"])[:5000]
        for key, value in wanted.items():
            if run.data.tags.get(key) != value:
                client.set_tag(run.info.run_id, key, value)
        if trial.state.is_finished() and run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status="KILLED")


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _group_rows(trials: list, keys: list[str]) -> list[list[Any]]:
    """One row per combination of ``keys`` values seen: complete count, best, mean, pruned count."""
    groups: dict[tuple, dict[str, list]] = {}
    for t in trials:
        if t.state.name not in ("COMPLETE", "PRUNED"):
            continue
        key = tuple(t.params.get(k) for k in keys)
        entry = groups.setdefault(key, {"values": [], "pruned": 0})
        if t.state.name == "COMPLETE":
            entry["values"].append(t.value)
        else:
            entry["pruned"] += 1
    rows = []
    for key, entry in groups.items():
        values = entry["values"]
        rows.append([*key, len(values), max(values) if values else None,
                     statistics.fmean(values) if values else None, entry["pruned"]])
    return sorted(rows, key=lambda r: (r[-3] is None, -(r[-3] or 0)))


def trials_markdown(spec: SweepSpec, study, storage: str, best_path: Path | None, notes: list[str]) -> str:
    """The report's text: counts, the best trial, per-choice and per-combination tables, every trial."""

    trials = study.get_trials(deepcopy=False)
    states = [t.state.name for t in trials]
    counts = {s: states.count(s) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")}
    sign = -1 if spec.direction == "maximize" else 1
    lines = [
        f"# Sweep `{spec.study}`: {spec.metric} ({spec.direction})",
        "",
        f"Study `{spec.study}` in `{redact(storage)}`, base experiment `{spec.experiment.name}`: {len(trials)} trials — "
        f"{counts['COMPLETE']} complete, {counts['PRUNED']} pruned, {counts['FAIL']} failed, "
        f"{counts['RUNNING']} running, {counts['WAITING']} waiting; budget {spec.n_trials} complete or pruned.",
        "",
    ]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    if complete:
        best = min(complete, key=lambda t: sign * t.value)
        params = ", ".join(f"`{k}={v}`" for k, v in best.params.items())
        lines += [f"**Best: trial {best.number}, {spec.metric} = {best.value:.4f}** — {params}"
                  + (f" (config: `{best_path}`)" if best_path else ""), ""]
    categorical = [p.key for p in spec.space if p.categorical]
    metric = spec.metric
    stats = ["complete", f"best {metric}", f"mean {metric}", "pruned"]
    if categorical:
        lines += ["## Per choice", "",
                  "Complete trials only in best/mean (a pruned trial stopped early and is only counted).", ""]
        for key in categorical:
            lines += [f"### {key}", "", _table([key, *stats], _group_rows(trials, [key])), ""]
        if len(categorical) > 1:
            lines += ["## Per combination", "", _table([*categorical, *stats], _group_rows(trials, categorical)), ""]
    keys = [p.key for p in spec.space]
    rows = []
    for t in trials:
        note = []
        if t.system_attrs.get("failed_trial") is not None:
            note.append(f"retry of trial {t.system_attrs['failed_trial']}")
        if t.user_attrs.get("enqueued"):
            note.append("enqueued")
        if t.state.name == "PRUNED" and t.user_attrs.get(PRUNED_ATTR) is not None:
            note.append(f"pruned after epoch {t.user_attrs[PRUNED_ATTR]}")
        if t.state.name == "FAIL":
            note.append(str(t.user_attrs.get("error") or "controller lost (heartbeat stale)"))
        rows.append([t.number, t.state.name, t.value, len(t.intermediate_values),
                     *[t.params.get(k) for k in keys], t.user_attrs.get("wall_s"), "; ".join(note)])
    lines += ["## All trials", "",
              _table(["trial", "state", metric, "validations", *keys, "wall s", "note"], rows), ""]
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(lines)


def _plots(spec: SweepSpec, study, out: Path) -> tuple[list[Path], list[str]]:
    """Optuna's plots as HTML (plotly) and PNG (matplotlib); returns the files and notes on plots left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import optuna.visualization as vis
    import optuna.visualization.matplotlib as vis_mpl

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    plots = {
        "history": ("plot_optimization_history", {}),
        "parallel_coordinate": ("plot_parallel_coordinate", {}),
        "slice": ("plot_slice", {"params": spec.slice_params}),
        "importances": ("plot_param_importances", {}),
    }
    files: list[Path] = []
    notes: list[str] = []
    if not complete:
        return files, ["no plots: no complete trial yet"]
    for name, (function, kwargs) in plots.items():
        if name == "importances" and len(complete) < 2:
            notes.append("parameter importances need at least 2 complete trials")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the matplotlib backend is "experimental"
                figure = getattr(vis, function)(study, **kwargs)
                axes = getattr(vis_mpl, function)(study, **kwargs)
        except (ValueError, RuntimeError) as exc:  # e.g. no parameter common to every complete trial
            notes.append(f"{name}: not drawn ({exc})")
            continue
        html, png = out / f"{name}.html", out / f"{name}.png"
        figure.write_html(html, include_plotlyjs="cdn")
        mpl_figure = np.atleast_1d(axes).ravel()[0].figure
        if name == "slice":  # one panel per parameter: room for categorical tick labels
            mpl_figure.set_size_inches(4.5 * len(spec.slice_params) + 1.5, 4.8)
        mpl_figure.savefig(png, dpi=110, bbox_inches="tight")
        plt.close(mpl_figure)
        files += [html, png]
    if "importances.png" in {f.name for f in files}:
        notes.append("importances use only the parameters every complete trial has (conditional ones are left out)")
    return files, notes


def _best_config(spec: SweepSpec, study, path: Path) -> Path | None:
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        return None
    best = study.best_trial
    cfg = yaml.safe_load(best.user_attrs["config"])
    cfg["name"] = f"{spec.study}-best"
    cfg["output_dir"] = spec.base["output_dir"]
    cfg["tracking"]["run_name"] = None
    header = (f"# Best trial {best.number} of sweep {spec.study} ({spec.metric} = {best.value:.4f}): its resolved "
              f"config, with the sweep's trial budget. Re-train: segearth fit {path}\n")
    path.write_text(header + yaml.safe_dump(cfg, sort_keys=False))
    return path


def write_report(spec: SweepSpec, study, storage: str) -> Path:
    """Write ``best.yaml`` and ``report/`` under the sweep folder, log them to the parent run; returns the folder."""

    root = sweep_dir(spec)
    out = root / "report"
    out.mkdir(parents=True, exist_ok=True)
    best_path = _best_config(spec, study, root / "best.yaml")
    files, notes = _plots(spec, study, out)
    markdown = out / "trials.md"
    markdown.write_text(trials_markdown(spec, study, storage, best_path, notes))
    client = _client(spec)
    parent = study.user_attrs.get(PARENT_ATTR)
    if client is not None and parent is not None:
        sync_child_runs(spec, study)
        for path in [markdown, *files]:
            client.log_artifact(parent, str(path), artifact_path="report")
        if best_path is not None:
            client.log_artifact(parent, str(best_path))
            client.log_metric(parent, f"best_{spec.metric}", study.best_value)
            client.set_tag(parent, "optuna.best_trial", str(study.best_trial.number))
        states = [t.state.name for t in study.get_trials(deepcopy=False)]
        for state in ("COMPLETE", "PRUNED", "FAIL"):
            client.log_metric(parent, f"trials_{state.lower()}", states.count(state))
        client.set_terminated(parent, status="FINISHED")
    print(markdown.read_text())
    print(f"report: {out}" + (f"; best config: {best_path}" if best_path else ""))
    return out
