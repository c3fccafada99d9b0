"""`python -m mnist_exp.report`: the command lives in mnist_exp.cli.report."""

from mnist_exp.cli.report import cli

if __name__ == "__main__":
    cli()
