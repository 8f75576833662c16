"""The job side of a sweep trial: a ``segearth fit`` started by the sweep controller (``framework.sweep.controller``).

The controller writes the trial to ``trial.json`` beside the trial's config and starts ``segearth fit --sweep-trial
trial.json`` (JSON: storage URL, study, trial number, pruner options, monitored metric, controller pid, the MLflow
tags of the job's run); the command hands ``pruning_callbacks`` to ``fit``. The job reports the monitored validation
metric to that trial after every validation through optuna-integration's ``PyTorchLightningPruningCallback``; when
the pruner says stop, the job stops training cleanly (run folder, ``fit.json`` and MLflow run complete) and marks the trial, so the controller
tells Optuna PRUNED rather than FAILED.

A job's storage calls (report a value, ask the pruner, set an attribute, read trials) are all safe to repeat, so
each waits out a lost database for ``storage_retry_s`` of the trial file (``retry_storage``) instead of failing
the trial.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import warnings
from typing import Any

import lightning as L
import optuna
from optuna_integration import PyTorchLightningPruningCallback

from framework.sweep.spec import make_pruner
from framework.sweep.storage import PRUNED_ATTR, open_rdb, retry_storage


class SweepPruning(PyTorchLightningPruningCallback):
    """``PyTorchLightningPruningCallback`` that ends a pruned job cleanly instead of raising out of ``fit``.

    In one process the base class raises ``TrialPruned``; a raise would leave the run folder without ``fit.json``
    and the MLflow run FAILED, and make a prune indistinguishable from a crash by exit status. Under DDP the base
    class already stops every rank through ``trainer.should_stop`` (rank 0 decides and broadcasts). The last
    epoch's validation is only reported: a job that trained its whole budget ends COMPLETE.

    Storage calls wait out a lost database for ``retry_s``. Under DDP a connection lost in the base class's
    report still fails the job: the base class broadcasts its decision between storage calls, and a repeat would
    broadcast twice.
    """

    def __init__(self, trial: optuna.trial.Trial, monitor: str, retry_s: float) -> None:
        super().__init__(trial, monitor=monitor)
        self.retry_s = retry_s

    def _retry(self, call):
        return retry_storage(call, self.retry_s)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = pl_module.current_epoch
        last = (trainer.max_epochs or 0) > 0 and epoch >= trainer.max_epochs - 1
        if last and not trainer.sanity_checking:
            # the job has trained its whole budget: pruning would save nothing, so the trial completes
            score = trainer.callback_metrics.get(self.monitor)
            if score is not None and trainer.is_global_zero:
                self._retry(lambda: self._trial.report(score.item(), step=epoch))
            return
        try:
            if self.is_ddp_backend:
                super().on_validation_end(trainer, pl_module)
            else:  # report and ask the pruner, raising TrialPruned
                self._retry(lambda: super(SweepPruning, self).on_validation_end(trainer, pl_module))
        except optuna.TrialPruned:
            trainer.should_stop = True
            self._retry(lambda: self._trial.set_user_attr(PRUNED_ATTR, epoch))
            print(f"sweep: trial {self._trial.number} pruned after epoch {epoch}", flush=True)
            return
        if self.is_ddp_backend and trainer.should_stop and trainer.is_global_zero and not trainer.sanity_checking:
            if self._retry(self._trial.should_prune):
                self._retry(lambda: self._trial.set_user_attr(PRUNED_ATTR, epoch))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _follow_controller(controller_pid: int) -> None:
    """Die with the controller: a worker killed mid-trial must not leave its training job running (the trial is
    retried elsewhere). Linux: the kernel sends SIGKILL when the parent dies (``PR_SET_PDEATHSIG``)."""
    if os.environ.get("LOCAL_RANK", "0") != "0":
        return  # a DDP rank started by rank 0, which follows the controller for all of them
    if sys.platform.startswith("linux") and os.getppid() == controller_pid:
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
    if not _alive(controller_pid):  # died before this job got here: its trial is retried elsewhere
        print("sweep: the controller of this trial is gone; stopping", file=sys.stderr, flush=True)
        os._exit(1)


def pruning_callbacks(info: dict[str, Any]) -> list[L.Callback]:
    """The callbacks of a job for the trial described by ``info`` (the trial file's contents)."""
    _follow_controller(int(info["controller_pid"]))
    retry_s = info["storage_retry_s"]
    trial = retry_storage(lambda: _load_trial(info), retry_s)
    return [SweepPruning(trial, monitor=info["monitor"], retry_s=retry_s)]


def _load_trial(info: dict[str, Any]) -> optuna.trial.Trial:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.load_study(
            study_name=info["study"],
            storage=open_rdb(info["storage"]),
            sampler=optuna.samplers.RandomSampler(),  # the job never samples; the controller did
            pruner=make_pruner(info["pruner"]),
        )
    trial_id = next(t._trial_id for t in study.get_trials(deepcopy=False) if t.number == info["trial"])
    return optuna.trial.Trial(study, trial_id)
