"""`segearth sweep` under faults of its database: a PostgreSQL server of the test's own is stopped and restarted
under a running sweep of real controller and `segearth fit` processes."""

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import optuna
import psutil
import pytest
import sqlalchemy
import yaml

from framework.core.errors import ConfigError
from framework.sweep.spec import load_sweep
from framework.sweep.storage import open_rdb, retry_storage
from tests.framework.sweep.test_sweep import sweep_command, sweep_env, tiny_sweep, write

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: float(p.parent.name))[-1:]), None)
OUTAGE_S = 6  # longer than the tiny sweep's faults.grace_s (3 s): every heartbeat of the running trials goes stale
EPOCHS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    """A throwaway PostgreSQL server on 127.0.0.1 (as .ci/run starts one): a free port, a temporary data folder."""

    def __init__(self, bin_dir: Path, root: Path) -> None:
        self.bin, self.root, self.port = bin_dir, root, _free_port()
        self.data = root / "data"
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"
        # initdb and the server refuse to run as root; a folder under /tmp that the postgres user owns then
        self.as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_pg:
            shutil.chown(root, "postgres")
        subprocess.run([*self.as_pg, str(bin_dir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"],
                       check=True, capture_output=True)

    def _ctl(self, *args: str) -> None:
        subprocess.run([*self.as_pg, str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", *args],
                       check=True, capture_output=True)

    def start(self) -> None:
        self._ctl("-l", str(self.root / "server.log"), "-o", f"-h 127.0.0.1 -p {self.port} -k {self.root}", "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "stop")

    def restart(self) -> None:
        self._ctl("-l", str(self.root / "server.log"), "-m", "fast", "restart")  # else the server writes to our pipe


@pytest.fixture(scope="module")
def postgres():
    if PG_BIN is None or not (PG_BIN / "pg_ctl").exists():
        pytest.skip("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin (.ci/run installs them)")
    server = Postgres(PG_BIN, Path(tempfile.mkdtemp(prefix="segearth-pg-")))  # tmp_path is not the postgres user's
    server.start()
    try:
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(server.root, ignore_errors=True)


def _trials(storage, study: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
    except KeyError:  # not created yet
        return []


def _job_of(sweep: psutil.Process, trial: int) -> psutil.Process | None:
    """The `segearth fit` process of trial ``trial`` under the sweep command."""
    for child in sweep.children(recursive=True):
        try:
            if f"trial-{trial:04d}" in " ".join(child.cmdline()):
                return child
        except psutil.NoSuchProcess:
            pass
    return None


def _training_job(sweep: psutil.Popen, storage, study: str, first: int, log: Path) -> psutil.Process:
    """Wait for a job of trial ``first`` or later that has reported an epoch and has more to train; returns it."""
    deadline = time.time() + 300
    while time.time() < deadline:
        assert sweep.poll() is None, log.read_text()[-3000:]
        for trial in _trials(storage, study):
            more_to_train = 0 < len(trial.intermediate_values) < EPOCHS - 1
            if trial.number >= first and trial.state.name == "RUNNING" and more_to_train:
                job = _job_of(sweep, trial.number)
                if job is not None:
                    return job
        time.sleep(0.05)
    raise AssertionError(f"no trial >= {first} training in time\n" + log.read_text()[-3000:])


@pytest.mark.slow
def test_database_restarts_mid_sweep_lose_and_repeat_no_trial(tmp_path, synth_root, postgres):
    """Two workers on PostgreSQL, a budget of three trials. A fast restart while the first two train; then, while
    the last one trains and the other worker ends its trial or polls for work, the server stops for longer than
    the grace period (the job is frozen over the stop, so its next report meets the stopped server).

    The study must end with exactly its budget: trials 0..2, each COMPLETE or PRUNED, none FAILED and none a retry
    (``failed_trial``): the outage made every heartbeat stale, and the other worker looks for stale trials once
    the server is back, but it may not take a live trial for a dead one (that trial's training would be thrown
    away and run again). Each trial folder holds one run with its ``fit.json`` (one job per trial), every trial
    reported every epoch it trained (reports made across the outage arrived), the parameter sets are distinct,
    and the outage was waited out by controllers and by a job."""
    path = tiny_sweep(tmp_path, synth_root, budget={"n_trials": 3},
                      overrides={"model.llm.template": "<image> Q:<question>[SEG] A:", "trainer.max_epochs": EPOCHS,
                                 "trainer.limit_train_batches": 2, "trainer.limit_val_batches": 1,
                                 "tracking.enabled": False})
    study = yaml.safe_load(path.read_text())["study"]
    log = tmp_path / "sweep.log"
    started = time.time()
    with open(log, "w") as sink:
        sweep = psutil.Popen(sweep_command(path, "--workers", "2", "--storage", postgres.url, "--no-report"),
                             cwd=tmp_path, env=sweep_env(), stdout=sink, stderr=subprocess.STDOUT)
    try:
        trial_dir = tmp_path / "runs" / "sweeps" / study
        while not (trial_dir / "trial-0000" / "trial.json").exists():  # the study's tables exist
            assert sweep.poll() is None and time.time() - started < 300, log.read_text()[-3000:]
            time.sleep(0.1)
        watcher = optuna.storages.RDBStorage(postgres.url, engine_kwargs={"poolclass": sqlalchemy.pool.NullPool})

        _training_job(sweep, watcher, study, 0, log)
        postgres.restart()

        job = _training_job(sweep, watcher, study, 2, log)
        job.suspend()
        postgres.stop()
        job.resume()  # its next report and its controller's heartbeats meet a stopped server
        time.sleep(OUTAGE_S)
        postgres.start()

        assert sweep.wait(timeout=600) == 0, log.read_text()[-5000:]
    finally:
        if sweep.poll() is None:
            sweep.kill()
    wall = time.time() - started

    output = log.read_text()
    trials = sorted(_trials(watcher, study), key=lambda t: t.number)
    states = {t.number: (t.state.name, t.user_attrs.get("error")) for t in trials}
    failed = {log.parent.name: log.read_text()[-4000:] for log in trial_dir.glob("trial-*/fit.log")
              if "Traceback" in log.read_text()}  # what a failed job said, for the assertion's message
    assert [t.number for t in trials] == [0, 1, 2], (states, failed)
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials), states
    assert not any("failed_trial" in t.system_attrs for t in trials), states  # no live trial failed as stale
    params = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(params)) == len(params), params
    for t in trials:
        runs = sorted((trial_dir / f"trial-{t.number:04d}").glob("*/fit.json"))
        assert len(runs) == 1, (t.number, runs)
        reported = sorted(t.intermediate_values)
        assert reported == list(range(len(reported))) and reported, (t.number, reported)
        if t.state.name == "COMPLETE":
            assert reported == list(range(EPOCHS)), (t.number, reported)
    assert "sweep: storage unreachable" in output, output[-3000:]
    job_logs = [p.read_text() for p in trial_dir.glob("trial-*/fit.log")]
    assert any("sweep: storage unreachable" in text for text in job_logs)
    print(f"sweep with a {OUTAGE_S} s outage and a restart: {wall:.0f} s")


def test_storage_retry_gives_up_after_its_bound_and_reconnects_after(postgres, capsys):
    """A stopped server: a storage call waits ``seconds``, says so in one line, then raises; once the server is
    back, the same storage object works again (its dead pooled connections are replaced)."""
    storage = open_rdb(postgres.url)
    storage.get_all_studies()  # a pooled connection that the stop kills
    postgres.stop()
    try:
        started = time.time()
        with pytest.raises(optuna.exceptions.StorageInternalError) as raised:
            retry_storage(storage.get_all_studies, seconds=2)
        assert 2 <= time.time() - started < 10
        assert isinstance(raised.value.__cause__, sqlalchemy.exc.OperationalError)  # Optuna's wrapper of it
    finally:
        postgres.start()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sweep: storage unreachable (") and "retrying for up to 2 s" in err[0]
    assert isinstance(retry_storage(storage.get_all_studies, seconds=2), list)


def test_storage_retry_s_must_be_positive(tmp_path, synth_root):
    data = yaml.safe_load(tiny_sweep(tmp_path, synth_root).read_text())
    data["faults"] = {**data["faults"], "storage_retry_s": 0}
    with pytest.raises(ConfigError, match=r"faults.storage_retry_s: must be > 0"):
        load_sweep(write(tmp_path, "bad.yaml", data))
