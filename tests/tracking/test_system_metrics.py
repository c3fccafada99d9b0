"""System metrics of a run shorter than their sampling interval: sampled at its start and
at its end, through MLflow's own monitor, into the run's store."""

from __future__ import annotations

import mlflow

from helpers import run_module
from mnist_exp.config.sections import TrackingConfig

INTERVAL_MS = TrackingConfig().system_metrics_interval * 1000  # the default, 10 s


def test_a_short_run_has_system_metrics_from_its_start_and_its_end(tmp_path):
    """A 1-epoch run on 300 digits at the default interval: before, it ended before the
    first sample was due and recorded no system/* metric."""
    process = run_module("mnist_exp.run", "data=mnist_sample", "data.max_train_samples=300",
                         "data.max_test_samples=300", "trainer.epochs=1",
                         "tracking.log_model=false", "hydra.run.dir=hydra_out", cwd=tmp_path)
    assert process.returncode == 0, process.stderr[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("mnist_sample").experiment_id])
    start, end = run.info.start_time, run.info.end_time
    for key in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes",
                "system/disk_usage_percentage"):
        points = sorted(client.get_metric_history(run.info.run_id, key),
                        key=lambda m: m.timestamp)
        assert len(points) >= 2, (key, end - start)
        assert [m.step for m in points] == list(range(len(points)))
        # the first and last samples are the run's start and end, not periodic ones
        assert 0 <= points[0].timestamp - start < INTERVAL_MS / 2, (key, points, start)
        assert 0 <= end - points[-1].timestamp < INTERVAL_MS / 2, (key, points, end)
    memory = client.get_metric_history(run.info.run_id, "system/system_memory_usage_megabytes")
    assert all(m.value > 0 for m in memory)
