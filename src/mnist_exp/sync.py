"""`python -m mnist_exp.sync`: the command lives in mnist_exp.cli.sync."""

from mnist_exp.cli.sync import cli

if __name__ == "__main__":
    cli()
