"""The reference recipe as a hand-written JAX script: the speed a tight loop reaches.

The same MLP (784-128-32-10, ReLU, Glorot-uniform weights), Adam with Keras' defaults,
batch 32, the last 20% of the training set for validation. The training set sits on the
device and each epoch, reshuffle included, is one `lax.scan` that XLA compiles once. JAX
is imported here only; it is never a dependency of mnist-exp:

    python scripts/jax_recipe.py --dataset fashion_mnist --epochs 5 --json out.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from mnist_exp.data.load import load_arrays

SIZES = (784, 128, 32, 10)
RATE, BETA1, BETA2, EPS = 1e-3, 0.9, 0.999, 1e-7  # keras.optimizers.Adam's defaults


def init(key: jax.Array) -> list[tuple[jax.Array, jax.Array]]:
    params = []
    for fan_in, fan_out in itertools.pairwise(SIZES):
        key, sub = jax.random.split(key)
        limit = (6 / (fan_in + fan_out)) ** 0.5
        params.append((jax.random.uniform(sub, (fan_in, fan_out), minval=-limit, maxval=limit),
                       jnp.zeros(fan_out)))
    return params


def logits(params: list, x: jax.Array) -> jax.Array:
    for w, b in params[:-1]:
        x = jax.nn.relu(x @ w + b)
    w, b = params[-1]
    return x @ w + b


def loss(params: list, x: jax.Array, y: jax.Array) -> jax.Array:
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits(params, x)), y[:, None], 1))


def adam_step(state: tuple, batch: tuple) -> tuple[tuple, jax.Array]:
    params, m, v, t = state
    value, grads = jax.value_and_grad(loss)(params, *batch)
    t = t + 1
    m = jax.tree.map(lambda m, g: BETA1 * m + (1 - BETA1) * g, m, grads)
    v = jax.tree.map(lambda v, g: BETA2 * v + (1 - BETA2) * g * g, v, grads)
    rate = RATE * jnp.sqrt(1 - BETA2 ** t) / (1 - BETA1 ** t)
    params = jax.tree.map(lambda p, m, v: p - rate * m / (jnp.sqrt(v) + EPS), params, m, v)
    return (params, m, v, t), value


def make_epoch(x: jax.Array, y: jax.Array, batch: int):
    full = len(y) // batch

    @jax.jit
    def epoch(state: tuple, key: jax.Array) -> tuple[tuple, jax.Array]:
        order = jax.random.permutation(key, len(y))[: full * batch].reshape(full, batch)
        state, losses = jax.lax.scan(lambda s, i: adam_step(s, (x[i], y[i])), state, order)
        return state, losses.mean()  # the epoch's training loss

    return epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist",
                        choices=["mnist", "fashion_mnist", "mnist_sample"])
    parser.add_argument("--path", default=None)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    (x_all, y_all), (x_test, y_test), _ = load_arrays(args.dataset, args.path)
    n_train = int(len(y_all) * 0.8)
    x_all = jnp.asarray(x_all.reshape(len(x_all), -1) / 255.0, jnp.float32)
    x, y = x_all[:n_train], jnp.asarray(y_all[:n_train])
    x_val, y_val = x_all[n_train:], jnp.asarray(y_all[n_train:])
    key = jax.random.PRNGKey(args.seed)
    params = init(key)
    zeros = jax.tree.map(jnp.zeros_like, params)
    state = (params, zeros, zeros, jnp.zeros((), jnp.float32))
    epoch = make_epoch(x, y, 32)
    validate = jax.jit(lambda p: (loss(p, x_val, y_val),
                                  jnp.mean(logits(p, x_val).argmax(1) == y_val)))
    epoch_seconds = []
    for e in range(args.epochs):
        start = time.perf_counter()
        state, _ = epoch(state, jax.random.fold_in(key, e))
        val_loss, val_accuracy = validate(state[0])
        val_loss.block_until_ready()
        epoch_seconds.append(time.perf_counter() - start)
    test = jnp.asarray(x_test.reshape(len(x_test), -1) / 255.0, jnp.float32)
    accuracy = float(jnp.mean(logits(state[0], test).argmax(1) == jnp.asarray(y_test)))
    result = {"dataset": args.dataset, "epochs": args.epochs,
              "seconds_per_epoch": sum(epoch_seconds) / args.epochs,
              "epoch_seconds": epoch_seconds, "train_samples": n_train,
              "val_accuracy": float(val_accuracy), "test_accuracy": accuracy,
              "jax": jax.__version__, "device": str(jax.devices()[0])}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
