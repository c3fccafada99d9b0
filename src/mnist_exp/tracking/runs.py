"""A run's lifecycle in MLflow: its experiment opened, its tags, its start and its end."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking.context.registry import resolve_tags

from mnist_exp import __version__
from mnist_exp.config.schema import TrackingConfig
from mnist_exp.errors import FolderUnwritable, NotUploaded, first_line
from mnist_exp.tracking.record import RunRecord
from mnist_exp.tracking.store import (
    SweepInfo,
    check_reachable,
    check_usable,
    join_experiment,
    prepare_experiment,
    redact,
    resolve_tracking_uri,
)
from mnist_exp.tracking.upload import Tracker, bound_http_calls

log = logging.getLogger(__name__)

NOTE = "mlflow.note.content"  # the run's description in mlflow ui
INCOMPLETE = "mnist_exp.incomplete"  # a finished run the store holds only part of, for now


@dataclass(frozen=True)
class Experiment:
    """Where a run goes: the store and the experiment in it (None: offline, made by sync)."""

    uri: str
    id: str | None


def open_experiment(settings: TrackingConfig, launch_dir: Path,
                    sweep: SweepInfo | None = None) -> Future[Experiment]:
    """Check the store now and open (or create) the run's experiment in a thread, so that
    its cost (more when it is created) overlaps whatever the caller does next. A
    sweep's job joins the experiment its sweep made; an offline run leaves it to sync."""
    uri = resolve_tracking_uri(settings.uri, launch_dir)
    pool = ThreadPoolExecutor(max_workers=1)
    if settings.offline:
        check_usable(uri)
        opened = pool.submit(Experiment, uri, None)
    elif sweep is None:
        check_reachable(uri)
        opened = pool.submit(_open_or_later, uri, settings.experiment_name)
    else:  # the sweep checked the store and made the experiment and parent run before any job
        opened = pool.submit(lambda: Experiment(
            sweep.tracking_uri, join_experiment(sweep.tracking_uri, sweep.experiment_id)))
    pool.shutdown(wait=False)
    return opened


def _open_or_later(uri: str, name: str) -> Experiment:
    """The run's experiment. A server that went away since it was checked, or refused the
    experiment's creation, leaves it None: the run goes on into its record and its
    experiment is made when its start is uploaded (as an offline run's is; a refusal then
    ends the run in one line), not after MLflow's minutes of retries as a failed run."""
    if not uri.startswith(("http://", "https://")):
        return Experiment(uri, prepare_experiment(uri, name))
    bound_http_calls()
    try:
        return Experiment(uri, prepare_experiment(uri, name))
    except MlflowException as e:
        log.debug("the experiment is made later, from the record: %s", first_line(e))
        return Experiment(uri, None)


@contextmanager
def tracked_run(uri: str, experiment_id: str | None, run_name: str, tags: dict[str, str],
                record_dir: Path, settings: TrackingConfig,
                resume_run_id: str | None = None) -> Iterator[Tracker]:
    """A run that always ends, FINISHED, FAILED with the error as a tag, or KILLED on Ctrl-C
    or SIGTERM, and whose every event is kept in a local record (`record_dir`) before it is
    uploaded, so a tracking server that goes away costs nothing (upload.py). At the end
    the server gets up to `settings.flush_timeout_s` to take what it missed; if it still
    has not, `tracker.uploaded` is false (NotUploaded says what to tell the user). With
    `resume_run_id`, that run is reopened instead of a new one started."""
    if uri.startswith(("http://", "https://")):
        bound_http_calls()
    tracker = Tracker(RunRecord.create(record_dir), uri, offline=settings.offline)
    tracker.record.hold()
    # The tags mlflow.start_run would add: user, source (entry point), git commit.
    tags = resolve_tags(tags)
    tracker.emit("start", experiment_id=experiment_id, experiment_name=settings.experiment_name,
                 run_name=run_name, tags=tags, start_time=now(), resume_run_id=resume_run_id,
                 tracking_uri=redact(uri))
    monitor = _system_metrics(tracker, settings, resumed=resume_run_id is not None)
    status, error_tags = "FINISHED", {}
    try:
        yield tracker
    except KeyboardInterrupt as e:
        status = "KILLED"
        if reason := getattr(e, "reason", None):  # a cluster stopped the job (sweeps.cluster)
            _emit_at_end(tracker, "tags", values={"stop_reason": reason})
        raise
    except BaseException as e:
        status = "FAILED"
        error = tracker.failed(e)  # a full disk: one line naming the folder
        error_tags = {"error": f"{type(error).__name__}: {first_line(error)}"[:5000]}
        _emit_at_end(tracker, "tags", values=error_tags)
        if error is not e:
            raise error from e
        raise
    finally:
        if monitor is not None:
            monitor.finish()
        _emit_at_end(tracker, "end", status=status, end_time=now())
        if tracker.blocked:
            _end_early(tracker, status, error_tags)
        # Ctrl-C asked to stop now: no long wait for a server that is away.
        timeout = settings.flush_timeout_s if status == "FINISHED" else min(
            settings.flush_timeout_s, 5.0)
        tracker.uploaded = tracker.finish(timeout)
        tracker.record.let_go()
        if not tracker.uploaded and status != "FINISHED" and tracker.failure is None:
            log.warning("%s", NotUploaded(tracker.record.folder, uri))


def _end_early(tracker: Tracker, status: str, error_tags: dict[str, str]) -> None:
    """The store's run ended now, out of turn, while events wait behind one it would not
    take: it must not stay RUNNING until a sync. A run that finished is FAILED there, and
    tagged INCOMPLETE, until sync uploads the rest: its record's end then makes it FINISHED,
    and the event after it takes the tag off."""
    if status == "FINISHED":
        error_tags = {INCOMPLETE: "the store did not take all of the run; the rest is in "
                                  f"{tracker.record.folder}: python -m mnist_exp.sync"}
        _emit_at_end(tracker, "untag", keys=[INCOMPLETE])
    tracker.uploader.end_early("FAILED" if status == "FINISHED" else status, error_tags)


def _emit_at_end(tracker: Tracker, op: str, **fields: Any) -> None:
    """Record the run's error or end without masking the exception that ended it."""
    try:
        tracker.emit(op, **fields)
    except FolderUnwritable:  # the record keeps it in memory, uploaded from there
        pass
    except Exception as e:
        log.warning("the store refused the run's %s: %s", op, first_line(e))


def _system_metrics(tracker: Tracker, settings: TrackingConfig, resumed: bool) -> Any:
    """MLflow's sampler of CPU, memory, disk and network use (system/* metrics), in its
    own thread, with a sample at the run's start and end whatever its length
    (system_metrics.py); not recorded locally (a server that is away misses those samples)."""
    if not settings.system_metrics or tracker.run_id is None:
        return None
    from mnist_exp.tracking.system_metrics import SampledAtStartAndEnd

    # Its start and stop are announced at INFO: not the user's news.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    monitor = SampledAtStartAndEnd(tracker.run_id, settings.system_metrics_interval,
                                   resume_logging=resumed, tracking_uri=tracker.uri)
    monitor.start()
    return monitor


def now() -> int:
    """The time as MLflow records it: milliseconds since the epoch."""
    return int(time.time() * 1000)


def run_tags(overrides: tuple[str, ...], settings: TrackingConfig, kind: str = "training",
             module: str = "mnist_exp.run") -> dict[str, str]:
    """Provenance (package version, git commit and dirtiness, the command and its
    overrides), what kind of run it is, and the user's own tags and description."""
    tags = {
        "mnist_exp.version": __version__,
        "mnist_exp.kind": kind,
        "overrides": redact(" ".join(overrides)),
        "command": redact(" ".join([f"python -m {module}", *sys.argv[1:]])),
    }
    commit, dirty = _git_state(Path(__file__).resolve().parent)
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["git.dirty"] = str(dirty).lower()
    if settings.description:
        tags[NOTE] = settings.description
    return tags | settings.tags


def sweep_tags(sweep: SweepInfo | None, job_number: int | None) -> dict[str, str]:
    """A sweep job's tags: its run nests under the sweep's (in any process)."""
    if sweep is None:
        return {}
    return {"mlflow.parentRunId": sweep.parent_run_id, "sweep.id": sweep.sweep_id,
            "sweep.job": str(job_number)}


def _git_state(folder: Path) -> tuple[str | None, bool]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
    try:
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None, False
