"""A fault at every write: a tiny run (its model included) whose store fails at write k,
for each k in turn, then `python -m mnist_exp.sync`; the store must then hold exactly what
the same run without a fault holds (issue 25). A run whose own process is killed at write
k (client_killed) must hold all its local record held, once, and nothing RUNNING.

    python scripts/fault_harness.py --kinds killed,refused --k all     # every k: ~25 s each
    python scripts/fault_harness.py --kinds client_killed --sweep --k 1,5,9

Write k is the k-th change the store is asked for (scripts/fault_proxy.py says what counts
and how each kind fails). Compared: the runs' statuses, params, tags, every metric point
(key, step, value; timings by key and step), artifact paths, dataset inputs,
logged models with their linked metrics, and how many of each: nothing lost, nothing
doubled. tests/tracking/test_fault_harness.py runs a few k with these functions.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from fault_proxy import KINDS, FaultProxy, MlflowServer

RUN = ("data=mnist_sample", "data.max_train_samples=300", "data.max_test_samples=300",
       "trainer.epochs=1", "tracking.system_metrics=false", "tracking.flush_timeout_s=2",
       "tracking.run_name=fault", "hydra.run.dir=run", "hydra.sweep.dir=sweep")
SWEEP = ("optimizer.learning_rate=0.001,0.002", "tracking.log_model=false")
# What differs between two runs of one command: its words (the port, the experiment), the
# code's commit (others commit meanwhile), and timings.
VOLATILE_TAGS = {"command", "overrides", "mlflow.source.git.commit", "git.dirty",
                 "mnist_exp.sweep_dir"}
VOLATILE_PARAMS = {"tracking.experiment_name"}
VOLATILE_METRICS = ("time_", "worker_utilisation")  # compared by key and step only
# The run's last line for a fault that outlasts it, and what the run exits with.
ENDS = {"killed": (3, "mnist-exp: error: tracking server {url} not answering"),
        "refused": (2, "mnist-exp: error: tracking store {url} refused"),
        "lost_reply": (0, None), "client_killed": (-signal.SIGKILL, "")}


def command(module: str, *args: str, cwd: Path, timeout: int = 600,
            proxy: FaultProxy | None = None) -> subprocess.CompletedProcess:
    """`python -m module args` in `cwd`, with no tracking URI of the caller's, in a process
    group of its own: `proxy`'s victim, for a client_killed fault."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",)}
    with subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as process:
        if proxy is not None:
            proxy.victim = process.pid
        try:
            out, err = process.communicate(timeout=timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # what it started, if it outlived it
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def tiny_run(proxy: FaultProxy, work: Path, experiment: str, sweep: bool = False
             ) -> subprocess.CompletedProcess:
    work.mkdir(parents=True, exist_ok=True)
    return command("mnist_exp.run", *(("-m", *SWEEP) if sweep else ()), f"tracking.uri={proxy.url}",
                   *RUN, f"tracking.experiment_name={experiment}", cwd=work, proxy=proxy)


def snapshot(uri: str, experiment: str) -> list[dict]:
    """What the store holds of an experiment's runs, in a form two runs compare by."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs([found.experiment_id])
    models = client.search_logged_models([found.experiment_id])
    held = [_run_snapshot(client, run, [m for m in models if m.source_run_id == run.info.run_id])
            for run in runs]
    return sorted(held, key=lambda r: (r["tags"].get("mnist_exp.sweep", ""),
                                       r["params"].get("optimizer.learning_rate", "")))


def _run_snapshot(client, run, models: list) -> dict:
    run_id = run.info.run_id
    points: Counter = Counter()
    for key in run.data.metrics:
        for m in client.get_metric_history(run_id, key):
            points[(key, m.step, None if key.startswith(VOLATILE_METRICS) else m.value)] += 1
    tags = {k: v for k, v in run.data.tags.items() if k not in VOLATILE_TAGS}
    for key in ("best_run_id", "mlflow.parentRunId"):  # ids differ: kept as "which one"
        if key in tags:
            tags[key] = _param_of(client, tags[key], "optimizer.learning_rate")
    return {
        "status": run.info.status,
        "params": {k: v for k, v in run.data.params.items() if k not in VOLATILE_PARAMS},
        "tags": tags,
        "metrics": dict(points),
        "artifacts": sorted(_artifacts(client, run_id, None)),
        "inputs": sorted((d.dataset.name, d.dataset.digest, tuple(sorted(
            (t.key, t.value) for t in d.tags))) for d in run.inputs.dataset_inputs),
        "models": sorted((m.name, str(m.status), tuple(sorted(Counter(
            (x.key, x.step, x.value) for x in m.metrics).items()))) for m in models),
    }


def _param_of(client, run_id: str, key: str) -> str:
    run = client.get_run(run_id)
    return f"{run.data.tags.get('mnist_exp.sweep', 'run')}:{run.data.params.get(key, '')}"


def _artifacts(client, run_id: str, path: str | None) -> list[str]:
    found = []
    for entry in client.list_artifacts(run_id, path):
        found += _artifacts(client, run_id, entry.path) if entry.is_dir else [entry.path]
    return found


def differences(expected: list[dict], got: list[dict]) -> list[str]:
    """What the store holds that differs from the fault-free reference, one line each."""
    if len(expected) != len(got):
        return [f"{len(got)} runs, not {len(expected)}: "
                f"{[(r['status'], r['tags'].get('mnist_exp.sweep')) for r in got]}"]
    lines = []
    for number, (want, have) in enumerate(zip(expected, got, strict=True)):
        for field, value in want.items():
            if have[field] != value:
                lines.append(f"run {number} {field}: {_diff(value, have[field])}")
    return lines


def _diff(want, have) -> str:
    if isinstance(want, dict):
        lost = {k: want[k] for k in want if have.get(k) != want[k]}
        extra = {k: have[k] for k in have if k not in want}
        return f"expected {str(lost)[:300]}, extra {str(extra)[:300]}"
    if isinstance(want, list):
        return (f"lacks {[x for x in want if x not in have][:5]}, "
                f"extra {[x for x in have if x not in want][:5]}")
    return f"{have!r}, not {want!r}"


def last_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def check_fault(proxy: FaultProxy, kind: str, k: int, work: Path, expected: list[dict],
                sweep: bool = False) -> list[str]:
    """One tiny run (or 2-job sweep) with `kind` at write k, then sync: the problems."""
    experiment = f"{'sweep' if sweep else 'run'}-{kind}-{k}"
    proxy.arm(kind, k)
    try:
        ran = tiny_run(proxy, work, experiment, sweep)
    finally:
        proxy.heal()
    problems = []
    if not proxy.faulted:
        problems.append(f"write {k} never came ({len(proxy.writes)} writes)")
    code, start = ENDS[kind]
    line = last_line(ran.stderr)
    if "Traceback" in ran.stderr:
        problems.append(f"run: a traceback: {ran.stderr[-1500:]}")
    if ran.returncode not in (0, code) or (ran.returncode == code != 0 and not line.startswith(
            start.format(url=proxy.url))):
        problems.append(f"run: exit {ran.returncode}, last line {line!r}")
    synced = command("mnist_exp.sync", "sweep" if sweep else "run", cwd=work)
    if synced.returncode != 0:
        problems.append(f"sync: exit {synced.returncode}: {synced.stderr[-1500:]}")
    got = snapshot(proxy.url, experiment)
    if kind == "client_killed":
        return problems + killed_differences(expected, got) + records_missing(work, proxy.url)
    return problems + differences(expected, got)


def _job(run: dict) -> tuple[str, str]:
    return run["tags"].get("mnist_exp.sweep", "run"), run["tags"].get("sweep.job", "")


def killed_differences(expected: list[dict], got: list[dict]) -> list[str]:
    """A run (or sweep) killed outright cannot hold all the reference holds, but once synced
    it holds each of the reference's runs at most once, none RUNNING, and nothing the
    reference lacks: no point, artifact or model doubled or made up."""
    want = {_job(run): run for run in expected}
    lines = [f"{job}: {count} runs" for job, count in Counter(map(_job, got)).items()
             if count > 1]
    for run in got:
        job, reference = _job(run), want.get(_job(run))
        if reference is None:
            lines.append(f"{job}: a run the reference lacks")
            continue
        if run["status"] not in ("FINISHED", "KILLED"):
            lines.append(f"{job}: {run['status']}")
        extra = {
            "params": {k: v for k, v in run["params"].items() if reference["params"].get(k) != v},
            "metrics": {p: n for p, n in run["metrics"].items()
                        if n > reference["metrics"].get(p, 0)},
            "artifacts": set(run["artifacts"]) - set(reference["artifacts"]),
            "models": Counter(m[:2] for m in run["models"]) - Counter(
                m[:2] for m in reference["models"])}
        lines += [f"{job} {field}: extra {str(value)[:300]}" for field, value in extra.items()
                  if value]
    return lines


def records_missing(work: Path, uri: str) -> list[str]:
    """What the local records under `work` hold that their runs in the store lack, one
    line each: what a killed run had recorded is never lost."""
    import mlflow

    from mnist_exp.tracking.record import find_records

    client, lines = mlflow.MlflowClient(uri), []
    for record in find_records([work]):
        run_id = record.ids.get("run_id")
        if run_id is None:
            lines.append(f"{record.folder}: never uploaded")
            continue
        run = client.get_run(run_id)
        held = {"params": set(run.data.params), "tags": set(run.data.tags),
                "metrics": set(), "artifacts": set(_artifacts(client, run_id, None))}
        held["metrics"] = {(key, m.step) for key in run.data.metrics
                           for m in client.get_metric_history(run_id, key)}
        wanted = {field: set() for field in held}
        for event in record.events:
            op = event["op"]
            if op in ("params", "tags"):
                wanted[op] |= set(event["values"])
            elif op == "untag":
                wanted["tags"] -= set(event["keys"])
            elif op == "metrics":
                wanted[op] |= {(key, event["step"]) for key in event["values"]}
            elif op == "artifact":
                wanted["artifacts"] |= _recorded_files(record.folder / event["file"],
                                                       event.get("artifact_path"))
            elif op == "end" and run.info.status != event["status"]:
                lines.append(f"{record.folder}: {run.info.status}, not {event['status']}")
        held["artifacts"] |= {path[:i + 1] for path in held["artifacts"]
                              for i, c in enumerate(path) if c == "/"}  # and their folders
        lines += [f"{record.folder} {field}: lacks {sorted(wanted[field] - held[field])[:5]}"
                  for field in held if wanted[field] - held[field]]
    return lines


def _recorded_files(local: Path, artifact_path: str | None) -> set[str]:
    """The store's paths of a recorded artifact. One the record let go of once the store
    took it (its file or folder is gone) is looked for by its folder alone."""
    prefix = f"{artifact_path}/" if artifact_path else ""
    if local.is_dir():
        return {prefix + str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()}
    return {prefix + local.name} if local.exists() or not prefix else {prefix}


def reference(proxy: FaultProxy, work: Path, sweep: bool = False) -> list[dict]:
    """The store's share of the run (or sweep) without a fault; and how many writes."""
    experiment = "sweep-reference" if sweep else "run-reference"
    proxy.arm(None)
    ran = tiny_run(proxy, work, experiment, sweep)
    if ran.returncode != 0:
        raise RuntimeError(f"the fault-free run failed: {ran.stderr[-3000:]}")
    return snapshot(proxy.url, experiment)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", default="killed,refused",
                        help=f"comma-separated, of {', '.join(KINDS)}")
    parser.add_argument("--k", default="all",
                        help="all, or comma-separated write numbers (-1: the last)")
    parser.add_argument("--sweep", action="store_true", help="a 2-job grid sweep instead")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="fault-harness-"))
    server = MlflowServer(folder / "server")
    server.start()
    proxy = FaultProxy(("127.0.0.1", server.port))
    failed = 0
    try:
        expected = reference(proxy, folder / "reference", args.sweep)
        writes = len(proxy.writes)
        ks = range(1, writes + 1) if args.k == "all" else [  # -3: the third write from the end
            int(k) + (writes + 1 if int(k) < 0 else 0) for k in args.k.split(",")]
        print(f"the fault-free {'sweep' if args.sweep else 'run'}: {writes} writes")
        for kind in args.kinds.split(","):
            for k in ks:
                problems = check_fault(proxy, kind, k, folder / f"{kind}{k}", expected,
                                       args.sweep)
                hit = " ".join(proxy.faulted[:1][0]) if proxy.faulted else "-"
                print(f"{kind} at write {k} ({hit}): {'ok' if not problems else 'FAILED'}",
                      flush=True)
                for problem in problems:
                    print(f"    {problem}", flush=True)
                failed += bool(problems)
    finally:
        proxy.close()
        server.stop()
    if not failed:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        print(f"kept for a look: {folder}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
