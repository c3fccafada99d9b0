"""Config-driven MNIST experiments: Hydra configs, Keras training, MLflow tracking."""

import os

# Load Python's SQLite binding before anything imports TensorFlow: TensorFlow loads its
# own private SQLite build with global symbols, and a binding loaded after it would run
# MLflow's store on that copy instead of the SQLite that Python was built against.
import sqlite3  # noqa: F401

# TensorFlow's default CPU allocator hands large buffers back to the system as each op ends
# and takes them again for the next, so every training step pays page faults in the kernel;
# its BFC allocator keeps them for reuse. It is read when TensorFlow first allocates, hence
# here, before any of our modules imports it; a user's own setting wins.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

__version__ = "0.1.0"
