"""The jobs a command runs, each a short story over the packages: a training run, an
evaluation run."""
