"""The commands: the only code that knows Hydra, argv and exit codes."""
