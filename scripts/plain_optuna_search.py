"""An Optuna search as a plain script: Optuna + Keras `fit`, no tracking at all. The yardstick
for `python -m mnist_exp.run -m hparams_search=optuna` (scripts/benchmark_search.py).

    python scripts/plain_optuna_search.py --dataset fashion_mnist --trials 12 --epochs 5
    python scripts/plain_optuna_search.py --study study.json --workers 2

The search is the project's own (conf/hparams_search/optuna.yaml): the same space, seeded
TPE, median pruning on each epoch's val_accuracy, all asked for in the same order, so both
sample the same first configurations. The benchmark hands it over as JSON (--study, written
by `study_spec`); without --study the YAML is read here. Each trial is what a user would
write: the MLP, Adam at the sampled rate, Keras' plain `fit` with validation_split=0.2.
With --workers N, N processes share the study through a journal file (Optuna's pattern for
parallel workers), each asking for the next trial as soon as it is free.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEARCH_YAML = ROOT / "conf" / "hparams_search" / "optuna.yaml"


def study_spec(yaml_path: Path = SEARCH_YAML) -> dict:
    """The search of `yaml_path` as plain JSON: direction, sampler seed, pruner settings and
    the space as Optuna's own JSON for each distribution (translated by our sweeper's parser,
    so the two cannot read the YAML differently)."""
    from omegaconf import OmegaConf
    from optuna.distributions import distribution_to_json

    from hydra_plugins.mnist_exp_optuna.space import parse_params

    sweeper = OmegaConf.to_container(OmegaConf.load(yaml_path).hydra.sweeper)
    space, fixed = parse_params([f"{k}={v}" for k, v in sweeper["params"].items()])
    return {"direction": sweeper["direction"], "seed": sweeper["sampler"]["seed"],
            "sampler": sweeper["sampler"]["name"], "pruner": sweeper["pruner"],
            "space": {k: distribution_to_json(d) for k, d in space.items()}, "fixed": fixed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--path", default=None, help="local copy (IDX folder or .npz)")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--study", type=Path, help="the search as JSON (default: the YAML's)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--journal", help=argparse.SUPPRESS)  # a worker of a parallel search
    args = parser.parse_args()
    spec = json.loads(args.study.read_text()) if args.study else study_spec()
    if args.journal:
        _worker(args, spec)
        return
    start = time.perf_counter()
    trials = _parallel(args, spec) if args.workers > 1 else _search(args, spec, storage=None)
    wall = time.perf_counter() - start
    # As the sweep's worker_utilisation: busy time over workers x (first start to last end).
    span = max(t["end"] for t in trials) - min(t["start"] for t in trials)
    result = {"wall_s": wall, "trials": trials, "workers": args.workers,
              "utilisation": sum(t["seconds"] for t in trials) / (args.workers * span)}
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


def _search(args: argparse.Namespace, spec: dict, storage) -> list[dict]:
    """Ask, train, tell until the study has `args.trials` trials; the study's trials."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = getattr(optuna.samplers, {"tpe": "TPESampler", "random": "RandomSampler",
                                        "cmaes": "CmaEsSampler"}[spec["sampler"]])
    pruner = (optuna.pruners.MedianPruner(spec["pruner"]["n_startup_trials"],
                                          spec["pruner"]["n_warmup_steps"])
              if spec["pruner"]["name"] == "median" else optuna.pruners.NopPruner())
    study = optuna.create_study(study_name="plain", storage=storage, load_if_exists=True,
                                direction=spec["direction"], sampler=sampler(seed=spec["seed"]),
                                pruner=pruner)
    space = {k: optuna.distributions.json_to_distribution(v) for k, v in spec["space"].items()}
    data = _data(args.dataset, args.path)
    while len(study.trials) < args.trials:
        trial = study.ask(space)
        if trial.number >= args.trials:  # another worker asked for the last one first
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            break
        value, pruned = _train(trial, data, args.epochs)
        if pruned:  # Optuna keeps the values it was told epoch by epoch
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, value)
    return _finished(study, args.trials)


def _finished(study, trials: int) -> list[dict]:
    return [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
             "seconds": t.duration.total_seconds(), "start": t.datetime_start.timestamp(),
             "end": t.datetime_complete.timestamp()}
            for t in study.trials if t.duration and t.number < trials]


def _data(dataset: str, path: str | None):
    from mnist_exp.data.load import load_arrays

    (x, y), _, _ = load_arrays(dataset, path)
    return x / 255.0, y


def _train(trial, data, epochs: int) -> tuple[float, bool]:
    """One trial: the sampled MLP trained with plain `fit`, reporting each epoch's
    val_accuracy to the pruner; (its last val_accuracy, whether it was pruned)."""
    import keras

    x, y = data
    p = trial.params
    keras.utils.set_random_seed(42)
    layers = [keras.Input(shape=x.shape[1:]), keras.layers.Flatten()]
    for units in json.loads(p["model.hidden_units"]):
        layers.append(keras.layers.Dense(units, activation="relu"))
        if p["model.dropout"] > 0:
            layers.append(keras.layers.Dropout(p["model.dropout"]))
    model = keras.Sequential([*layers, keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(p["optimizer.learning_rate"]),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    pruned = []

    class Prune(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            trial.report(logs["val_accuracy"], step=epoch)
            if epoch + 1 < epochs and trial.should_prune():
                pruned.append(epoch)
                self.model.stop_training = True

    history = model.fit(x, y, batch_size=int(p["trainer.batch_size"]), epochs=epochs,
                        validation_split=0.2, verbose=0, callbacks=[Prune()])
    keras.backend.clear_session()
    return history.history["val_accuracy"][-1], bool(pruned)


def _parallel(args: argparse.Namespace, spec: dict) -> list[dict]:
    """`args.workers` processes on one journal file, each with its share of the cores; the
    study's trials once all are done."""
    import optuna

    with tempfile.TemporaryDirectory() as scratch:
        journal, study_file = f"{scratch}/optuna.log", Path(scratch, "study.json")
        study_file.write_text(json.dumps(spec))
        argv = ["--dataset", args.dataset, "--trials", str(args.trials), "--epochs",
                str(args.epochs), "--study", str(study_file), "--journal", journal,
                *(["--path", args.path] if args.path else [])]
        threads = str(max(1, (os.cpu_count() or 1) // args.workers))
        workers = [subprocess.Popen([sys.executable, __file__, *argv],
                                    env={**os.environ, "TF_NUM_INTRAOP_THREADS": threads})
                   for _ in range(args.workers)]
        if any([w.wait() for w in workers]):
            sys.exit("a worker of the plain search failed")
        return _finished(optuna.load_study(study_name="plain", storage=_journal(journal)),
                         args.trials)


def _worker(args: argparse.Namespace, spec: dict) -> None:
    import tensorflow as tf

    threads = int(os.environ.get("TF_NUM_INTRAOP_THREADS", "0"))
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    _search(args, spec, storage=_journal(args.journal))


def _journal(path: str):
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    return optuna.storages.JournalStorage(JournalFileBackend(path,
                                                            lock_obj=JournalFileOpenLock(path)))


if __name__ == "__main__":
    main()
