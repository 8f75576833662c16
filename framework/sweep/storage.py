"""Where a sweep lives: its Optuna storage (any SQLAlchemy URL), the lock that serialises the controllers' bookkeeping,
its folder, and the names the controller, the trial jobs and the report share."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from framework.core.errors import UserError
from framework.sweep.spec import SweepSpec

DEFAULT_STORAGE = "sqlite:///optuna.db"
COUNTED = ("COMPLETE", "PRUNED")  # trial states that use up the budget
PRUNED_ATTR = "pruned_at_epoch"  # trial user attribute a job sets when it stops because its trial was pruned


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


def sweep_dir(spec: SweepSpec) -> Path:
    """Where trials, ``best.yaml`` and the report go: ``<output_dir>/sweeps/<study>/``."""
    return Path(spec.base["output_dir"]) / "sweeps" / spec.study
