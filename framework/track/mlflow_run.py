"""MLflow wiring: one run per ``fit``/``test``, the resolved config as an artifact, component names as params.

Fit runs also get system metrics, validation overlays per epoch and (on request) the best/last checkpoints through
the callbacks of ``tracking_callbacks``. An unreachable tracking server fails the command at start (or, with
``tracking.offline_fallback``, the run goes to the local sqlite store); a server that stops answering during a fit
does not stop training: its logging calls are kept in order and sent when it answers again (``RunLogger``). An
interrupted run ends KILLED, a crashed one FAILED. A SIGKILL cannot be handled: such a run stays RUNNING.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only

from framework.core.errors import ConfigError, UserError
from framework.eval.overlays import write_overlays
from framework.track.run_info import LOCAL_STORE, flatten, run_tags

SERVER_TIMEOUT_S = 3.0  # MLflow's own client retries an unreachable server for minutes


# MLflow's HTTP client during training: one quick retry instead of minutes of backoff, so a step never waits long for
# a dead server (the call is kept and tried again instead)
QUICK_REQUESTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(SERVER_TIMEOUT_S))}
UNSENT = "mlflow_unsent.jsonl"  # in the run folder: the metrics a server that never came back did not get


@contextlib.contextmanager
def _quick_requests() -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in QUICK_REQUESTS}
    os.environ.update(QUICK_REQUESTS)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def outage(exc: BaseException) -> str | None:
    """Why ``exc`` means the server did not answer (a refused or timed-out connection, retries used up on 5xx
    replies), or None for any other error (a rejected request, a bug), which is raised as it is."""
    import requests

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, requests.exceptions.RequestException):
            return type(seen).__name__
        seen = seen.__cause__ or seen.__context__
    return None


@dataclass
class _Call:
    """A logging call kept while the server is away; ``metrics`` (a metric batch's) can go to a file if it never
    comes back."""

    send: Callable[[], object]
    metrics: list | None = None


class RunLogger(MLFlowLogger):
    """``MLFlowLogger`` that logs each (metric, step) pair at most once, survives a server that stops answering,
    and ends interrupted runs KILLED.

    Duplicates would break PostgreSQL-backed servers; Lightning makes two kinds: its convenience metric ``epoch``
    rides along with every logging call (train step, train epoch end and validation end share a step), and
    ``LearningRateMonitor`` logs once per micro-batch under gradient accumulation. Both repeat a value already
    logged at that step, so a key is only logged at steps above the last one it was logged at.

    Every logging call during training goes through ``send``: when the server does not answer, the call is kept
    (metric batches with the timestamps of their first attempt, so a batch the server did store but could not
    confirm is not stored twice), training goes on, and the kept calls are sent in order once the server answers
    again (tried at most every ``retry_s``); ``finalize`` waits ``final_wait_s`` for it, then writes the metrics it
    never got to ``unsent_path``.
    """

    def __init__(
        self,
        *args: Any,
        unsent_path: Path | None = None,
        retry_s: float = 15.0,
        final_wait_s: float = 300.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.interrupted = False  # set by ``RunStatus`` when a signal (SIGTERM, Ctrl-C) stops the trainer
        self.unsent_path, self.retry_s, self.final_wait_s = unsent_path, retry_s, final_wait_s
        self._last_step: dict[str, int] = {}
        self._continues = kwargs.get("run_id") is not None  # a resumed fit: its steps so far are read first
        self._kept: collections.deque[_Call] = collections.deque()
        self._away_since: float | None = None  # monotonic time the server stopped answering; None: it answers
        self._next_try = 0.0

    @property
    def answering(self) -> bool:
        """Whether the server answered the last call (the system-metrics monitor restarts only then)."""
        return self._away_since is None

    def send(self, call: Callable[[], object], metrics: list | None = None) -> None:
        """Make the MLflow call ``call`` after the calls kept before it; keep it while the server does not answer."""
        self._kept.append(_Call(call, metrics))
        if self._away_since is None or time.monotonic() >= self._next_try:
            self._send_kept()

    def _send_kept(self) -> bool:
        """Send the kept calls in order; False (and the rest kept) at the first the server does not answer."""
        while self._kept:
            try:
                with _quick_requests():
                    self._kept[0].send()
            except Exception as exc:
                reason = outage(exc)
                if reason is None:
                    raise
                if self._away_since is None:
                    self._away_since = time.monotonic()
                    print(f"segearth: tracking server {self._tracking_uri} not answering ({reason}); training goes "
                          "on, its logging is kept and sent when the server answers", file=sys.stderr, flush=True)
                self._next_try = time.monotonic() + self.retry_s
                return False
            self._kept.popleft()
        if self._away_since is not None:
            print(f"segearth: tracking server {self._tracking_uri} answers again after "
                  f"{time.monotonic() - self._away_since:.0f} s; the kept logging is sent", file=sys.stderr, flush=True)
            self._away_since = None
        return True

    def _continue_run(self) -> None:
        """Steps the continued run already holds count as logged (a resumed fit redoes the steps after its
        checkpoint: their first values stay, so the history has neither a gap nor a duplicate step)."""
        self._continues = False
        client = self.experiment
        for key in client.get_run(self.run_id).data.metrics:
            self._last_step[key] = max(m.step for m in client.get_metric_history(self.run_id, key))
        client.update_run(self.run_id, status="RUNNING")

    @property
    def tracking_uri(self) -> str:
        return self._tracking_uri

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        step = step or 0
        if self._continues:
            self._continue_run()
        fresh = {k: v for k, v in metrics.items() if self._last_step.get(k, -1) < step and not isinstance(v, str)}
        self._last_step.update(dict.fromkeys(fresh, step))
        if not fresh:
            return
        timestamp = int(time.time() * 1000)
        # the key characters MLflow accepts, as Lightning's logger cleans them
        batch = [Metric(re.sub(r"[^a-zA-Z0-9_/. -]+", "", k), float(v), timestamp, step) for k, v in fresh.items()]
        run_id, client = self.run_id, self.experiment
        self.send(partial(client.log_batch, run_id, metrics=batch, synchronous=True), metrics=batch)

    def _keep_unsent(self) -> None:
        """The kept metrics to ``unsent_path`` (one JSON object per line), with a line that says where."""
        rows = [{"key": m.key, "value": m.value, "step": m.step, "timestamp": m.timestamp}
                for call in self._kept for m in call.metrics or []]
        where = "nowhere (no run folder)"
        if self.unsent_path is not None:
            with self.unsent_path.open("a", encoding="utf-8") as handle:
                handle.writelines(json.dumps(row) + "\n" for row in rows)
            where = str(self.unsent_path)
        print(f"segearth: tracking server {self._tracking_uri} still not answering after {self.final_wait_s:.0f} s: "
              f"{len(rows)} metric values kept in {where}; the MLflow run stays RUNNING", file=sys.stderr, flush=True)

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        deadline = time.monotonic() + self.final_wait_s
        while not self._send_kept():
            if time.monotonic() >= deadline:
                self._keep_unsent()
                return
            time.sleep(min(max(self.retry_s, 1.0), max(deadline - time.monotonic(), 0.0)))
        # Lightning reports every interruption as "failed"; a signal is a kill, not a crash
        super().finalize("KILLED" if status == "failed" and self.interrupted else status)


def _unreachable(uri: str) -> str | None:
    """Why the http(s) tracking server ``uri`` does not answer within ``SERVER_TIMEOUT_S`` (None if it answers
    at all: an HTTP error such as 401 or 404 still proves a server is there, and so does a TLS handshake that this
    probe cannot verify but MLflow may, with its own certificate settings)."""
    import ssl
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=SERVER_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return None
    except OSError as exc:  # URLError, timeouts, refused connections
        reason = getattr(exc, "reason", exc)
        return None if isinstance(exc, ssl.SSLError) or isinstance(reason, ssl.SSLError) else str(reason)
    return None


def _reachable_uri(tc: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """The URI to log to and the tags that say why: a server that does not answer is a user error, or, with
    ``tracking.offline_fallback``, replaced by the local sqlite store."""
    uri = tc["uri"]
    if not uri.startswith(("http://", "https://")):
        return uri, {}
    reason = _unreachable(uri)
    if reason is None:
        return uri, {}
    if not tc["offline_fallback"]:
        raise UserError(
            f"tracking server {uri} unreachable ({reason}); start it, fix tracking.uri / MLFLOW_TRACKING_URI, "
            "or set tracking.offline_fallback=true to log locally"
        )
    # absolute: Lightning's logger exports the URI to the environment, where a relative path would follow the cwd
    local = f"sqlite:///{Path.cwd() / 'mlruns.db'}"
    print(f"segearth: tracking server {uri} unreachable ({reason}); logging to {local} instead", file=sys.stderr)
    return local, {"tracking.offline_fallback_from": uri}


def make_logger(
    cfg: dict[str, Any], run_dir: Path, run_name: str, tags: dict[str, str] | None = None, run_id: str | None = None
) -> RunLogger | None:
    """A ``RunLogger`` for ``cfg['tracking']`` (None when tracking is disabled); ``tags`` go on the run besides
    ``run_tags`` (a sweep trial's nest its run under the study's); ``run_id`` continues that run instead of
    starting one (a resumed fit).

    Artifacts go under the run folder's ``mlartifacts`` unless the store is a server: a sqlite store must not
    scatter ``./mlruns`` folders into the working directory.
    """
    tc = cfg["tracking"]
    if not tc["enabled"]:
        return None
    uri = tc["uri"]
    if uri.startswith("file:") or ("://" not in uri and not uri.startswith("databricks")):
        raise ConfigError(
            f"tracking.uri '{uri}': MLflow's file store is deprecated and raises; use {LOCAL_STORE} or http://…"
        )
    uri, fallback_tags = _reachable_uri(tc)
    artifact_location = None
    if uri.startswith("sqlite:"):
        artifact_location = (Path(os.path.abspath(run_dir)).parent.parent / "mlartifacts").as_uri()
    return RunLogger(
        experiment_name=tc["experiment"],
        run_name=tc["run_name"] or run_name,
        tracking_uri=uri,
        artifact_location=artifact_location,
        log_model=False,
        tags={**run_tags(), **fallback_tags, **(tags or {})},
        run_id=run_id,
        unsent_path=run_dir / UNSENT,
        retry_s=tc["retry_s"],
        final_wait_s=tc["final_wait_s"],
    )


RUN_RECORD = "mlflow_run.json"


def remember_run(logger: RunLogger | None, run_dir: Path) -> None:
    """``run_dir/RUN_RECORD``: the MLflow run of this fit, which a resumed fit continues."""
    if logger is not None:
        record = {"run_id": logger.run_id, "tracking_uri": logger.tracking_uri}
        (run_dir / RUN_RECORD).write_text(json.dumps(record) + "\n", encoding="utf-8")


def remembered_run(run_dir: Path, cfg: dict[str, Any]) -> str | None:
    """The MLflow run id a fit in ``run_dir`` logged to, when it is in the store ``cfg`` tracks to (None: none, or
    another store; a resumed fit then starts a run of its own)."""
    path = run_dir / RUN_RECORD
    if not cfg["tracking"]["enabled"] or not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    return record["run_id"] if record.get("tracking_uri") == cfg["tracking"]["uri"] else None


def log_run_files(logger, cfg: dict[str, Any], files: list[Path]) -> None:
    """Log flattened params (every slot's component name among them) and files as artifacts."""
    if logger is None:
        return
    logger.log_hyperparams(flatten(cfg))
    for path in files:
        logger.experiment.log_artifact(logger.run_id, str(path))


class RunStatus(L.Callback):
    """Marks the run KILLED when a signal stops training (Lightning turns SIGTERM into ``SIGTERMException`` at the
    next batch and Ctrl-C into ``KeyboardInterrupt``); any other exception leaves Lightning's FAILED."""

    def __init__(self, logger: RunLogger) -> None:
        self.logger = logger

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            self.logger.interrupted = True


class SystemMetrics(L.Callback):
    """MLflow's system-metrics monitor (CPU and memory through psutil, GPU through pynvml where there is one) for
    the length of ``fit``, on rank 0; metrics ``system/*``. MLflow samples every 10 s unless
    ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` says otherwise.

    The monitor continues the steps its run already has (a resumed fit), and MLflow's monitor stops for good when
    the server does not answer it: once the server answers the logger again, a new monitor takes over at the next
    step (no samples are taken while the server is away)."""

    def __init__(self, logger: RunLogger) -> None:
        self.logger = logger
        self.monitor = None

    def _start(self) -> None:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self.monitor = SystemMetricsMonitor(self.logger.run_id, resume_logging=True,
                                            tracking_uri=self.logger.tracking_uri)
        self.monitor.start()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self._start()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        # ``_process`` is the monitor's thread: MLflow has no public "still running"
        thread = getattr(self.monitor, "_process", None)
        if thread is not None and not thread.is_alive() and self.logger.answering:
            self._start()

    def _stop(self) -> None:
        # before the run is terminated: the monitor stops by itself only when it sees the run ended
        if self.monitor is not None:
            self.monitor.finish()
            self.monitor = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._stop()


class ValOverlays(L.Callback):
    """The first ``count`` validation samples drawn as overlays (``framework.eval.overlays``) after every validation,
    logged as MLflow images with key ``val_overlay_<stem>_<id>`` at the step of the validation metrics (the UI's
    image slider).

    The task collects the native-resolution predictions on every process (``SegEarthTask.val_overlays``); rank 0
    renders and logs them. The sanity check's untrained predictions are left out."""

    def __init__(self, logger: RunLogger, count: int) -> None:
        self.logger = logger
        self.count = count

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        pl_module.val_overlays = self.count

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking or not pl_module.val_overlay_predictions:
            return
        from PIL import Image

        # the step Lightning logs the validation metrics at (LearningRateMonitor reads the same counter)
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
        with tempfile.TemporaryDirectory() as tmp:
            paths = write_overlays(trainer.datamodule.dataset("val"), pl_module.val_overlay_predictions, Path(tmp))
            for path in paths:
                key = "val_overlay_" + re.sub(r"[^a-zA-Z0-9_\-. ]", "_", path.stem)
                with Image.open(path) as image:
                    self.logger.send(partial(self.logger.experiment.log_image, self.logger.run_id, image.copy(),
                                             key=key, step=step, synchronous=True))


class CheckpointArtifacts(L.Callback):
    """The best and last checkpoints logged as artifacts ``checkpoints/{best,last}.ckpt`` when ``fit`` ends (rank
    0); an interrupted fit logs none (its checkpoints stay in the run folder)."""

    def __init__(self, logger: RunLogger) -> None:
        self.logger = logger

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from lightning.pytorch.callbacks import ModelCheckpoint

        if not trainer.is_global_zero:
            return
        # best and last may come from different ModelCheckpoint callbacks (framework.train.checkpointing)
        callbacks = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
        paths = [c.best_model_path for c in callbacks] + [c.last_model_path for c in callbacks]
        for path in dict.fromkeys(p for p in paths if p):
            self.logger.send(partial(self.logger.experiment.log_artifact, self.logger.run_id, path,
                                     artifact_path="checkpoints"))


def tracking_callbacks(cfg: dict[str, Any], logger: RunLogger | None) -> list[L.Callback]:
    """The callbacks a ``fit`` run needs for ``cfg['tracking']`` (none without a logger)."""
    if logger is None:
        return []
    tc = cfg["tracking"]
    callbacks: list[L.Callback] = [RunStatus(logger)]
    if tc["system_metrics"]:
        callbacks.append(SystemMetrics(logger))
    if tc["val_overlays"]:
        callbacks.append(ValOverlays(logger, tc["val_overlays"]))
    if tc["log_checkpoints"]:
        callbacks.append(CheckpointArtifacts(logger))
    return callbacks
