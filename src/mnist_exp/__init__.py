"""Config-driven MNIST experiments: Hydra configs, Keras training, MLflow tracking."""

__version__ = "0.1.0"
