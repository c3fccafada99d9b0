"""`python -m mnist_exp.predict`: the command lives in mnist_exp.cli.predict."""

from mnist_exp.cli.predict import cli

if __name__ == "__main__":
    cli()
