"""MLflow's system metrics (CPU, memory, disk, network, GPUs: system/*) for runs of any
length, sampled by MLflow's own monitor and collectors."""

from __future__ import annotations

import logging

from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

# Where MLflow's monitor reports; quieted while the tracking server is away (tracker.py).
log = logging.getLogger("mlflow.system_metrics")


class SampledAtStartAndEnd(SystemMetricsMonitor):
    """MLflow's monitor, plus a sample as the run starts and one as it ends. Its thread
    publishes a sample only once an interval has passed, and drops it if the run ended
    meanwhile: a run shorter than the interval had no system metric at all. Here the
    start sample goes out first from the monitor's thread; the end sample, taken once that
    thread has stopped, reports the CPU use over the whole run (psutil measures since the
    start sample, taken in the same thread)."""

    def start(self) -> None:
        self.collect_metrics()
        super().start()

    def monitor(self) -> None:
        self._publish()
        super().monitor()

    def finish(self) -> None:
        thread = self._process
        # A thread that ended by itself found the run gone or the server away: no end sample.
        if thread is not None and thread.is_alive():
            self._shutdown_event.set()
            thread.join()
            for collector in self.monitors:  # the unfinished interval's sample is stale now
                collector.clear_metrics()
            self.collect_metrics()
            self._publish()
        super().finish()  # sends what MLflow's batching logger still holds

    def _publish(self) -> None:
        try:
            self.publish_metrics(self.aggregate_metrics())
        except Exception as e:
            log.warning("system metrics not logged: %s", e)
