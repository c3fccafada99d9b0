"""Config-driven MNIST experiments: Hydra configs, Keras training, MLflow tracking."""

# Load Python's SQLite binding before anything imports TensorFlow: TensorFlow loads its
# own private SQLite build with global symbols, and a binding loaded after it would run
# MLflow's store on that copy instead of the SQLite that Python was built against.
import sqlite3  # noqa: F401

__version__ = "0.1.0"
