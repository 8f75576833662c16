"""``segearth sweep``: Optuna studies over experiment configs, one training process per trial.

A controller (worker) asks Optuna for a trial, writes the trial's experiment config, runs ``segearth fit`` on it as
a separate process, reads ``fit.json`` and tells Optuna the result. Separate processes keep multi-GPU trials
correct: under plain DDP every rank would run the objective and draw different hyperparameters, while a trial's
job here reads one config file on every rank. The job (``segearth fit --sweep-trial trial.json``) reports the
monitored validation metric for pruning through the callbacks of ``framework.sweep.trial``.

Storage is any SQLAlchemy URL (default ``sqlite:///optuna.db`` in the working directory); ``--workers N`` runs N
controllers on one study, and controllers on other machines join by using the same PostgreSQL URL. The study is
loaded if it exists, so re-running the command resumes it. A controller records a heartbeat for its running trial;
a trial whose controller died (killed, machine lost) goes stale after ``faults.grace_s`` and is failed and
re-queued with the same parameters (``RetryHeartbeatStaleTrialCallback``) by the next controller that looks. The
budget counts trials that end COMPLETE or PRUNED, so a killed or crashed trial never uses it up and none is
counted twice; a trial whose job fails (e.g. out of memory) is FAILED with its error as user attribute ``error``.

A database that restarts under the sweep is waited out (``retry_storage``, up to ``faults.storage_retry_s``) by
the controllers, their heartbeats and the jobs alike, so running trials go on; for one grace period after such an
outage a controller fails no trial as stale, since every heartbeat is old then and the trials' owners need a
moment to record a new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from framework.core.config import load_config, save_config
from framework.core.errors import ConfigError, UserError
from framework.sweep.report import child_tags, parent_run, sync_child_runs, write_report
from framework.sweep.spec import SweepSpec, apply_params, load_sweep, make_pruner, make_sampler, sample
from framework.sweep.storage import (
    COUNTED,
    DEFAULT_STORAGE,
    PRUNED_ATTR,
    open_rdb,
    redact,
    retry_storage,
    study_lock,
    sweep_dir,
    unreachable_within,
    unusable,
)

TRIAL_FILE = "trial.json"  # in the trial's folder: what its job needs (``segearth fit --sweep-trial``)


class Heartbeat:
    """Records the trial's heartbeat every ``interval`` seconds in a thread while the job runs; a lost database is
    waited out for ``retry_s`` (after that the thread ends, and the trial goes stale as if its worker were lost)."""

    def __init__(self, storage, trial_id: int, interval: int, retry_s: float) -> None:
        self.storage, self.trial_id, self.interval, self.retry_s = storage, trial_id, interval, retry_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            retry_storage(lambda: self.storage.record_heartbeat(self.trial_id), self.retry_s)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _error_line(log: Path, returncode: int) -> str:
    """The line that says why a job failed: its ``segearth: error:`` line or last exception line."""
    if returncode < 0:
        return f"killed by signal {-returncode} (the out-of-memory killer sends SIGKILL = 9)"
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()] if log.exists() else []
    for line in reversed(lines):
        if line.startswith("segearth: error:") or re.match(r"^[\w.]*(Error|Exception|Interrupt)\b.*", line):
            return line[:1000]
    return lines[-1][:1000] if lines else f"exit status {returncode}, no output"


class Controller:
    """One worker on one study: asks for trials, runs their jobs, tells the results, until the budget is spent."""

    def __init__(self, spec: SweepSpec, storage_url: str) -> None:
        self.spec = spec
        self.url = storage_url
        self.dir = sweep_dir(spec)
        self.storage = None
        self.study = None
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def lock(self):
        return study_lock(self.url, self.spec.study, self.dir)

    def _retry(self, call):
        """``call()`` (storage calls that are safe to repeat), waiting out a lost database connection."""
        return retry_storage(call, self.spec.storage_retry_s)

    def _set_attrs(self, trial, **attrs: Any) -> None:
        """Set user attributes of ``trial``; a lost connection repeats them all (setting one twice is harmless)."""

        def set_all() -> None:
            for key, value in attrs.items():
                trial.set_user_attr(key, value)

        self._retry(set_all)

    def open(self):
        """Create or load the study; the first controller enqueues the fixed trials and opens the MLflow parent."""
        import sqlalchemy

        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self._create_or_load()
        except sqlalchemy.exc.OperationalError as exc:  # no server at the start is a wrong URL more often than not
            raise unusable(self.url, exc) from None
        return self.study

    def _create_or_load(self) -> None:
        import optuna

        with self.lock():
            self.storage = open_rdb(self.url, self.spec)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.study = optuna.create_study(
                    study_name=self.spec.study,
                    storage=self.storage,
                    direction=self.spec.direction,
                    pruner=make_pruner(self.spec.pruner),
                    load_if_exists=True,
                )
            if self.study.direction.name.lower() != self.spec.direction:
                raise ConfigError(
                    f"objective.direction: study '{self.spec.study}' in {redact(self.url)} was created to "
                    f"{self.study.direction.name.lower()}; use another study name"
                )
            if "segearth.sweep" not in self.study.user_attrs:
                for params in self.spec.enqueue:
                    self.study.enqueue_trial(params, user_attrs={"enqueued": True})
                self.study.set_user_attr("segearth.sweep", str(self.spec.path))
                self.study.set_user_attr("metric", self.spec.metric)
            parent_run(self.spec, self.study, self.url)

    def _next_trial(self, deadline: float | None):
        """A trial to run now (a waiting one first), None to wait for other workers' trials, or False when done.

        A connection lost on the way (the lock's or the storage's) repeats the whole bookkeeping under a new lock:
        counts made under a lock that is gone may be stale."""
        return self._retry(lambda: self._count_and_ask(deadline))

    def _count_and_ask(self, deadline: float | None):
        import optuna
        from optuna.trial import TrialState

        with self.lock() as still_locked:
            if not unreachable_within(self.spec.grace_s):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(self.study)
            trials = self.study.get_trials(deepcopy=False)
            counted = sum(t.state.name in COUNTED for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            if counted >= self.spec.n_trials or (deadline is not None and time.time() > deadline):
                return False
            if counted + running >= self.spec.n_trials:
                return None  # the rest of the budget is running elsewhere: wait, it may fail and be re-queued
            self.study.sampler = make_sampler(self.spec.sampler, len(trials))
            still_locked()
            with warnings.catch_warnings():
                # heartbeats are ours (``Heartbeat``), not Study.optimize's
                warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
                trial = self.study.ask()
            # before the lock opens: never RUNNING without one; the trial exists now, so only this is repeated
            self._retry(lambda: self.storage.record_heartbeat(trial._trial_id))
            return trial

    def run(self) -> None:
        """Run trials until the study has ``n_trials`` COMPLETE or PRUNED trials or the timeout passes."""
        deadline = time.time() + self.spec.timeout_s if self.spec.timeout_s else None
        while True:
            trial = self._next_trial(deadline)
            if trial is False:
                return
            if trial is None:
                time.sleep(min(self.spec.heartbeat_s, 5))
                continue
            self._run_trial(trial)

    def _trial_config(self, trial, params: dict[str, Any]) -> dict[str, Any]:
        cfg = apply_params(self.spec.base, self.spec.space, params)
        cfg["name"] = f"trial-{trial.number:04d}"
        cfg["output_dir"] = str(self.dir)
        cfg["tracking"]["run_name"] = f"{self.spec.study}-trial-{trial.number}"
        return cfg

    def _run_trial(self, trial) -> None:
        """Run one asked trial to its end and tell Optuna; a controller bug fails the trial before it propagates."""
        from optuna.trial import TrialState

        started = time.time()
        with Heartbeat(self.storage, trial._trial_id, self.spec.heartbeat_s, self.spec.storage_retry_s):
            try:
                params, state, value, log_path = self._execute(trial)
            except BaseException as exc:
                interrupted = isinstance(exc, KeyboardInterrupt)
                self._set_attrs(trial, error="interrupted (Ctrl-C)" if interrupted else repr(exc))
                self._retry(lambda: self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True))
                raise
            self._set_attrs(trial, wall_s=round(time.time() - started, 1))
            # a tell repeated after its reply was lost finds the trial finished by the first one: skip_if_finished
            frozen = self._retry(lambda: self.study.tell(trial, value, state=state, skip_if_finished=True))
        self._retry(lambda: sync_child_runs(self.spec, self.study))
        shown = "" if frozen.value is None else f" {self.spec.metric}={frozen.value:.4f}"
        error = f" ({frozen.user_attrs.get('error')})" if frozen.state == TrialState.FAIL else ""
        print(f"[{self.spec.study}] trial {trial.number} {frozen.state.name}{shown}{error} {params} "
              f"in {time.time() - started:.0f} s; log {log_path}", flush=True)

    def _execute(self, trial) -> tuple[dict[str, Any], Any, float | None, Path]:
        """Sample, write the config, run the job, read its outcome: (params, TrialState, value, log path)."""
        from optuna.trial import TrialState

        # a repeat after a lost connection keeps the values the trial was given and draws only the missing ones
        params = self._retry(lambda: sample(trial, self.spec.space))
        trial_dir = self.dir / f"trial-{trial.number:04d}"
        config_path = save_config(self._trial_config(trial, params), trial_dir / "config.yaml")
        log_path = trial_dir / "fit.log"
        # a re-queued trial inherits the user attributes of the one it retries: reset what this run sets
        self._set_attrs(trial, **{PRUNED_ATTR: None, "error": None, "exit_code": None, "worker": self.worker,
                                  "trial_dir": f"{socket.gethostname()}:{trial_dir.resolve()}",
                                  "config": config_path.read_text()})
        try:
            load_config(config_path)
        except ConfigError as exc:
            self._set_attrs(trial, error=f"segearth: error: {exc}")
            return params, TrialState.FAIL, None, config_path
        returncode = self._fit(trial, config_path, log_path, params)
        if returncode != 0:
            self._set_attrs(trial, error=_error_line(log_path, returncode), exit_code=returncode)
            return params, TrialState.FAIL, None, log_path
        fit_json = next(iter(sorted(trial_dir.glob("*/fit.json"))), None)
        value = json.loads(fit_json.read_text())["val"].get(self.spec.fit_key) if fit_json else None
        if value is None:
            self._set_attrs(trial, error=f"the job wrote no validation metric '{self.spec.fit_key}' (fit.json)")
            return params, TrialState.FAIL, None, log_path
        trials = self._retry(lambda: self.study.get_trials(deepcopy=False))
        fresh = next(t for t in trials if t.number == trial.number)
        if fresh.user_attrs.get(PRUNED_ATTR) is not None:
            return params, TrialState.PRUNED, None, log_path  # Optuna takes the last reported value
        return params, TrialState.COMPLETE, float(value), log_path

    def _fit(self, trial, config_path: Path, log_path: Path, params: dict[str, Any]) -> int:
        """Run ``segearth fit --sweep-trial`` on the trial's config as a child process; returns its exit status.

        The job learns its trial from ``trial.json`` beside the config: where to report for pruning and the tags
        that nest its MLflow run under the study's (``framework.sweep.trial``)."""
        trial_file = config_path.with_name(TRIAL_FILE)
        trial_file.write_text(json.dumps({
            "storage": self.url,
            "study": self.spec.study,
            "trial": trial.number,
            "pruner": self.spec.pruner,
            "monitor": self.spec.metric,
            "controller_pid": os.getpid(),
            "storage_retry_s": self.spec.storage_retry_s,
            "tags": self._retry(lambda: child_tags(self.study, trial, params)),
        }, indent=2))
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "framework.cli", "fit", str(config_path), "--sweep-trial", str(trial_file)],
                stdout=log, stderr=subprocess.STDOUT,
            )
            try:
                return process.wait()
            except KeyboardInterrupt:
                # Ctrl-C reached the job too (same process group): let it stop and close its MLflow run
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=60)
                raise


def _spawn_workers(
    sweep: str, storage: str, workers: int, n_trials: int | None, timeout: float | None
) -> list[int]:
    """Run ``workers`` single-worker controllers as processes on the same study; returns their exit statuses."""
    env = dict(os.environ)
    # each trial's training gets its share of the cores unless the user decided
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    command = [sys.executable, "-m", "framework.cli", "sweep", sweep, "--storage", storage, "--no-report"]
    if n_trials is not None:
        command += ["--n-trials", str(n_trials)]
    if timeout is not None:
        command += ["--timeout", str(timeout)]
    processes = [subprocess.Popen(command, env=env) for _ in range(workers)]
    try:
        return [p.wait() for p in processes]
    except KeyboardInterrupt:
        for p in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=90)
        raise


def run_sweep(
    sweep: str,
    storage: str = DEFAULT_STORAGE,
    workers: int = 1,
    n_trials: int | None = None,
    timeout: float | None = None,
    report: bool = True,
    trials: bool = True,
) -> None:
    """Run (``trials``) and report (``report``) the study of the sweep YAML ``sweep`` with ``workers`` controllers;
    ``n_trials`` / ``timeout`` override the file's budget. A study left short of its budget is a UserError that says
    how to resume it."""
    if workers < 1:
        raise UserError(f"--workers: at least 1, got {workers}")
    spec = load_sweep(sweep)
    if n_trials is not None:
        if n_trials < 1:
            raise UserError(f"--n-trials: at least 1, got {n_trials}")
        spec.n_trials = n_trials
    if timeout is not None:
        spec.timeout_s = timeout
    controller = Controller(spec, storage)
    study = controller.open()
    if trials:
        if workers == 1:
            controller.run()
        else:
            codes = _spawn_workers(sweep, storage, workers, n_trials, timeout)
            if any(codes):
                print(f"segearth: sweep: worker exit statuses {codes}", file=sys.stderr)
    if report:
        write_report(spec, study, storage)
    if trials:
        finished = retry_storage(lambda: study.get_trials(deepcopy=False), spec.storage_retry_s)
        counted = sum(t.state.name in COUNTED for t in finished)
        if counted < spec.n_trials and spec.timeout_s is None:
            raise UserError(
                f"study '{spec.study}' has {counted} of {spec.n_trials} trials finished; "
                "re-run the same command to resume it"
            )
