"""`python -m mnist_exp.evaluate`: the command lives in mnist_exp.cli.evaluate."""

from mnist_exp.cli.evaluate import cli

if __name__ == "__main__":
    cli()
