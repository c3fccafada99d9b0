"""The reference notebook as a bare Keras script: the yardstick for our pipeline.

Plain `compile` and `fit` (batch 32, Adam, 25 epochs, Keras' own validation_split=0.2);
nothing from mnist-exp but the file reader and an epoch timer, so the two can be
compared on the same data:

    python scripts/bare_keras_recipe.py --dataset fashion_mnist
    python scripts/bare_keras_recipe.py --dataset mnist_sample   # the digits shipped with us
"""

from __future__ import annotations

import argparse
import json
import time

import keras

from mnist_exp.data.load import load_arrays
from mnist_exp.training.fit import EpochClock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist",
                        choices=["mnist", "fashion_mnist", "mnist_sample"])
    parser.add_argument("--path", default=None, help="local copy (IDX folder or .npz)")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    keras.utils.set_random_seed(args.seed)
    (x_train, y_train), (x_test, y_test), _ = load_arrays(args.dataset, args.path)
    x_train, x_test = x_train / 255.0, x_test / 255.0

    model = keras.Sequential([
        keras.Input(shape=(28, 28)),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])

    clock = EpochClock()
    start = time.perf_counter()
    history = model.fit(x_train, y_train, epochs=args.epochs, validation_split=0.2, verbose=2,
                        callbacks=[clock])
    seconds = time.perf_counter() - start
    test_loss, test_accuracy = model.evaluate(x_test, y_test, verbose=0)

    result = {
        "dataset": args.dataset,
        "epochs": args.epochs,
        "seconds_per_epoch": seconds / args.epochs,
        "epoch_seconds": clock.seconds,
        "train_samples": int(len(x_train) * 0.8),
        "train_accuracy": history.history["accuracy"][-1],
        "val_accuracy": history.history["val_accuracy"][-1],
        "test_accuracy": test_accuracy,
        "test_loss": test_loss,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
