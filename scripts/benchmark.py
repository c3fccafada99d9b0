"""Speed and memory of mnist-exp against the reference recipe, side by side.

    python scripts/benchmark.py                 # 5 epochs; full Fashion-MNIST if installed
    python scripts/benchmark.py --epochs 25 --out outputs/benchmark

Measures, each in a fresh process on the same data (Fashion-MNIST from the Debian package
when installed, otherwise the digits shipped with mnist-exp, data=mnist_sample), in
interleaved rounds:
1. the reference recipe as a bare Keras script (scripts/bare_keras_recipe.py);
2. our pipeline's training of the same recipe (same batch size, optimizer, epochs);
3. the hand-written JAX loop (scripts/jax_recipe.py; --jax-python: an environment with jax);
4. a whole tracked `python -m mnist_exp.run`, first with an empty XLA cache, then warm;
5. the same MLP in a plain PyTorch eager loop, when torch is installed (never required);
then start-up (`--help`, `--cfg job`), a sweep's fixed cost per job in one process (cold
and warm cache), a whole 25-epoch run split into phases (its time_*_s metrics) with its
peak memory, and `python -m mnist_exp.report` over 2,000 runs.
Writes benchmark.json and benchmark.md to --out and prints the table.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")
SAMPLE = ROOT / "src" / "mnist_exp" / "data" / "mnist_sample"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5, help="epochs for the training rows")
    parser.add_argument("--full-run-epochs", type=int, default=25)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmark")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (the "
                        "first tracked run compiles into an empty XLA cache, later ones load)")
    parser.add_argument("--jax-python", default=os.environ.get("JAX_PYTHON"),
                        help="a Python with jax installed, for the JAX peer (a separate "
                        "environment: TensorFlow imports jax when it is installed beside it, "
                        "~0.8 s); default $JAX_PYTHON, else this Python if it has jax")
    parser.add_argument("--worker", choices=["pipeline", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--dataset", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--path", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args.dataset, args.path, args.epochs)))
        return

    dataset, folder = ("fashion_mnist", FASHION) if FASHION.is_dir() else ("mnist_sample", SAMPLE)
    data_args = ["--dataset", dataset]
    results: dict = {"machine": machine(), "dataset": dataset, "data_path": str(folder),
                     "epochs": args.epochs}
    print(f"benchmarking on {dataset} ({folder}), {args.epochs} epochs ...",
          file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    # XLA's compilation cache of the runs measured here starts empty: the first tracked run
    # compiles (as a user's very first run does), later ones load.
    cache = args.out / "xdg_cache"
    shutil.rmtree(cache, ignore_errors=True)
    ENV["XDG_CACHE_HOME"] = str(cache)

    def keep() -> None:  # after every step: a slow or stopped benchmark still leaves data
        (args.out / "benchmark.json").write_text(json.dumps(results, indent=2))

    # Interleaved: each round runs every system once, so load from other users of the
    # machine falls on all of them alike; the table shows medians over the rounds.
    rounds: dict[str, list[dict]] = results.setdefault("rounds", {})
    for _ in range(args.repeats):
        for name, measure in systems(data_args, dataset, args.epochs, args.jax_python).items():
            rounds.setdefault(name, []).append(measure())
            results[name] = sorted(rounds[name], key=lambda r: r.get("process_s", 0))[
                len(rounds[name]) // 2] if rounds[name][0] else None
            keep()
    results["startup"] = {flag: startup(flag) for flag in ("--help", "--cfg job")}
    keep()
    results["sweep"] = sweep_fixed_cost(jobs=4, epochs=args.epochs)
    keep()
    results["full_run"] = full_run(dataset, args.full_run_epochs)
    keep()
    results["report_2000"] = report_at_scale(2000)
    keep()
    table = markdown(results)
    (args.out / "benchmark.md").write_text(table)
    print(table)


def systems(data_args: list[str], dataset: str, epochs: int, jax_python: str | None) -> dict:
    """One measurement of each system, by name: training (s/epoch) and whole process."""
    def script(name: str, python: str = sys.executable) -> dict:
        with tempfile.TemporaryDirectory() as scratch:
            report = Path(scratch) / "out.json"
            _, wall, _ = measured([f"scripts/{name}.py", *data_args, "--epochs", str(epochs),
                                   "--json", str(report)], python=python)
            return {**json.loads(report.read_text()), "process_s": wall}

    def optional(module: str, measure):  # a peer measured only when it happens to be there
        return measure if importlib.util.find_spec(module) else dict

    jax = (lambda: script("jax_recipe", jax_python)) if jax_python else optional(
        "jax", lambda: script("jax_recipe"))
    return {"bare_keras": lambda: script("bare_keras_recipe"),
            "jax": jax,
            "pipeline": lambda: worker("pipeline", data_args, epochs),
            "tracked_run": lambda: tracked_run(dataset, epochs),
            "pytorch_eager": optional("torch", lambda: worker("torch", data_args, epochs))}


def measured(argv: list[str], env: dict | None = None,
             python: str = sys.executable) -> tuple[str, float, int]:
    """Run `python argv` in a fresh process: (stdout, wall seconds, peak RSS in MiB)."""
    wrapper = ("import resource, subprocess, sys; "
               "p = subprocess.run([sys.executable, *sys.argv[1:]], capture_output=True, "
               "text=True); sys.stderr.write(p.stderr); print(p.stdout, end=''); "
               "print('PEAK_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
               "sys.exit(p.returncode)")
    start = time.perf_counter()
    done = subprocess.run([python, "-c", wrapper, *argv], cwd=ROOT, env=env or ENV,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"benchmark step failed: {' '.join(argv)}\n{done.stderr[-3000:]}")
    out, _, peak = done.stdout.rpartition("PEAK_KB ")
    return out, seconds, int(peak) // 1024


def worker(name: str, data_args: list[str], epochs: int) -> dict:
    out, _, _ = measured([__file__, "--worker", name, *data_args, "--epochs", str(epochs)])
    return json.loads(out.strip().splitlines()[-1])


def startup(flag: str) -> float:
    """Median wall time of three `python -m mnist_exp.run <flag>`."""
    return statistics.median(measured(["-m", "mnist_exp.run", *flag.split()])[1]
                             for _ in range(3))


def tracked_run(dataset: str, epochs: int) -> dict:
    """A whole `python -m mnist_exp.run` of the seed recipe, as a process."""
    row = full_run(dataset, epochs)
    return {**row, "process_s": row["wall_s"]}


def report_at_scale(runs: int, params: int = 60) -> dict:
    """`python -m mnist_exp.report` over `runs` runs of `params` params each, written fast
    with MlflowClient.log_batch into a scratch store."""
    import random

    import mlflow
    from mlflow.entities import Metric, Param

    with tempfile.TemporaryDirectory() as scratch:
        uri = f"sqlite:///{scratch}/mlflow.db"
        client = mlflow.MlflowClient(uri)
        experiment = client.create_experiment("scale", artifact_location=f"{scratch}/a")
        rng = random.Random(0)
        now = int(time.time() * 1000)
        for i in range(runs):
            run = client.create_run(experiment, run_name=f"run {i}")
            client.log_batch(run.info.run_id, params=[
                Param(f"p.{k}", str(rng.choice([1, 2, 3, i]))) for k in range(params)],
                metrics=[Metric("final_val_accuracy", rng.uniform(0.8, 0.9), now, 0),
                         Metric("test_accuracy", rng.uniform(0.8, 0.9), now, 0)])
            client.set_terminated(run.info.run_id)
        out, wall, peak = measured(["-m", "mnist_exp.report", "--experiment", "scale",
                                    "--tracking-uri", uri, "--out", f"{scratch}/report"])
        return {"runs": runs, "params": params, "wall_s": wall, "peak_rss_mib": peak,
                "table_lines": out.count("\n")}


def full_run(dataset: str, epochs: int) -> dict:
    """A real run into a scratch store (made beforehand, as a user's already is)."""
    import mlflow

    with tempfile.TemporaryDirectory() as scratch:
        uri = f"sqlite:///{scratch}/mlflow.db"
        args = ["-m", "mnist_exp.run", "experiment=seed_notebook", f"data={dataset}",
                f"trainer.epochs={epochs}", f"tracking.uri={uri}", f"hydra.run.dir={scratch}/h"]
        # A first, tiny run creates the store, as a user's already exists.
        measured([*args, "trainer.epochs=1", "data.max_train_samples=500",
                  "data.max_test_samples=100"])
        launched = time.time()
        _, wall, peak = measured(args)
        client = mlflow.MlflowClient(uri)
        [run] = client.search_runs(["1"], order_by=["start_time DESC"], max_results=1)
        phases = {k.removeprefix("time_").removesuffix("_s"): v
                  for k, v in run.data.metrics.items() if k.startswith("time_")}
        # The process around the MLflow run: before it starts (interpreter, Hydra, imports,
        # data, setup) and after it ends (the summary and the exit).
        return {"epochs": epochs, "wall_s": wall, "peak_rss_mib": peak, "phases_s": phases,
                "before_run_s": run.info.start_time / 1000 - launched,
                "after_run_s": launched + wall - run.info.end_time / 1000,
                "test_accuracy": run.data.metrics["test_accuracy"]}


def sweep_fixed_cost(jobs: int, epochs: int) -> dict:
    """What a sweep job costs besides its training, in one process (the basic launcher):
    the same sweep of `jobs` jobs on the shipped digits twice, the second loading what the
    first compiled. A job's cost is the time from its MLflow run's start to the next job's;
    its training is its epochs at the steady s/epoch of our training path on that data."""
    import mlflow

    steady_epoch = steady(worker("pipeline", ["--dataset", "mnist_sample"], epochs))
    rates = ",".join(f"{1e-3 * (k + 1):g}" for k in range(jobs))
    out: dict = {"jobs": jobs, "epochs": epochs, "steady_epoch_s": steady_epoch}
    with tempfile.TemporaryDirectory() as scratch:
        uri = f"sqlite:///{scratch}/mlflow.db"
        for attempt in ("cold", "warm"):
            _, wall, _ = measured(["-m", "mnist_exp.run", "-m", "data=mnist_sample",
                                   f"trainer.epochs={epochs}", f"tracking.uri={uri}",
                                   f"optimizer.learning_rate={rates}",
                                   f"hydra.sweep.dir={scratch}/{attempt}"])
            runs = mlflow.MlflowClient(uri).search_runs(
                ["1"], f"tags.`sweep.job` != '' and attributes.start_time > "
                f"{int((time.time() - wall) * 1000)}", order_by=["start_time ASC"])
            starts = [r.info.start_time / 1000 for r in runs]
            cycles = [b - a for a, b in itertools.pairwise(starts)]
            out[attempt] = {"wall_s": wall, "job_cycle_s": cycles,
                            "fixed_cost_s": statistics.median(cycles) - epochs * steady_epoch}
    return out


def _pipeline_worker(dataset: str, path: str | None, epochs: int) -> dict:
    """Our training path with the seed_notebook config, timed per epoch."""
    from hydra import compose, initialize_config_dir

    from mnist_exp.cli.run import CONF_DIR
    from mnist_exp.config.schema import parse_config
    from mnist_exp.data.load import load_dataset
    from mnist_exp.evaluation.scoring import score
    from mnist_exp.training.execution import prepare_model
    from mnist_exp.training.fit import EpochClock, fit

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        # No XLA cache, as before the rows were measured: each round compiles its steps.
        overrides = ["experiment=seed_notebook", f"data={dataset}", f"trainer.epochs={epochs}",
                     "trainer.compile_cache=false"]
        config = parse_config(compose("config", overrides=overrides
                                      + ([f"data.path={path}"] if path else [])))
    t = config.trainer
    data = load_dataset(dataset, path, validation_split=config.data.validation_split,
                        seed=t.seed)
    model, plan = prepare_model(config, data)  # exactly what a run trains
    clock = EpochClock()
    start = time.perf_counter()
    fit(model, data, t, plan, learning_rate=config.optimizer.learning_rate, callbacks=[clock],
        verbose=0)
    seconds = time.perf_counter() - start
    test = score(model, data.x_test, data.y_test, data.class_names, t.eval_batch_size)
    return {"seconds_per_epoch": seconds / epochs, "epoch_seconds": clock.seconds,
            "test_accuracy": test.accuracy, "train_samples": len(data.y_train),
            "settings": {"steps_per_execution": t.steps_per_execution,
                         "jit_compile": t.jit_compile, "eval_batch_size": t.eval_batch_size}}


def _torch_worker(dataset: str, path: str | None, epochs: int) -> dict:
    """The same MLP, Adam (Keras' defaults), batch 32, in a plain PyTorch eager loop."""
    import numpy as np
    import torch

    from mnist_exp.data.load import load_arrays

    torch.manual_seed(42)
    (x, y), (x_test, y_test), _ = load_arrays(dataset, path)
    x = torch.tensor(x / 255.0, dtype=torch.float32).flatten(1)
    y = torch.tensor(y, dtype=torch.long)
    n_train = int(len(y) * 0.8)
    x_val, y_val, x, y = x[n_train:], y[n_train:], x[:n_train], y[:n_train]
    model = torch.nn.Sequential(torch.nn.Linear(784, 128), torch.nn.ReLU(),
                                torch.nn.Linear(128, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    loss_fn = torch.nn.CrossEntropyLoss()
    epoch_seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        for batch in torch.randperm(n_train).split(32):
            optimizer.zero_grad()
            loss_fn(model(x[batch]), y[batch]).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            loss_fn(model(x_val), y_val)
        epoch_seconds.append(time.perf_counter() - start)
    with torch.no_grad():
        test = torch.tensor(x_test / 255.0, dtype=torch.float32).flatten(1)
        accuracy = float((model(test).argmax(1).numpy() == np.asarray(y_test)).mean())
    return {"seconds_per_epoch": sum(epoch_seconds) / epochs, "epoch_seconds": epoch_seconds,
            "test_accuracy": accuracy, "train_samples": n_train,
            "threads": torch.get_num_threads(), "torch": torch.__version__}


WORKERS = {"pipeline": _pipeline_worker, "torch": _torch_worker}


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


def steady(row: dict) -> float:
    """Median epoch time after the first (which holds tracing and compilation)."""
    times = row["epoch_seconds"]
    return statistics.median(times[1:] if len(times) > 1 else times)


def markdown(r: dict) -> str:
    bare = r["bare_keras"]
    rows = [("bare Keras `fit` (reference recipe)", bare), ("mnist-exp training", r["pipeline"])]
    if r.get("jax"):
        rows.append(("hand-written JAX, epoch as one `lax.scan` (peer)", r["jax"]))
    if r["pytorch_eager"]:
        rows.append(("PyTorch eager loop (peer)", r["pytorch_eager"]))
    lines = [f"Machine: {r['machine']}. Data: {r['dataset']} ({r['data_path']}), "
             f"{r['epochs']} epochs, batch 32, Adam, 20% validation.", "",
             "| | s/epoch (steady) | s/epoch (all, incl. compile) | samples/s | speed-up vs bare"
             " | test accuracy |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, row in rows:
        lines.append(f"| {name} | {steady(row):.3f} | {row['seconds_per_epoch']:.3f} | "
                     f"{row['train_samples'] / steady(row):,.0f} | "
                     f"{steady(bare) / steady(row):.2f}x | {row['test_accuracy']:.4f} |")
    repeats = len(r["rounds"]["bare_keras"])
    lines += ["", f"Whole processes, {r['epochs']} epochs (median of {repeats} interleaved "
              "rounds):", "", "| process | wall s | vs JAX script | bare Keras vs it |",
              "| --- | ---: | ---: | ---: |"]
    jax = r.get("jax")
    tracked = r["rounds"]["tracked_run"]
    warm = (sorted(tracked[1:], key=lambda row: row["process_s"])[(len(tracked) - 1) // 2]
            if len(tracked) > 1 else None)
    for name, row in (("bare Keras script", bare), ("JAX script", jax),
                      ("`python -m mnist_exp.run experiment=seed_notebook` (tracked), XLA "
                       "cache empty (round 1)", tracked[0]),
                      ("the same, XLA cache warm (later rounds' median)", warm)):
        if row:
            wall = row["process_s"]
            versus = f"{wall / jax['process_s']:.2f}x" if jax else ""
            lines.append(f"| {name} | {wall:.1f} | {versus} | {bare['process_s'] / wall:.2f}x |")
    for name, row in (("empty cache", tracked[0]), ("warm cache", warm)):
        if row:
            phases = ", ".join(f"{k} {v:.2f}" for k, v in row["phases_s"].items())
            lines.append(f"\nTracked {r['epochs']}-epoch run, {name}: before its MLflow run "
                         f"starts {row['before_run_s']:.2f} s, after it ends "
                         f"{row['after_run_s']:.2f} s; phases (s): {phases}.")
    sweep = r.get("sweep")
    if sweep:
        lines += ["", f"A sweep of {sweep['jobs']} jobs of {sweep['epochs']} epochs on the "
                  f"shipped digits in one process (steady training {sweep['steady_epoch_s']:.3f}"
                  " s/epoch):", "", "| XLA cache | sweep wall s | a job's cycle s (median) | "
                  "fixed cost per job s |", "| --- | ---: | ---: | ---: |"]
        for attempt in ("cold", "warm"):
            row = sweep[attempt]
            lines.append(f"| {attempt} | {row['wall_s']:.1f} | "
                         f"{statistics.median(row['job_cycle_s']):.2f} | "
                         f"{row['fixed_cost_s']:.2f} |")
    scale = r["report_2000"]
    lines += ["", f"`python -m mnist_exp.report` over {scale['runs']:,} runs of "
              f"{scale['params']} params: {scale['wall_s']:.1f} s, peak "
              f"{scale['peak_rss_mib']} MiB, {scale['table_lines']} lines printed.", ""]
    run = r["full_run"]
    phases = run["phases_s"]
    around = sum(phases.get(k, 0) for k in ("evaluate", "plots", "tracking", "model_logging"))
    lines += ["", "| start-up and a whole run | seconds |", "| --- | ---: |",
              f"| `python -m mnist_exp.run --help` | {r['startup']['--help']:.2f} |",
              f"| `python -m mnist_exp.run --cfg job` | {r['startup']['--cfg job']:.2f} |",
              f"| `python -m mnist_exp.run experiment=seed_notebook` ({run['epochs']} epochs), "
              f"wall | {run['wall_s']:.1f} |"]
    lines += [f"| &nbsp;&nbsp;{phase} | {seconds:.2f} |" for phase, seconds in phases.items()]
    lines += [f"| evaluation + plots + tracking + model logging, as a share of training | "
              f"{100 * around / phases['train']:.1f}% |",
              f"| peak resident memory of the whole run | {run['peak_rss_mib']} MiB |",
              f"| its test accuracy | {run['test_accuracy']:.4f} |", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
