"""The configuration: its schema, what each setting accepts, and the checks made before
any work (light: importable without TensorFlow or MLflow)."""
