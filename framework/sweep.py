"""``segearth sweep``: Optuna studies over experiment configs, one training process per trial.

A controller (worker) asks Optuna for a trial, writes the trial's experiment config, runs ``segearth fit`` on it as
a separate process, reads ``fit.json`` and tells Optuna the result. Separate processes keep multi-GPU trials
correct: under plain DDP every rank would run the objective and draw different hyperparameters, while a trial's
job here reads one config file on every rank. Inside the job ``trial_callbacks`` reports the monitored validation
metric for pruning (``framework.sweep_trial``).

Storage is any SQLAlchemy URL (default ``sqlite:///optuna.db`` in the working directory); ``--workers N`` runs N
controllers on one study, and controllers on other machines join by using the same PostgreSQL URL. The study is
loaded if it exists, so re-running the command resumes it. A controller records a heartbeat for its running trial;
a trial whose controller died (killed, machine lost) goes stale after ``faults.grace_s`` and is failed and
re-queued with the same parameters (``RetryHeartbeatStaleTrialCallback``) by the next controller that looks. The
budget counts trials that end COMPLETE or PRUNED, so a killed or crashed trial never uses it up and none is
counted twice; a trial whose job fails (e.g. out of memory) is FAILED with its error as user attribute ``error``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from framework.errors import ConfigError, UserError
from framework.sweep_spec import SweepSpec, apply_params, load_sweep, make_pruner, make_sampler, sample

DEFAULT_STORAGE = "sqlite:///optuna.db"
ENV_TRIAL = "SEGEARTH_SWEEP_TRIAL"  # the job's trial (JSON), read by ``trial_callbacks``
ENV_TAGS = "SEGEARTH_MLFLOW_TAGS"  # extra tags for the job's MLflow run (JSON), read by ``framework.tracking``
COUNTED = ("COMPLETE", "PRUNED")  # trial states that use up the budget
PRUNED_ATTR = "pruned_at_epoch"  # trial user attribute a job sets when it stops because its trial was pruned


def trial_callbacks() -> list:
    """Lightning callbacks for a ``fit`` that runs as a sweep trial (none outside a sweep)."""
    info = os.environ.get(ENV_TRIAL)
    if not info:
        return []
    from framework.sweep_trial import pruning_callbacks

    return pruning_callbacks(json.loads(info))


def open_rdb(url: str, spec: SweepSpec | None = None):
    """An ``optuna.storages.RDBStorage`` for ``url``; with ``spec``, heartbeats and stale-trial retries on."""
    import optuna
    import sqlalchemy

    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    if re.match(r"sqlite:///(:memory:)?$", url):
        raise UserError(f"--storage {url}: an in-memory database cannot be shared by trial processes; name a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            faults: dict[str, Any] = {}
            if spec is not None:
                retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=spec.max_retry)
                faults = {"heartbeat_interval": spec.heartbeat_s, "grace_period": spec.grace_s,
                          "heartbeat_stale_trial_callback": retry}
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **faults)
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.OperationalError, ModuleNotFoundError) as exc:
        message = str(exc).strip().splitlines()[0]
        raise UserError(f"--storage {redact(url)}: {message}") from None


def redact(url: str) -> str:
    """``url`` without its password (for logs and tags)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL has no password we could find either
        return url


@contextlib.contextmanager
def study_lock(url: str, study: str, lock_dir: Path) -> Iterator[None]:
    """Serialise study bookkeeping (set-up, failing stale trials, counting, asking) across controllers.

    Without it two controllers that count at once could both start the last trial of the budget. PostgreSQL: a
    session advisory lock, so controllers on every machine exclude each other. Other storages: a file lock, exact
    among controllers of one machine (an sqlite file is only ever shared there).
    """
    if url.startswith("postgresql"):
        import sqlalchemy

        key = int.from_bytes(hashlib.sha1(f"segearth-sweep:{study}".encode()).digest()[:8], "big", signed=True)
        try:
            engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
            conn = engine.connect()
        except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.OperationalError, ModuleNotFoundError) as exc:
            raise UserError(f"--storage {redact(url)}: {str(exc).strip().splitlines()[0]}") from None
        try:
            with conn:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
                try:
                    yield
                finally:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
        finally:
            engine.dispose()
        return
    from sqlalchemy.engine import make_url

    database = make_url(url).database if url.startswith("sqlite") else None
    if database:  # keyed by the database file, wherever the controllers' working directories are
        digest = hashlib.sha1(f"{os.path.abspath(database)}:{study}".encode()).hexdigest()[:16]
        path = Path(tempfile.gettempdir()) / f"segearth-sweep-{digest}.lock"
    else:
        path = lock_dir / f".{study}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Heartbeat:
    """Records the trial's heartbeat every ``interval`` seconds in a thread while the job runs."""

    def __init__(self, storage, trial_id: int, interval: int) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            self.storage.record_heartbeat(self.trial_id)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def sweep_dir(spec: SweepSpec) -> Path:
    """Where trials, ``best.yaml`` and the report go: ``<output_dir>/sweeps/<study>/``."""
    return Path(spec.base["output_dir"]) / "sweeps" / spec.study


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

    def open(self):
        """Create or load the study; the first controller enqueues the fixed trials and opens the MLflow parent."""
        import optuna

        from framework.sweep_report import parent_run

        self.dir.mkdir(parents=True, exist_ok=True)
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
        return self.study

    def _next_trial(self, deadline: float | None):
        """A trial to run now (a waiting one first), None to wait for other workers' trials, or False when done."""
        import optuna
        from optuna.trial import TrialState

        with self.lock():
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
            with warnings.catch_warnings():
                # heartbeats are ours (``Heartbeat``), not Study.optimize's
                warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
                trial = self.study.ask()
            self.storage.record_heartbeat(trial._trial_id)  # before the lock opens: never RUNNING without one
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

        from framework.sweep_report import sync_child_runs

        started = time.time()
        with Heartbeat(self.storage, trial._trial_id, self.spec.heartbeat_s):
            try:
                params, state, value, log_path = self._execute(trial)
            except BaseException as exc:
                trial.set_user_attr("error", "interrupted (Ctrl-C)" if isinstance(exc, KeyboardInterrupt) else repr(exc))
                self.study.tell(trial, state=TrialState.FAIL)
                raise
            trial.set_user_attr("wall_s", round(time.time() - started, 1))
            frozen = self.study.tell(trial, value, state=state)
        sync_child_runs(self.spec, self.study)
        shown = "" if frozen.value is None else f" {self.spec.metric}={frozen.value:.4f}"
        error = f" ({frozen.user_attrs.get('error')})" if frozen.state == TrialState.FAIL else ""
        print(f"[{self.spec.study}] trial {trial.number} {frozen.state.name}{shown}{error} {params} "
              f"in {time.time() - started:.0f} s; log {log_path}", flush=True)

    def _execute(self, trial) -> tuple[dict[str, Any], Any, float | None, Path]:
        """Sample, write the config, run the job, read its outcome: (params, TrialState, value, log path)."""
        from optuna.trial import TrialState

        from framework.config import load_config, save_config

        params = sample(trial, self.spec.space)
        trial_dir = self.dir / f"trial-{trial.number:04d}"
        config_path = save_config(self._trial_config(trial, params), trial_dir / "config.yaml")
        log_path = trial_dir / "fit.log"
        # a re-queued trial inherits the user attributes of the one it retries: reset what this run sets
        for key, value in {PRUNED_ATTR: None, "error": None, "exit_code": None, "worker": self.worker,
                           "trial_dir": f"{socket.gethostname()}:{trial_dir.resolve()}",
                           "config": config_path.read_text()}.items():
            trial.set_user_attr(key, value)
        try:
            load_config(config_path)
        except ConfigError as exc:
            trial.set_user_attr("error", f"segearth: error: {exc}")
            return params, TrialState.FAIL, None, config_path
        returncode = self._fit(trial, config_path, log_path, params)
        if returncode != 0:
            trial.set_user_attr("error", _error_line(log_path, returncode))
            trial.set_user_attr("exit_code", returncode)
            return params, TrialState.FAIL, None, log_path
        fit_json = next(iter(sorted(trial_dir.glob("*/fit.json"))), None)
        value = json.loads(fit_json.read_text())["val"].get(self.spec.fit_key) if fit_json else None
        if value is None:
            trial.set_user_attr("error", f"the job wrote no validation metric '{self.spec.fit_key}' (fit.json)")
            return params, TrialState.FAIL, None, log_path
        fresh = next(t for t in self.study.get_trials(deepcopy=False) if t.number == trial.number)
        if fresh.user_attrs.get(PRUNED_ATTR) is not None:
            return params, TrialState.PRUNED, None, log_path  # Optuna takes the last reported value
        return params, TrialState.COMPLETE, float(value), log_path

    def _fit(self, trial, config_path: Path, log_path: Path, params: dict[str, Any]) -> int:
        """Run ``segearth fit`` on the trial's config as a child process; returns its exit status."""
        from framework.sweep_report import child_tags

        env = dict(os.environ)
        env[ENV_TRIAL] = json.dumps({
            "storage": self.url,
            "study": self.spec.study,
            "trial": trial.number,
            "pruner": self.spec.pruner,
            "monitor": self.spec.metric,
            "controller_pid": os.getpid(),
        })
        env[ENV_TAGS] = json.dumps(child_tags(self.study, trial, params))
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "framework.cli", "fit", str(config_path)],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )
            try:
                return process.wait()
            except KeyboardInterrupt:
                # Ctrl-C reached the job too (same process group): let it stop and close its MLflow run
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=60)
                raise


def _spawn_workers(args: argparse.Namespace, storage: str, workers: int) -> list[int]:
    """Run ``workers`` single-worker controllers as processes on the same study; returns their exit statuses."""
    env = dict(os.environ)
    # each trial's training gets its share of the cores unless the user decided
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    command = [sys.executable, "-m", "framework.cli", "sweep", args.sweep, "--storage", storage, "--no-report"]
    if args.n_trials is not None:
        command += ["--n-trials", str(args.n_trials)]
    if args.timeout is not None:
        command += ["--timeout", str(args.timeout)]
    processes = [subprocess.Popen(command, env=env) for _ in range(workers)]
    try:
        return [p.wait() for p in processes]
    except KeyboardInterrupt:
        for p in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=90)
        raise


def cmd_sweep(args: argparse.Namespace) -> None:
    from framework.sweep_report import write_report

    if args.workers < 1:
        raise UserError(f"--workers: at least 1, got {args.workers}")
    spec = load_sweep(args.sweep)
    if args.n_trials is not None:
        if args.n_trials < 1:
            raise UserError(f"--n-trials: at least 1, got {args.n_trials}")
        spec.n_trials = args.n_trials
    if args.timeout is not None:
        spec.timeout_s = args.timeout
    controller = Controller(spec, args.storage)
    study = controller.open()
    if not args.report:
        if args.workers == 1:
            controller.run()
        else:
            codes = _spawn_workers(args, args.storage, args.workers)
            if any(codes):
                print(f"segearth: sweep: worker exit statuses {codes}", file=sys.stderr)
    if not args.no_report:
        write_report(spec, study, args.storage)
    if not args.report:
        counted = sum(t.state.name in COUNTED for t in study.get_trials(deepcopy=False))
        if counted < spec.n_trials and spec.timeout_s is None:
            raise UserError(
                f"study '{spec.study}' has {counted} of {spec.n_trials} trials finished; "
                "re-run the same command to resume it"
            )


def add_sweep_parser(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="run an Optuna sweep over an experiment (parallel, pruned, resumable)",
        description="Run the Optuna study of a sweep YAML: each trial is a `segearth fit` process. Re-running the "
        "command resumes the study; controllers on other machines join it through the same --storage URL.",
    )
    p.add_argument("sweep", help="sweep YAML (e.g. experiments/sweeps/compression_projection.yaml)")
    p.add_argument("--workers", type=int, default=1, help="controllers run in parallel on this machine (default 1)")
    p.add_argument("--storage", default=DEFAULT_STORAGE,
                   help=f"Optuna storage URL (default {DEFAULT_STORAGE}; postgresql://user:pw@host/db for several machines)")
    p.add_argument("--report", action="store_true", help="only write the report of the study as it stands")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.add_argument("--n-trials", type=int, help="override budget.n_trials (total over all workers and runs)")
    p.add_argument("--timeout", type=float, help="override budget.timeout_s (per controller, seconds)")
    p.set_defaults(func=cmd_sweep)
