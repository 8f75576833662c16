"""Where a sweep lives: its Optuna storage (any SQLAlchemy URL), the lock that serialises the controllers' bookkeeping,
its folder, and the names the controller, the trial jobs and the report share.

A database that restarts or drops off the network under a running sweep is waited out: pooled connections are
checked before use (a restart kills them all), and ``retry_storage`` repeats a call that met a lost connection,
for up to ``faults.storage_retry_s``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from framework.core.errors import UserError
from framework.sweep.spec import SweepSpec

DEFAULT_STORAGE = "sqlite:///optuna.db"
COUNTED = ("COMPLETE", "PRUNED")  # trial states that use up the budget
PRUNED_ATTR = "pruned_at_epoch"  # trial user attribute a job sets when it stops because its trial was pruned
T = TypeVar("T")
_last_unreachable = float("-inf")  # time.monotonic() when a storage call of this process last met a lost connection


def open_rdb(url: str, spec: SweepSpec | None = None):
    """An ``optuna.storages.RDBStorage`` for ``url``; with ``spec``, heartbeats and stale-trial retries on.

    A bad URL or a missing driver is a UserError; an unreachable database raises SQLAlchemy's error, which the
    caller either reports (at the start of a sweep) or waits out (``retry_storage``)."""
    import optuna
    import sqlalchemy

    # a database server's restart leaves every pooled connection dead: test each one before it is used
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
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
    except (sqlalchemy.exc.ArgumentError, ModuleNotFoundError) as exc:
        raise unusable(url, exc) from None


def unusable(url: str, exc: BaseException) -> UserError:
    """The one-line error for a storage that cannot be opened (bad URL, no driver, no server)."""
    return UserError(f"--storage {redact(url)}: {str(exc).strip().splitlines()[0]}")


def _connection_error(exc: BaseException | None) -> BaseException | None:
    """The error in ``exc``'s chain of causes that says the database was unreachable or dropped the connection
    (Optuna raises its ``StorageInternalError`` from SQLAlchemy's), or None. A session whose connection died in a
    transaction refuses its next statement until it is rolled back (``PendingRollbackError``); Optuna rolls it back
    as it raises, so that too is a lost connection to wait out."""
    import sqlalchemy

    lost = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, sqlalchemy.exc.PendingRollbackError)
    while exc is not None:
        if isinstance(exc, lost) or (isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated):
            return exc
        exc = exc.__cause__
    return None


def retry_storage(call: Callable[[], T], seconds: float) -> T:
    """``call()``, repeated with a growing pause while it fails on a lost database connection (a server restart,
    a network cut), for up to ``seconds``; after that the connection error is raised. One line on stderr says
    that it waits.

    Only for calls that are safe to repeat: a call cut off mid-way was rolled back, but one whose commit landed
    before its reply was lost has run once already.
    """
    global _last_unreachable
    deadline = time.monotonic() + seconds
    pause = 0.25
    waiting = False
    while True:
        try:
            return call()
        except Exception as exc:
            lost = _connection_error(exc)
            if lost is None:
                raise
            _last_unreachable = time.monotonic()
            if _last_unreachable >= deadline:
                raise
            if not waiting:
                reason = str(getattr(lost, "orig", None) or lost).strip().splitlines()[0]
                print(f"sweep: storage unreachable ({reason}); retrying for up to {seconds:g} s",
                      file=sys.stderr, flush=True)
                waiting = True
            time.sleep(min(pause, deadline - _last_unreachable))
            pause = min(2 * pause, 1.0)  # a down server refuses at once: trying every second costs it nothing


def unreachable_within(seconds: float) -> bool:
    """Whether a storage call of this process met a lost connection in the last ``seconds``."""
    return time.monotonic() - _last_unreachable < seconds


def redact(url: str) -> str:
    """``url`` without its password (for logs and tags)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL has no password we could find either
        return url


@contextlib.contextmanager
def study_lock(url: str, study: str, lock_dir: Path) -> Iterator[Callable[[], object]]:
    """Serialise study bookkeeping (set-up, failing stale trials, counting, asking) across controllers.

    Without it two controllers that count at once could both start the last trial of the budget. PostgreSQL: a
    session advisory lock, so controllers on every machine exclude each other. Other storages: a file lock, exact
    among controllers of one machine (an sqlite file is only ever shared there).

    Yields a check to call before acting on what was counted under the lock: it raises a connection error when
    the lock's connection was lost meanwhile (a PostgreSQL restart ends the session and its lock, and another
    controller may hold the lock by now). For ``retry_storage`` that is one more lost connection: the caller
    repeats its bookkeeping under a new lock.
    """
    if url.startswith("postgresql"):
        import sqlalchemy

        key = int.from_bytes(hashlib.sha1(f"segearth-sweep:{study}".encode()).digest()[:8], "big", signed=True)
        try:
            engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        except (sqlalchemy.exc.ArgumentError, ModuleNotFoundError) as exc:
            raise unusable(url, exc) from None
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
                try:
                    yield lambda: conn.execute(sqlalchemy.text("SELECT 1"))
                finally:
                    if not conn.invalidated:  # else the lost session took its lock with it
                        with contextlib.suppress(sqlalchemy.exc.DBAPIError):
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
            yield lambda: None  # a file lock lasts as long as its process
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def sweep_dir(spec: SweepSpec) -> Path:
    """Where trials, ``best.yaml`` and the report go: ``<output_dir>/sweeps/<study>/``."""
    return Path(spec.base["output_dir"]) / "sweeps" / spec.study
