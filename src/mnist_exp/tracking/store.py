"""Where runs are recorded: the tracking URI, whether it answers, the experiment, and
keeping secrets in the URI out of logs. Light on purpose (MLflow is imported only when a
store is opened), so the entry point can check a remote store in a moment, before
TensorFlow and MLflow take their seconds to import.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from mnist_exp.errors import StoreUnwritable, TrackingError, unwritable
from mnist_exp.errors import redact as redact  # lives with the errors that show URIs

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlruns"
SWEEP_FILE = "mlflow_sweep.json"
# What kind of experiment this is, for mlflow ui 3.x (a value its bundle knows): model
# development, not GenAI. (Which view a link opens in is the URL's workflowType: run.py.)
EXPERIMENT_KIND = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"


@dataclass(frozen=True)
class SweepInfo:
    """Where a sweep records its runs, left in its folder for its jobs (sweep.py)."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    sweep_id: str
    resumed: bool = False  # a re-run into the same folder: jobs already FINISHED are skipped

    def save(self, sweep_dir: Path) -> None:
        """Whole or not at all: the file stays as it was (empty: claimed) if the process
        dies or the disk refuses the write."""
        from mnist_exp.tracking.ledger import write_atomic

        write_atomic(sweep_dir / SWEEP_FILE, json.dumps(asdict(self)))


def claim_sweep_dir(sweep_dir: Path) -> bool:
    """Create the sweep's record file, empty, if no sweep holds the folder yet (atomically:
    of two sweeps started into one folder, exactly one gets it); False if one does."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    try:
        (sweep_dir / SWEEP_FILE).open("x").close()
    except FileExistsError:
        return False
    return True


def read_sweep_info(sweep_dir: Path) -> SweepInfo | None:
    path = sweep_dir / SWEEP_FILE
    return SweepInfo(**json.loads(path.read_text())) if path.is_file() else None


def resolve_tracking_uri(configured: str | None, launch_dir: Path) -> str:
    """The config's URI, else $MLFLOW_TRACKING_URI, else sqlite:///<launch_dir>/mlflow.db."""
    return (configured or os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{(launch_dir / DEFAULT_DB).resolve()}")


def artifact_root(uri: str) -> str | None:
    """mlruns/ beside a SQLite database; None lets a server choose its own."""
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri.removeprefix("sqlite:///").split("?")[0])
    return (database.parent / DEFAULT_ARTIFACTS).resolve().as_uri()


def open_store(uri: str) -> None:
    """Point MLflow at `uri` (a new SQLite file gets its tables on first use, quietly)."""
    import mlflow

    # A new store announces its table creation and migrations at INFO: not the user's news.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(uri)


def prepare_experiment(uri: str, name: str) -> str:
    """Point MLflow at `uri` and return the id of experiment `name`, creating it (and, for a
    new SQLite file, the store's tables) if needed, marked as model training for mlflow ui.

    In a SQLite store, new experiments keep their artifacts in mlruns/ beside the
    database; a tracking server chooses its own artifact location.
    """
    import mlflow

    open_store(uri)
    with _disk_told(uri):
        with _creating(uri):
            client = mlflow.MlflowClient()
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                return client.create_experiment(name, artifact_location=artifact_root(uri),
                                                tags={EXPERIMENT_KIND: MODEL_TRAINING})
        if experiment.lifecycle_stage == "deleted":
            raise TrackingError(f"MLflow experiment {name!r} is deleted; restore it in mlflow "
                                "ui or set tracking.experiment_name to another name")
        if EXPERIMENT_KIND not in experiment.tags:  # made before we marked them, or by others
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
    return experiment.experiment_id


@contextmanager
def _disk_told(uri: str) -> Iterator[None]:
    """A SQLite store whose disk cannot take its tables or experiment: one line naming the
    folder (StoreUnwritable), not MLflow's traceback."""
    try:
        yield
    except Exception as e:
        from mnist_exp.tracking.refusals import store_unwritable

        full = store_unwritable(e, uri)
        if full is None:
            raise
        raise full from None


@contextmanager
def _creating(uri: str) -> Iterator[None]:
    """For a SQLite store, hold <db>.lock while the tables and the experiment are made: two
    sweeps started together on a new store otherwise both run its migrations (one fails
    with "duplicate column name")."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    database = Path(uri.removeprefix("sqlite:///").split("?")[0])
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{database}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


def join_experiment(uri: str, experiment_id: str) -> str:
    """Point MLflow at `uri` for an experiment that already exists (a sweep's)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    return experiment_id


def allow_concurrent_writers(uri: str) -> None:
    """Put a SQLite store in write-ahead-log mode (it persists in the file): readers stop
    blocking writers, which parallel sweep jobs need."""
    if uri.startswith("sqlite:///"):
        import sqlite3

        with sqlite3.connect(uri.removeprefix("sqlite:///").split("?")[0], timeout=30) as db:
            db.execute("PRAGMA journal_mode=WAL")


# SQLAlchemy's database schemes that MLflow accepts, and the module each dialect needs.
_DRIVERS = {
    "postgresql": ("psycopg", "psycopg[binary]"),  # SQLAlchemy 2.1's default PostgreSQL driver
    "postgresql+psycopg": ("psycopg", "psycopg[binary]"),
    "postgresql+psycopg2": ("psycopg2", "psycopg2-binary"),
    "postgresql+pg8000": ("pg8000", "pg8000"),
    "mysql": ("MySQLdb", "mysqlclient"),
    "mysql+mysqldb": ("MySQLdb", "mysqlclient"),
    "mysql+pymysql": ("pymysql", "pymysql"),
    "mssql": ("pyodbc", "pyodbc"),
    "mssql+pyodbc": ("pyodbc", "pyodbc"),
    "sqlite": ("sqlite3", ""),
}
_SERVERS = ("http", "https", "databricks")


def check_usable(uri: str) -> None:
    """Stop, in one line that says what to do instead, on a tracking URI that MLflow
    cannot use: an unknown scheme, a database whose driver is not installed, the plain
    file store that MLflow 3 retired, a SQLite file in a folder that does not exist."""
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    shown = redact(uri)
    if scheme in ("", "file") and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in (
            "1", "true"):
        raise TrackingError(
            f"tracking.uri {shown!r} is a plain folder: MLflow 3 retired that file store; use "
            "a database such as sqlite:///mlflow.db (artifacts still go to a folder), or "
            "leave tracking.uri unset for ./mlflow.db")
    if scheme in ("", "file", *_SERVERS):
        return
    if scheme not in _DRIVERS:
        raise TrackingError(
            f"tracking.uri {shown!r}: unknown scheme {scheme}://; use http(s):// for a "
            f"tracking server or a database: "
            f"{', '.join(dict.fromkeys(s.split('+')[0] + '://' for s in _DRIVERS))}")
    module, package = _DRIVERS[scheme]
    if importlib.util.find_spec(module) is None:
        raise TrackingError(
            f"tracking.uri {shown!r} needs the database driver {module}, which is not "
            f"installed: pip install {package}")
    if scheme == "sqlite":
        database = uri.split(":///", 1)[-1].split("?")[0]
        folder = Path(database).expanduser().parent
        if database not in ("", ":memory:") and not folder.is_dir():
            raise TrackingError(f"tracking.uri {shown!r}: the folder {folder} does not exist; "
                                "create it or choose another path")


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, naming the URI, when the store cannot be used (check_usable) or a
    tracking server does not answer: MLflow's own client would retry for minutes, after
    the data was loaded."""
    check_usable(uri)
    if uri.startswith("sqlite:///"):
        return check_store_room(uri)
    if uri.startswith(("postgresql", "mysql", "mssql")):
        return _check_database(uri, timeout)
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # it answered, if not with 200: authentication or a proxy in front
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingError(f"tracking server {redact(uri)} does not answer ({reason}); start "
                            "it, or set tracking.uri or MLFLOW_TRACKING_URI to a reachable "
                            "store") from None


# A run's first writes to an existing SQLite store (its run, first events, the rollback
# journal beside them), twice over: a disk that cannot take them stops the run before it
# starts, as a full run folder does (cli/full_disk.py). A new store's tables need more: a
# disk that cannot take those is told when they are made (prepare_experiment).
STORE_ROOM = 64 * 1024


def check_store_room(uri: str) -> None:
    """Write STORE_ROOM bytes beside a SQLite store's database and take them back:
    StoreUnwritable if its disk cannot take them (full, over quota, read-only)."""
    database = Path(uri.removeprefix("sqlite:///").split("?")[0]).expanduser().absolute()
    try:
        with tempfile.TemporaryFile(dir=database.parent) as f:
            f.write(bytes(STORE_ROOM))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        found = unwritable(e, [database.parent])
        if found is None:
            raise
        raise StoreUnwritable(database, OSError(found.errno, os.strerror(found.errno))) from None


def _check_database(uri: str, timeout: float) -> None:
    """A database URI: connect once, so a wrong host, password or database name costs one
    line, not SQLAlchemy's page of traceback after the data was loaded."""
    import sqlalchemy

    args = {"connect_timeout": int(timeout)} if uri.startswith("postgresql") else {}
    try:
        sqlalchemy.create_engine(uri, connect_args=args).connect().close()
    except Exception as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[-1]
        raise TrackingError(f"tracking database {redact(uri)} cannot be used: "
                            f"{reason.removeprefix('FATAL:').strip()}") from None


def check_artifact_store(uri: str, run_id: str) -> None:
    """Ask a tracking server to list a run's artifacts: a bucket or folder behind it that
    does not exist shows now, not when the first job uploads its model."""
    if not uri.startswith(("http://", "https://")):
        return
    import mlflow

    try:
        mlflow.MlflowClient(uri).list_artifacts(run_id)
    except Exception as e:
        response = getattr(e, "response", None)
        try:
            reason = response.json()["message"]
        except Exception:
            reason = str(e).splitlines()[0]
        raise TrackingError(f"the artifact store of tracking server {redact(uri)} cannot be "
                            f"used: {reason}") from None
