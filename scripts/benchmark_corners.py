"""Each corner of the schema on each training path: which path is the fastest for it, and which
one trainer.jit_compile=auto (the default) takes.

    python scripts/benchmark_corners.py                  # 3 epochs a path; all corners
    python scripts/benchmark_corners.py --only dropout --epochs 2

A corner is a config that changes what a training step computes (dropout, batch norm,
augmentation, label smoothing, a schedule, the CNN, small and large batches, the corners of
the default Optuna space). Each corner runs in a fresh process (full Fashion-MNIST from the
Debian package when installed, otherwise data=mnist_sample) on three paths, one after the
other in an order that rotates from corner to corner:
- xla: trainer.jit_compile=true, our XLA path (resident sets; fused chunks with augmentation);
- keras_loop: trainer.jit_compile=false, Keras' own steps_per_execution loop without XLA;
- plain: trainer.steps_per_execution=1 trainer.jit_compile=false trainer.eval_batch_size=32,
  Keras' plain fit.
"steady" is the median epoch (training and validation) after the second: the first traces
and compiles, and on the XLA paths the second often compiles again (several seconds).
Writes corners.json and corners.md to --out and prints the table (--table: again, from a
corners.json written before).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmark import ENV, FASHION, ROOT, machine

# name: (overrides, what it stands for)
CORNERS: dict[str, tuple[list[str], str]] = {
    "seed": ([], "the seed recipe: MLP 128/32, batch 32"),
    "dropout": (["model.hidden_units=[512,128]", "model.dropout=0.25"],
                "issue 26's: MLP 512/128, dropout 0.25, batch 32"),
    "dropout_small": (["model.dropout=0.1"], "MLP 128/32, dropout 0.1, batch 32"),
    "optuna_small_net": (["model.hidden_units=[64,32]", "model.dropout=0.5",
                          "trainer.batch_size=256"],
                         "Optuna space: MLP 64/32, dropout 0.5, batch 256"),
    "optuna_large_net": (["model.hidden_units=[512,128]", "model.dropout=0.05",
                          "trainer.batch_size=256"],
                         "Optuna space: MLP 512/128, dropout 0.05, batch 256"),
    "batch_norm": (["model.batch_norm=true"], "MLP 128/32 with batch norm"),
    "mlp_tuned": (["experiment=mlp_tuned", "trainer.early_stopping.enabled=false"],
                  "experiment=mlp_tuned: batch norm, dropout 0.1, label smoothing, plateau"),
    "augment": (["trainer.augment.max_shift=2"], "augmentation: shifts of up to 2 pixels"),
    "label_smoothing": (["trainer.label_smoothing=0.1"], "label smoothing 0.1"),
    "cosine": (["trainer.lr_schedule.name=cosine"], "cosine learning-rate schedule"),
    "plateau": (["trainer.lr_schedule.name=plateau"], "plateau learning-rate schedule"),
    "batch_8": (["trainer.batch_size=8"], "batch 8"),
    "batch_256": (["trainer.batch_size=256"], "batch 256"),
    "cnn": (["model=cnn", "data.max_train_samples=3000"],
            "model=cnn (dropout 0.25), batch 32, on 3,000 samples"),
}
PATHS: dict[str, list[str]] = {
    "xla": ["trainer.jit_compile=true"],
    "keras_loop": ["trainer.jit_compile=false"],
    "plain": ["trainer.steps_per_execution=1", "trainer.jit_compile=false",
              "trainer.eval_batch_size=32"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs on each path")
    parser.add_argument("--only", nargs="*", choices=list(CORNERS), help="these corners only")
    parser.add_argument("--samples", type=int, help="data.max_train_samples of every corner "
                        "that sets none (a shared machine's shorter run); default: all")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmark_corners")
    parser.add_argument("--table", type=Path, help="print the table of this corners.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", default="mnist_sample", help=argparse.SUPPRESS)
    parser.add_argument("--order", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.table:
        print(markdown(json.loads(args.table.read_text())))
        return
    if args.worker:
        print(json.dumps(_corner(args.worker, args.dataset, args.epochs, args.order,
                                 args.samples)))
        return
    dataset = "fashion_mnist" if FASHION.is_dir() else "mnist_sample"
    results: dict = {"machine": machine(), "dataset": dataset, "epochs": args.epochs,
                     "samples": args.samples, "date": time.strftime("%Y-%m-%d"), "corners": {}}
    print(f"corners on {dataset}, {args.epochs} epochs a path ...", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    for order, name in enumerate(args.only or CORNERS):
        done = subprocess.run([sys.executable, __file__, "--worker", name, "--dataset", dataset,
                               "--epochs", str(args.epochs), "--order", str(order),
                               *(["--samples", str(args.samples)] if args.samples else [])],
                              cwd=ROOT, env=ENV, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"corner {name} failed:\n{done.stderr[-3000:]}")
        results["corners"][name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(_row(name, results["corners"][name]), file=sys.stderr)
        (args.out / "corners.json").write_text(json.dumps(results, indent=2))
    table = markdown(results)
    (args.out / "corners.md").write_text(table)
    print(table)


def _corner(name: str, dataset: str, epochs: int, order: int, samples: int | None) -> dict:
    """One corner on every path in this process (the data loaded once), in rotated order."""
    from mnist_exp.data.load import load_dataset
    from mnist_exp.training.execution import plan_for

    overrides = CORNERS[name][0]
    if samples and not any(o.startswith("data.max_train_samples=") for o in overrides):
        overrides = [*overrides, f"data.max_train_samples={samples}"]
    config = _config(dataset, epochs, overrides)
    d = config.data
    data = load_dataset(dataset, d.path, validation_split=d.validation_split,
                        seed=config.trainer.seed, max_train_samples=d.max_train_samples)
    paths = list(PATHS)
    paths = paths[order % 3:] + paths[:order % 3]
    row: dict = {"overrides": overrides, "train_samples": len(data.y_train)}
    for path in paths:
        row[path] = _train(_config(dataset, epochs, overrides + PATHS[path]), data)
    row["auto"] = "xla" if plan_for(config).jit_compile else "keras_loop"
    return row


def _config(dataset: str, epochs: int, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from mnist_exp.cli.run import CONF_DIR
    from mnist_exp.config.schema import parse_config

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return parse_config(compose("config", overrides=[
            f"data={dataset}", *overrides, f"trainer.epochs={epochs}",
            "trainer.compile_cache=false", "trainer.reuse_model=false"]))


def _train(config, data) -> dict:
    """Train as a run does (prepare_model, fit), timing each epoch."""
    from mnist_exp.training.execution import prepare_model
    from mnist_exp.training.fit import EpochClock, fit

    model, plan = prepare_model(config, data)
    clock = EpochClock()
    history = fit(model, data, config.trainer, plan, callbacks=[clock], verbose=0,
                  learning_rate=config.optimizer.learning_rate)
    return {"epoch_seconds": clock.seconds, "val_accuracy": history["val_accuracy"][-1],
            "plan": {"jit_compile": plan.jit_compile, "resident": plan.resident,
                     "fused": plan.fused}}


def steady(row: dict) -> float:
    """The median epoch after the second (all of them, with fewer than three)."""
    times = row["epoch_seconds"]
    return statistics.median(times[2:] if len(times) > 2 else times)


def _row(name: str, row: dict) -> str:
    times = {path: steady(row[path]) for path in PATHS}
    fastest = min(times, key=times.get)
    best_keras = min(times["keras_loop"], times["plain"])
    cells = " | ".join(f"{times[p]:.2f}" for p in PATHS)
    accuracy = " / ".join(f"{row[p]['val_accuracy']:.3f}" for p in PATHS)
    return (f"| {CORNERS[name][1]} | {cells} | {fastest} | {row['auto']} | "
            f"{times[row['auto']] / best_keras:.2f}x | {accuracy} |")


def markdown(r: dict) -> str:
    header = ("| corner | XLA s/epoch | Keras loop s/epoch | plain fit s/epoch | fastest | auto "
              "takes | auto vs Keras' faster | val accuracy (XLA / loop / plain) |")
    samples = f" ({r['samples']:,} samples)" if r.get("samples") else ""
    lines = [f"{r['date']}, {r['machine']}, data {r['dataset']}{samples}, {r['epochs']} epochs "
             "a path, steady s/epoch (median after the second):", "", header,
             "| --- | ---: | ---: | ---: | --- | --- | ---: | --- |"]
    lines += [_row(name, row) for name, row in r["corners"].items()]
    return "\n".join([*lines, ""])


if __name__ == "__main__":
    main()
