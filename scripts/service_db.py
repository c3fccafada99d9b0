"""Whether an MLflow tracking database fits the installed MLflow, checked before `mlflow
server` starts on it. A newer MLflow's server refuses a database an older one made, in a
page of traceback, until `mlflow db upgrade` has migrated it; or, when the newer MLflow
added tables, migrates it as it starts, with no backup taken. Here either is one line, and
the upgrade happens only when asked.

services.py calls check_schema before it starts the server; on its own it checks (or, with
--upgrade-db, upgrades) any MLflow database, SQLite included:

    python scripts/service_db.py sqlite:///mlflow.db [--upgrade-db]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from service_procs import ServiceError


def migrations():
    """The installed MLflow's schema migrations (alembic scripts shipped inside mlflow)."""
    import mlflow
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(Path(mlflow.__file__).parent / "store" / "db_migrations"))


def schema_of(uri: str) -> str | None:
    """The database's schema revision (alembic_version); None for a new, empty database."""
    import sqlalchemy
    from alembic.runtime.migration import MigrationContext

    engine = sqlalchemy.create_engine(uri)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def check_schema(uri: str, upgrade: bool = False) -> str | None:
    """None when the database is new or at the installed MLflow's schema. An older one is
    upgraded with `mlflow db upgrade` when `upgrade` is set (a line saying so is returned),
    else a ServiceError says what to run; one newer than this MLflow is always an error."""
    import mlflow
    from alembic.util import CommandError

    script, current = migrations(), schema_of(uri)
    head = script.get_current_head()
    if current is None or current == head:
        return None
    shown, version = _hide_password(uri), mlflow.__version__
    try:
        script.get_revision(current)
    except CommandError:
        raise ServiceError(f"the MLflow database {shown} has schema {current}, which MLflow "
                           f"{version} does not know (a newer MLflow made it): install that "
                           "MLflow here, or use a database of this one") from None
    if not upgrade:
        raise ServiceError(f"the MLflow database {shown} has schema {current}, older than "
                           f"MLflow {version}'s {head}: back it up, then run `mlflow db upgrade "
                           f"{shown}` (or add --upgrade-db)")
    done = subprocess.run([sys.executable, "-m", "mlflow", "db", "upgrade", uri],
                          capture_output=True, text=True)
    if done.returncode or schema_of(uri) != head:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise ServiceError(f"`mlflow db upgrade {shown}` did not reach {head}: {last}")
    return f"upgraded the MLflow database {shown} from schema {current} to {head}"


def _hide_password(uri: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(uri).render_as_string(hide_password=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("uri", help="the database's SQLAlchemy URI, e.g. sqlite:///mlflow.db")
    parser.add_argument("--upgrade-db", action="store_true",
                        help="run `mlflow db upgrade` on an older database")
    args = parser.parse_args(argv)
    try:
        note = check_schema(args.uri, args.upgrade_db)
    except ServiceError as e:
        print(f"services: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(note or f"the MLflow database {_hide_password(args.uri)} fits this MLflow",
          file=sys.stderr)


if __name__ == "__main__":
    main()
