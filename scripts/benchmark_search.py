"""An Optuna search of ours against the same search as a plain script, side by side.

    python scripts/benchmark_search.py                       # 12 trials of 5 epochs, 1 round
    python scripts/benchmark_search.py --rounds 2 --workers 2

Both sides run the project's search (conf/hparams_search/optuna.yaml: its space, seeded
TPE, median pruning) with the same trials, epochs and data (full Fashion-MNIST from the
Debian package, or --data/--data-path), each in a fresh process, in interleaved rounds (the
side that goes first alternates):
- plain: scripts/plain_optuna_search.py, Optuna + Keras `fit`, no tracking at all;
- ours: `python -m mnist_exp.run -m hparams_search=optuna ...` in a scratch folder (its
  MLflow and Optuna stores made afresh), with --workers N on joblib's launcher.
Prints the wall times, the ratio (ours / plain), trials per minute, utilisation (busy time
/ (workers x wall): the plain side's from its trials, ours from the sweep's parent run when
its summary records one, else n/a) and where a trial of ours spends its time besides its
training (its time_*_s metrics; "outside the run": Hydra's job setup, the sweeper's ask and
tell, the run's start and end). Writes search.json and search.md to --out.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmark import ENV, ROOT, machine
from plain_optuna_search import study_spec

FASHION = Path("/usr/share/datasets/fashion-mnist")
PHASES = ("data", "setup", "tracking", "evaluate", "model_logging", "plots")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds")
    parser.add_argument("--workers", type=int, default=1, help="trials at once")
    parser.add_argument("--data", default="fashion_mnist", help="a data= choice of ours")
    parser.add_argument("--data-path", help="its files (default: the config's)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmark_search")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"),
                     "data": args.data, "data_path": args.data_path, "trials": args.trials,
                     "epochs": args.epochs, "workers": args.workers, "rounds": []}
    print(f"searching {args.trials} trials of {args.epochs} epochs on {args.data}, "
          f"{args.workers} worker(s), {args.rounds} round(s) ...", file=sys.stderr)
    with tempfile.TemporaryDirectory() as scratch:
        spec = Path(scratch, "study.json")
        spec.write_text(json.dumps(study_spec()))
        for number in range(args.rounds):
            sides = [("plain", lambda: plain(args, spec)), ("ours", lambda: ours(args))]
            done = {}
            for name, measure in sides[::-1] if number % 2 else sides:
                done[name] = measure()
                print(f"round {number + 1}: {name} {done[name]['wall_s']:.1f} s",
                      file=sys.stderr)
            results["rounds"].append(done)
            (args.out / "search.json").write_text(json.dumps(results, indent=2))
    table = markdown(results)
    (args.out / "search.md").write_text(table)
    print(table)


def measured(argv: list[str], cwd: Path) -> tuple[float, tuple[float, float]]:
    """Run `python argv` in a fresh process: its wall seconds and the 1-minute load
    average before and after (other users of the machine show there)."""
    before = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *argv], cwd=cwd, env=ENV, capture_output=True,
                          text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"benchmark step failed: {' '.join(argv)}\n{done.stderr[-3000:]}")
    return wall, (before, os.getloadavg()[0])


def plain(args: argparse.Namespace, spec: Path) -> dict:
    """The plain script's search: its wall time, trials and utilisation."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch, "plain.json")
        wall, load = measured([str(ROOT / "scripts" / "plain_optuna_search.py"), "--dataset",
                               args.data, "--trials", str(args.trials), "--epochs",
                               str(args.epochs), "--workers", str(args.workers), "--study",
                               str(spec), "--json", str(report),
                               *(["--path", args.data_path] if args.data_path else [])],
                              Path(scratch))
        row = json.loads(report.read_text())
    return {"wall_s": wall, "load": load, "trials": row["trials"],
            "utilisation": row["utilisation"]}


def ours(args: argparse.Namespace) -> dict:
    """Our search, in a scratch folder: its wall time, and each trial's run from MLflow."""
    parallel = (["hydra/launcher=joblib", f"hydra.sweeper.n_jobs={args.workers}",
                 f"hydra.launcher.n_jobs={args.workers}"] if args.workers > 1 else [])
    with tempfile.TemporaryDirectory() as scratch:
        wall, load = measured(["-m", "mnist_exp.run", "-m", "hparams_search=optuna",
                               f"data={args.data}", f"trainer.epochs={args.epochs}",
                               f"hydra.sweeper.n_trials={args.trials}", "hydra.sweep.dir=sweep",
                               *([f"data.path={args.data_path}"] if args.data_path else []),
                               *parallel], Path(scratch))
        return {"wall_s": wall, "load": load, **runs_of(Path(scratch, "mlflow.db"))}


def runs_of(database: Path) -> dict:
    """The sweep's trials as their runs recorded them (phases, start and end) and the
    parent's utilisation, if its summary recorded one."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{database}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              order_by=["attributes.start_time ASC"], max_results=10000)
    parent = next(r for r in runs if r.data.tags.get("mnist_exp.sweep") == "parent")
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    utilisation = parent.data.metrics.get("worker_utilisation")
    return {"utilisation": utilisation, "trials": [
        {"start": r.info.start_time / 1000, "end": r.info.end_time / 1000,
         "pruned": r.data.tags.get("optuna.pruned") == "true",
         "value": r.data.metrics.get("final_val_accuracy"),
         "phases": {k.removeprefix("time_").removesuffix("_s"): v
                    for k, v in r.data.metrics.items() if k.startswith("time_")}}
        for r in trials]}


def fixed_costs(trials: list[dict]) -> dict[str, float]:
    """A trial's cost besides its training (median over trials, seconds): its cycle (from
    its run's start to the next one's) less its `train` phase, split into its phases and
    what happens outside its run. The last trial has no next: it is left out."""
    rows = []
    for trial, after in itertools.pairwise(trials):
        phases = trial["phases"]
        cycle = after["start"] - trial["start"]
        row = {"cycle": cycle, "train": phases.get("train", 0.0),
               **{k: phases.get(k, 0.0) for k in PHASES}}
        row["fixed"] = cycle - row["train"]
        row["outside the run"] = row["fixed"] - sum(row[k] for k in PHASES)
        rows.append(row)
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]} if rows else {}


def markdown(r: dict) -> str:
    rounds = r["rounds"]
    load = [x for side in rounds for row in side.values() for x in row["load"]]
    lines = [f"{r['date']}, {r['machine']}, data {r['data']}, {r['trials']} trials of "
             f"{r['epochs']} epochs, {r['workers']} worker(s), {len(rounds)} round(s); "
             f"1-minute load average {min(load):.1f}-{max(load):.1f}:", "",
             "| search | wall s (median) | walls s | trials/min | utilisation |",
             "| --- | ---: | --- | ---: | ---: |"]
    median = {}
    for side, label in (("plain", "plain script (Optuna + Keras `fit`, no tracking)"),
                        ("ours", "`python -m mnist_exp.run -m hparams_search=optuna`")):
        walls = [row[side]["wall_s"] for row in rounds]
        median[side] = statistics.median(walls)
        used = [row[side]["utilisation"] for row in rounds if row[side]["utilisation"]]
        lines.append(f"| {label} | {median[side]:.1f} | {', '.join(f'{w:.1f}' for w in walls)}"
                     f" | {60 * r['trials'] / median[side]:.2f} | "
                     f"{f'{statistics.median(used):.0%}' if used else 'n/a'} |")
    lines += ["", f"ratio (ours / plain): {median['ours'] / median['plain']:.2f}x", ""]
    # With several workers, trials overlap: a trial's cycle is no longer its cost.
    costs = [fixed_costs(row["ours"]["trials"]) for row in rounds if r["workers"] == 1]
    costs = [c for c in costs if c]
    if costs:
        keys = list(costs[0])
        lines += ["A trial of ours besides its training, median over its trials (s):", "",
                  "| " + " | ".join(keys) + " |", "|" + " ---: |" * len(keys)]
        lines += ["| " + " | ".join(f"{c[k]:.2f}" for k in keys) + " |" for c in costs]
    pruned = [sum(t["pruned"] for t in row["ours"]["trials"]) for row in rounds]
    plain_pruned = [sum(t["state"] == "PRUNED" for t in row["plain"]["trials"])
                    for row in rounds]
    lines += ["", f"pruned trials, ours: {pruned}; plain: {plain_pruned}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
