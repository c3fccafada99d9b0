"""`python -m mnist_exp.run`: the command lives in mnist_exp.cli.run."""

from mnist_exp.cli.run import cli

if __name__ == "__main__":
    cli()
