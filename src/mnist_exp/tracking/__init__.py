"""MLflow: the store, each run's local record, the uploader and a run's lifecycle."""
