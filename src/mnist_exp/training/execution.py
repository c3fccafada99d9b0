"""How a config's training runs: the runtime, the path its steps take (decided once, here),
and the compiled model that path needs."""

from __future__ import annotations

from dataclasses import dataclass

import keras
import tensorflow as tf

from mnist_exp.config.schema import CNNConfig, Config, TrainerConfig
from mnist_exp.data.load import Dataset
from mnist_exp.training import compile_cache, kept_models, xla_dropout
from mnist_exp.training.model import build_model, compile_model


@dataclass(frozen=True)
class ExecutionPlan:
    """The path `fit` takes. Whatever the path, the batches and their order are the same.

    - resident: the sets sit on the device and each call runs a whole epoch (resident.py);
    - fused: chunks of `chunk` host batches, one XLA-compiled loop per chunk (batches.py);
    - otherwise one host batch per step, in Keras' own steps_per_execution loop.
    """

    jit_compile: bool
    steps_per_execution: int  # compile()'s: Keras' own loop of steps per call
    chunk: int  # batches per call into the fused loop; 1: no fused loop
    resident: bool
    traced_for: tuple = ()  # batch sizes and set shapes the traced steps are specialised to

    @property
    def fused(self) -> bool:
        return self.chunk > 1

    @property
    def compile_arguments(self) -> dict[str, int | bool]:
        return {"jit_compile": self.jit_compile, "steps_per_execution": self.steps_per_execution}


def execution_plan(cfg: TrainerConfig, *, convolutional: bool = False,
                   train_shape: tuple[int, ...] = (),
                   val_shape: tuple[int, ...] = ()) -> ExecutionPlan:
    """The path for these settings, model and sets. With XLA, several steps per execution run
    as one compiled loop (fit feeds chunks of batches), so Keras compiles one step per call;
    without, Keras' own steps_per_execution loop does it. Augmentation happens on the host,
    so it takes the fused path, not the resident one."""
    jit = uses_xla(cfg, convolutional=convolutional)
    chunk = cfg.steps_per_execution if jit else 1
    augmented = bool(cfg.augment.max_shift or cfg.augment.horizontal_flip)
    return ExecutionPlan(
        jit_compile=jit, steps_per_execution=1 if jit else cfg.steps_per_execution,
        chunk=chunk, resident=chunk > 1 and not augmented,
        traced_for=(cfg.batch_size, cfg.eval_batch_size, train_shape, val_shape))


def plan_for(config: Config, train_shape: tuple[int, ...] = (),
             val_shape: tuple[int, ...] = ()) -> ExecutionPlan:
    """The plan of a whole config: its trainer's settings and what its model computes."""
    return execution_plan(config.trainer, convolutional=isinstance(config.model, CNNConfig),
                          train_shape=train_shape, val_shape=val_shape)


def uses_xla(cfg: TrainerConfig, *, convolutional: bool = False) -> bool:
    """trainer.jit_compile=true or false decides; `auto` takes XLA where it is the faster path.

    XLA has no deterministic mode, so trainer.deterministic never takes it. On a CPU, XLA's
    convolutions are far slower than TensorFlow's oneDNN ones, so a CNN takes Keras' own
    steps_per_execution loop without XLA (scripts/benchmark_corners.py, docs/performance.md
    "Corners of the schema"). Dropout takes XLA: its masks are drawn cheaply there
    (xla_dropout.py). On a GPU every model takes XLA."""
    if cfg.deterministic or cfg.jit_compile is False:
        return False
    if cfg.jit_compile is True or _on_gpu():
        return True
    return not convolutional


def _on_gpu() -> bool:
    return bool(tf.config.list_physical_devices("GPU"))


def setup_runtime(seed: int, deterministic: bool = False, threads: int = 0) -> None:
    """Seed Python, NumPy and TensorFlow; optionally make ops deterministic and cap
    TensorFlow's thread pools (0 keeps its default: one thread per core). Call before
    TensorFlow runs its first op: the thread counts cannot change after that."""
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def prepare_model(config: Config, data: Dataset,
                  reuse: bool = False) -> tuple[keras.Model, ExecutionPlan]:
    """The seeded runtime, XLA's compilation cache, and the model compiled for its path,
    exactly as a run trains it; with `reuse`, the kept model of an earlier job in this
    process holding this one's state (kept_models.py)."""
    t = config.trainer
    setup_runtime(t.seed, t.deterministic, t.threads)
    compile_cache.use(compile_cache.folder_for(t.compile_cache, t.compile_cache_dir))
    # Only now: the plan asks TensorFlow for its devices, which fixes the XLA flags (the
    # cache folder above) for the whole process.
    plan = plan_for(config, data.x_train.shape, data.x_val.shape)
    model = build_model(config.model, num_classes=len(data.class_names),
                        normalization=config.data.normalization, train_images=data.x_train)
    compile_model(model, config.optimizer, label_smoothing=t.label_smoothing,
                  **plan.compile_arguments)
    if plan.jit_compile:  # before any trace, so steps read the dropout rates as variables
        xla_dropout.use_variable_rates(model)
    if reuse:  # an earlier job's, already traced
        model = kept_models.adopt(model, plan)
    return model, plan
