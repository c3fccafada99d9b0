"""A sweep's end: its jobs ranked onto the parent run, the best model crowned, the outcome
printed. Run by the sweep's callback, or by `python -m mnist_exp.sync` for a sweep whose
server was away at its end (it leaves SUMMARY_PENDING in its folder).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mnist_exp.errors import JobsFailed, ServerDown
from mnist_exp.sweeps.failures import FAILED, jobs_failed
from mnist_exp.sweeps.study import PRUNED_TAG
from mnist_exp.tracking.store import SweepInfo

CHAMPION = "champion"
SUMMARY_PENDING = "SUMMARY_PENDING"  # the sweep ended while its server was away


@dataclass(frozen=True)
class Utilisation:
    """How busy a sweep kept its workers: the jobs' run time over workers x wall."""

    workers: int  # the most jobs that ran at once
    busy: float  # seconds: the jobs' runs, summed
    wall: float  # seconds: from the first job's start to the last job's end

    @property
    def share(self) -> float:
        return self.busy / (self.workers * self.wall)


def utilisation(spans: list[tuple[int | None, int | None]]) -> Utilisation | None:
    """The utilisation of jobs that ran over `spans` (start, end in ms, as MLflow keeps a
    run's times); None without two distinct times. Time a worker spends between its jobs
    (waiting for a batch's slowest, launching, setting up) is what it lowers."""
    done = [(s, e) for s, e in spans if s is not None and e is not None and e >= s]
    if not done:
        return None
    wall = max(e for _, e in done) - min(s for s, _ in done)
    if wall <= 0:
        return None
    running = peak = 0  # at equal times a job's end comes before the next one's start
    for _, step in sorted([(s, 1) for s, _ in done] + [(e, -1) for _, e in done]):
        running += step
        peak = max(peak, running)
    return Utilisation(peak, sum(e - s for s, e in done) / 1000, wall / 1000)


def finish_sweep(info: SweepInfo, sweep_dir: Path, registered: str | None) -> JobsFailed | None:
    """Rank the sweep's jobs by validation accuracy, record the table, a comparison plot,
    the best model's crowning and the end on the parent's record (parent.py) and upload
    it, and print the outcome;
    the error the sweep ends with if jobs failed. ServerDown if the store stops answering at
    any step (each is safe to repeat: the sweep stays SUMMARY_PENDING for sync)."""
    from mnist_exp.tracking.upload import unreachable

    try:
        return _finish(info, sweep_dir, registered)
    except Exception as e:
        if unreachable(e):
            raise ServerDown(str(e)) from e
        raise


def _finish(info: SweepInfo, sweep_dir: Path, registered: str | None) -> JobsFailed | None:
    import mlflow

    from mnist_exp.sweeps import ranking as report
    from mnist_exp.sweeps.parent import parent_record, upload

    client = mlflow.MlflowClient(info.tracking_uri)
    rows = report.rank(report.load_rows(client, [info.experiment_id], info.parent_run_id))
    if info.resumed:  # a job that ran again counts once, as it ended now
        rows = [r for r in rows if r.run_id not in _superseded(client, info)]
    keys = report.differing_params(rows[:report.TOP])
    # A job can fail before its run exists (e.g. a bad value in the sweep): each failed
    # job leaves a FAILED file in its folder (failures.py).
    failed = len(list(sweep_dir.glob(f"*/{FAILED}")))
    jobs = client.search_runs([info.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{info.parent_run_id}'",
                              max_results=50000)
    # A resumed sweep's earlier try is apart in time from this one: no utilisation of both.
    use = None if info.resumed else utilisation([(r.info.start_time, r.info.end_time)
                                                 for r in jobs])
    best = rows[0] if rows and report.ranked(rows[0]) else None  # never a stopped run
    record = parent_record(sweep_dir, info)
    crowned = None
    if not record.ended:  # else recorded by an earlier try, and only its upload is left
        _record_summary(record, report, rows, keys, failed, use)
        if best is not None:
            _record_best(record, best, report.describe(best, keys))
            crowned = _crown(client, record, registered, best) if registered else None
        record.append("end", status="FINISHED" if best else "FAILED", end_time=_now())
    upload(record, info.tracking_uri)
    (sweep_dir / SUMMARY_PENDING).unlink(missing_ok=True)
    pruned = sum(r.data.tags.get(PRUNED_TAG) == "true" for r in jobs)
    busy = (f"{use.workers} worker{'s' * (use.workers > 1)} busy {use.share:.0%} of "
            f"{use.wall:.0f} s; " if use is not None else "")
    print(f"\nSweep {info.sweep_id}: {sum(r.status == 'FINISHED' for r in rows)} jobs finished"
          f"{f' ({pruned} pruned by Optuna)' if pruned else ''}, {failed} failed; {busy}"
          f"ranking and plot on MLflow run {info.parent_run_id}")
    if best is not None:
        print(f"Best by validation accuracy ({best.val_accuracy:.4f}; test "
              f"{best.test_accuracy:.4f}): {report.describe(best, keys)}  [{best.run_id}]")
    if crowned:
        print(crowned)
    return jobs_failed(sweep_dir)


def _now() -> int:
    import time

    return int(time.time() * 1000)


def _record_summary(record, report, rows, keys, failed: int, use: Utilisation | None) -> None:
    """The ranking, the comparison plot and the counts, on the parent's record."""
    import matplotlib.pyplot as plt

    from mnist_exp.sweeps.parent import add_file

    add_file(record, "sweep_ranking.md",
             lambda path: path.write_text(report.to_markdown(rows, keys)))
    figure = report.plot_comparison(rows, keys)
    add_file(record, "sweep_comparison.png", figure.savefig)
    plt.close(figure)
    values = {"jobs": len(rows) + failed - sum(r.status == "FAILED" for r in rows),
              "failed_jobs": failed}
    if use is not None:
        values |= {"worker_utilisation": use.share, "workers": use.workers}
    record.append("metrics", values=values, step=0, timestamp=_now())


def _record_best(record, best, config: str) -> None:
    """The best job's scores and config on the parent's record."""
    values = {"best_final_val_accuracy": best.val_accuracy}
    if best.test_accuracy is not None:
        values["best_test_accuracy"] = best.test_accuracy
    record.append("metrics", values=values, step=0, timestamp=_now())
    record.append("tags", values={"best_run_id": best.run_id, "best_config": config})


def _crown(client, record, name: str, best) -> str | None:
    """Give the alias `champion` to the registered version of the sweep's best run (a
    ranking.Row), only if it beats the current champion's validation accuracy on the same
    dataset (an alias event on the parent's record); otherwise the alias stays. The line
    that says which, printed once the store has it."""
    from mlflow.exceptions import MlflowException

    versions = client.search_model_versions(f"name = '{name}' and run_id = '{best.run_id}'")
    if not versions:
        return None
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no champion yet
        current = None
    if current is not None and current.run_id != best.run_id:
        held = client.get_run(current.run_id).data
        its_data, our_data = held.params.get("data.name"), best.params.get("data.name")
        its_score = held.metrics.get("final_val_accuracy")
        if its_data != our_data:
            return (f"models:/{name}@{CHAMPION} stays version {current.version}: it was "
                    f"trained on {its_data}, this sweep on {our_data}, so their scores do "
                    "not compare")
        if its_score is not None and best.val_accuracy <= its_score:
            return (f"models:/{name}@{CHAMPION} stays version {current.version} (validation "
                    f"accuracy {its_score:.4f}); this sweep's best reached "
                    f"{best.val_accuracy:.4f}")
    record.append("alias", name=name, alias=CHAMPION, version=versions[0].version)
    was = f" (was version {current.version})" if current is not None else ""
    return f"models:/{name}@{CHAMPION} is now version {versions[0].version}{was}"


def _superseded(client, info: SweepInfo) -> set[str]:
    """In a resumed sweep, the earlier runs of jobs that ran again (same overrides)."""
    runs = client.search_runs([info.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{info.parent_run_id}'",
                              order_by=["attributes.start_time DESC"])
    seen: set[str | None] = set()
    older: set[str] = set()
    for run in runs:  # newest first
        key = run.data.tags.get("overrides")
        if key in seen:
            older.add(run.info.run_id)
        seen.add(key)
    return older
