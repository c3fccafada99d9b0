"""The Optuna study of a search: where it is stored, and how its trials are sampled and
pruned. Shared by the sweeper (which asks and tells, in the launching process), each
trial's job (which reports its epochs to the pruner, in whatever process runs it), and
sync (which tells FAIL the trials a dead search left running).

A study lives under its name in one of three storages, every job opening the same one:
- a SQLite file, by default sqlite:///<launch folder>/optuna.db beside the MLflow store
  (`optuna-dashboard sqlite:///optuna.db` shows it). Its writers (the jobs their epochs,
  the sweeper its trials) take turns through write-ahead logging and a generous busy
  timeout; WAL needs the processes on one machine and the file on its local disk.
- journal:PATH, Optuna's journal file, for jobs on several machines sharing a file
  system (NFS): appends under a lock file made with O_EXCL (JournalFileOpenLock), which
  NFSv3 and later honour, where SQLite's locks do not hold.
- postgresql://..., a database server, for a team.
Relative file paths resolve against the launch folder, so the same command later
continues the study.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnist_exp.errors import ConfigError, redact
from mnist_exp.sweeps.cluster import is_slurm
from mnist_exp.tracking.store import allow_concurrent_writers

DEFAULT_STORAGE = "optuna.db"
JOURNAL = "journal:"
SERVERS = ("postgresql", "mysql")  # database servers, through Optuna's RDBStorage
ALLOWED = ("null (sqlite:///optuna.db in the launch folder), sqlite:///PATH (one machine), "
           "journal:PATH (a journal file on a shared file system), postgresql://USER@HOST/DB")
TRIAL_ENV = "MNIST_EXP_OPTUNA_TRIAL"  # set in a trial's job by the sweeper (hydra.job.env_set)
_TRIAL_LINE = re.compile(rf"^\s+{TRIAL_ENV}: '?(\d+)'?\s*$", re.MULTILINE)  # in hydra.yaml
PRUNED_TAG = "optuna.pruned"
PRUNED_ATTR = "pruned_at_epoch"  # a trial's user attribute: its job was pruned at that epoch
ABANDONED = "abandoned"  # a trial's user attribute: left RUNNING by a search that died
SAMPLERS = ("tpe", "random", "cmaes")
PRUNERS = ("median", "none")


@dataclass(frozen=True)
class TrialLink:
    """What a job needs to report to its trial: the study's storage and name, the trial's
    id, and the pruner's settings (a pruner is not stored with the study)."""

    storage: str
    study_name: str
    trial_id: int
    pruner: dict[str, Any]


def resolve_storage(configured: str | None, launch_dir: Path) -> str:
    """The study's storage with its file, if any, made absolute against the launch folder
    (default sqlite:///<launch_dir>/optuna.db); a string that names no storage is a
    ConfigError naming the ones allowed."""
    if not configured:
        return f"sqlite:///{(launch_dir / DEFAULT_STORAGE).resolve()}"
    if configured.startswith(JOURNAL):
        path = configured.removeprefix(JOURNAL)
        path = path.removeprefix("//")  # the URL spelling, journal:///abs/path
        if path and not path.endswith("/"):
            return f"{JOURNAL}{(launch_dir / Path(path).expanduser()).resolve()}"
    scheme = configured.split("://", 1)[0].lower() if "://" in configured else ""
    if scheme == "sqlite":
        database, query = _sqlite_file(configured)
        if database and database != ":memory:":
            return f"sqlite:///{(launch_dir / Path(database).expanduser()).resolve()}{query}"
    if scheme.split("+")[0] in SERVERS:
        return configured
    raise ConfigError(f"hydra.sweeper.storage={redact(configured)}: not a study storage; "
                      f"allowed: {ALLOWED}")


def check_storage(configured: str | None, launch_dir: Path) -> str:
    """resolve_storage, and the driver a database server needs installed: what the sweeper
    will open, checked before the sweep's parent run or any folder is made (cli/checks)."""
    url = resolve_storage(configured, launch_dir)
    _with_driver(url)
    return url


def study_key(name: str, url: str) -> str:
    """A study as its searches' parent runs name it (liveness.STUDY_TAG): its name and
    storage, the password hidden; a resumed search finds the earlier ones by it."""
    return f"{name} in {redact(url)}"


def open_storage(url: str) -> Any:
    """The storage `url` names (resolve_storage's answer), ready for several processes to
    write at once (see the module's note)."""
    import optuna

    if url.startswith(JOURNAL):
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        path = url.removeprefix(JOURNAL)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(
            JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        Path(_sqlite_file(url)[0]).parent.mkdir(parents=True, exist_ok=True)
        allow_concurrent_writers(url)
        engine_kwargs = {"connect_args": {"timeout": 60}}
    return optuna.storages.RDBStorage(_with_driver(url), engine_kwargs=engine_kwargs)


def fail_abandoned(study: Any, trial_ids: Collection[int] | None = None) -> list[int]:
    """Tell FAIL, with user attribute `abandoned`, the trials a stopped search (Ctrl-C, a
    crash, kill -9) left RUNNING, so that the study reads true and a later search runs them
    anew (they do not count toward n_trials): all of them when a search starts on the
    study, or only those with these ids (a dead search's, for sync). Their numbers."""
    from optuna.trial import TrialState

    told = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial_ids is not None and t._trial_id not in trial_ids:
            continue
        study._storage.set_trial_user_attr(t._trial_id, ABANDONED, True)  # no public way
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        told.append(t.number)
    return told


def trial_jobs(sweep_dir: Path) -> list[tuple[Path, int]]:
    """A search's jobs, each as its Hydra settings file (.hydra/hydra.yaml) and the id of
    the trial the sweeper gave it there (hydra.job.env_set); none for a grid sweep."""
    return [(file, int(m[1])) for file in sorted(sweep_dir.rglob("hydra.yaml"))
            if (m := _TRIAL_LINE.search(file.read_text(errors="replace")))]


def fail_dead_trials(jobs: list[tuple[Path, int]],
                     finished: dict[int, float] | None = None) -> str | None:
    """For sync, once a search's process has died: the trials of these jobs (trial_jobs)
    that its study still holds RUNNING, told FAIL as the same search run again would tell
    them (fail_abandoned), but those whose job finished (`finished`: trial id -> its
    validation accuracy: a SLURM job may outlive its search) told as the search would have
    (tell_finished); a phrase that names them, or None. The study is the one the jobs'
    settings name, found as each job found it."""
    study = _study_of(jobs[0][0]) if jobs else None
    if study is None:
        return None
    url, name = study
    if not url.startswith(SERVERS) and not Path(_storage_file(url)).is_file():
        return None  # a study file moved or deleted: opening it would make an empty one
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    loaded = optuna.load_study(study_name=name, storage=open_storage(url))
    told = tell_finished(loaded, finished or {})
    failed = fail_abandoned(loaded, {trial for _, trial in jobs} - set(finished or {}))
    what = [f"Optuna trial(s) {', '.join(map(str, numbers))} of study {name!r} in "
            f"{redact(url)} told {state}" for state, numbers in
            [("their finished jobs' results", told), ("FAIL", failed)] if numbers]
    return "; ".join(what) or None


def tell_finished(study: Any, values: dict[int, float]) -> list[int]:
    """Tell the RUNNING trials with these ids what their finished jobs answered, as the
    sweeper would have: PRUNED if the job was pruned, else COMPLETE with its value. Their
    numbers."""
    from optuna.trial import TrialState

    told = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t._trial_id not in values:
            continue
        if PRUNED_ATTR in t.user_attrs:
            study.tell(t.number, state=TrialState.PRUNED, skip_if_finished=True)
        else:
            study.tell(t.number, values[t._trial_id], skip_if_finished=True)
        told.append(t.number)
    return told


def _study_of(job_settings: Path) -> tuple[str, str] | None:
    """The storage and name of the study a trial's job reported to, from its Hydra settings
    (.hydra/hydra.yaml), resolved as the job resolved them; None if they cannot be read."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        hydra = OmegaConf.load(job_settings).hydra
        return (resolve_storage(hydra.sweeper.get("storage"), Path(hydra.runtime.cwd)),
                str(hydra.sweeper.study_name))
    except (OSError, ValueError, TypeError, OmegaConfBaseException, ConfigError):
        return None


def _storage_file(url: str) -> str:
    """The file a SQLite or journal storage keeps its study in."""
    return url.removeprefix(JOURNAL) if url.startswith(JOURNAL) else _sqlite_file(url)[0]


def cluster_note(url: str, launcher: Any) -> str | None:
    """A warning for a study in a SQLite file whose trials SLURM runs: its nodes share
    the file over the network, where SQLite's locking and WAL do not work (a one-node
    cluster is fine, hence a warning, not a refusal)."""
    if not url.startswith("sqlite:") or not is_slurm(launcher):
        return None
    return (f"the Optuna study is in a SQLite file ({url}), which SLURM jobs on other nodes "
            "cannot share safely; use hydra.sweeper.storage=journal:PATH on a shared file "
            "system or postgresql://...")


def _sqlite_file(url: str) -> tuple[str, str]:
    """A SQLite URL's database path and its query string (?..., or empty)."""
    database, sep, query = url.split(":///", 1)[-1].partition("?")
    return database, sep + query


def _with_driver(url: str) -> str:
    """A plain postgresql:// with the driver that is installed: SQLAlchemy 2.1 picks
    psycopg 3 for it, the team extra installs psycopg2."""
    if not url.startswith("postgresql://") or importlib.util.find_spec("psycopg"):
        return url
    if importlib.util.find_spec("psycopg2"):
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    raise ConfigError(f"hydra.sweeper.storage={redact(url)} needs a PostgreSQL driver, which "
                      "is not installed: pip install -e \".[team]\" (psycopg2)")


def make_sampler(name: str, seed: int | None) -> Any:
    """TPE (the default), random or CMA-ES, seeded when a seed is given. TPE lies about
    trials still running (constant_liar), so parallel workers are not offered settings
    next to ones another worker is training; alone, it changes nothing."""
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    raise ConfigError(f"hydra.sweeper.sampler.name={name}: no such sampler; allowed: "
                      f"{', '.join(SAMPLERS)}")


def make_pruner(name: str = "median", n_startup_trials: int = 2,
                n_warmup_steps: int = 0) -> Any:
    """The median rule (stop a trial whose epoch is worse than the median of earlier
    trials' same epoch), or none."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials,
                                           n_warmup_steps=n_warmup_steps)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"hydra.sweeper.pruner.name={name}: no such pruner; allowed: "
                      f"{', '.join(PRUNERS)}")
