"""A team server's database made by an older MLflow: before `mlflow server` starts on it,
scripts/services.py (through scripts/service_db.py) says in one line what to run and exits
2, or upgrades it with --upgrade-db. On real SQLite databases at a real older schema."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import sqlalchemy

from helpers import ROOT, child_env, own_lines

sys.path.insert(0, str(ROOT / "scripts"))
import service_db  # scripts/ is not a package: found through sys.path
from service_procs import ServiceError

OLDER_BY = 3  # migrations behind the installed MLflow's head


def script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args],
                          capture_output=True, text=True, timeout=300,
                          env=child_env({"MLFLOW_DISABLE_TELEMETRY": "true"}))


@pytest.fixture(scope="module")
def older(tmp_path_factory) -> tuple[Path, str]:
    """A database at a real older schema, as an older MLflow left it: MLflow's initial tables,
    migrated by its own alembic scripts up to a revision OLDER_BY before the head."""
    from alembic import command
    from alembic.config import Config
    from mlflow.store.tracking.dbmodels.initial_models import Base

    path = tmp_path_factory.mktemp("older") / "mlflow.db"
    uri = f"sqlite:///{path}"
    migrations = service_db.migrations()
    revision = [r.revision for r in migrations.walk_revisions()][OLDER_BY]
    engine = sqlalchemy.create_engine(uri)
    Base.metadata.create_all(engine)
    engine.dispose()
    config = Config()
    config.set_main_option("script_location", migrations.dir)
    config.set_main_option("sqlalchemy.url", uri)
    command.upgrade(config, revision)
    assert service_db.schema_of(uri) == revision
    return path, revision


@pytest.fixture
def database(older, tmp_path) -> tuple[str, str]:
    """A copy of the older database for one test: its URI and schema revision."""
    path, revision = older
    shutil.copy(path, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}", revision


def test_a_new_database_and_one_of_this_mlflow_pass(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert service_db.check_schema(uri) is None  # empty: the server creates the tables
    mlflow.MlflowClient(uri).search_experiments()  # MLflow makes it, at its head
    assert service_db.schema_of(uri) == service_db.migrations().get_current_head()
    assert service_db.check_schema(uri) is None


def test_an_older_database_is_refused_in_one_line_that_says_what_to_run(database):
    uri, revision = database
    head = service_db.migrations().get_current_head()
    expected = f"schema {revision}, older than MLflow {mlflow.__version__}'s {head}"
    with pytest.raises(ServiceError, match=re.escape(expected)):
        service_db.check_schema(uri)
    result = script("service_db.py", uri)
    assert result.returncode == 2, result.stderr
    [line] = own_lines(result.stderr)
    assert line.startswith("services: error: the MLflow database") and "Traceback" not in line
    assert f"run `mlflow db upgrade {uri}`" in line and "--upgrade-db" in line
    assert service_db.schema_of(uri) == revision  # nothing changed without the flag


def test_the_upgrade_flag_upgrades_it_and_the_check_then_passes(database):
    uri, revision = database
    head = service_db.migrations().get_current_head()
    result = script("service_db.py", uri, "--upgrade-db")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"upgraded the MLflow database {uri} from schema {revision} to {head}" in (
        own_lines(result.stderr)[-1])
    assert service_db.schema_of(uri) == head
    assert service_db.check_schema(uri) is None
    client = mlflow.MlflowClient(uri)  # and this MLflow works on it
    run = client.create_run(client.create_experiment("after the upgrade"))
    client.log_param(run.info.run_id, "kept", "yes")
    assert client.get_run(run.info.run_id).data.params == {"kept": "yes"}


def test_a_database_of_a_newer_mlflow_is_refused_without_an_upgrade(database):
    uri, _ = database
    with sqlite3.connect(uri.removeprefix("sqlite:///")) as db:
        db.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    for upgrade in (False, True):
        with pytest.raises(ServiceError, match=r"schema ffffffffffff, which MLflow .* does not "
                                               r"know \(a newer MLflow made it\)"):
            service_db.check_schema(uri, upgrade)


def test_services_up_mlflow_takes_the_flag(tmp_path):
    """The flag reaches `up mlflow`, which checks its services before the database."""
    result = script("services.py", "up", "mlflow", str(tmp_path), "--upgrade-db")
    assert result.returncode == 2
    assert own_lines(result.stderr) == [
        f"services: error: postgres is not up in {tmp_path.resolve()}: run `services.py up "
        f"postgres {tmp_path.resolve()}`"]
