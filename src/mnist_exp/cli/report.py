"""Compare runs: rank a sweep's jobs, or a whole experiment's runs, by validation accuracy.

    python -m mnist_exp.report --sweep <parent run id>
    python -m mnist_exp.report --experiment mnist --out outputs/report
    python -m mnist_exp.report --experiment fashion_mnist --group-by tracking.run_name

Prints a ranked table (what differs between the runs, validation and test accuracy, time)
and writes it, with a comparison plot, to --out. --group-by a config key adds the mean and
spread over each group's finished runs (e.g. one preset over several seeds). Ranking uses
the validation metric only: the test set is for reporting, never for choosing.
Built on MLflow's own query API.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mnist_exp.cli.process_exit import exit_after
from mnist_exp.errors import UserError, exit_with, first_line
from mnist_exp.sweeps.ranking import (
    TOP,
    Row,
    describe,
    differing_params,
    group_table,
    load_rows,
    plot_comparison,
    rank,
    to_markdown,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnist_exp.report",
                                     description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--sweep", metavar="PARENT_RUN_ID", help="a sweep's parent run id")
    which.add_argument("--experiment", metavar="NAME", help="an experiment's name")
    parser.add_argument("--tracking-uri", default=None,
                        help="default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db")
    parser.add_argument("--group-by", metavar="KEY",
                        help="a config key, e.g. tracking.run_name: mean ± sd per value")
    parser.add_argument("--out", type=Path, default=Path("outputs") / "report")
    args = parser.parse_args(argv)
    try:
        rows, keys = _query(args)
    except UserError as e:
        exit_with(e)
    table = to_markdown(rows, keys)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ranking.md").write_text(table)
    plot_comparison(rows, keys).savefig(args.out / "comparison.png", dpi=110)
    print(table)
    if args.group_by:
        summary = group_table(rows, args.group_by)
        (args.out / "groups.md").write_text(summary)
        print(summary)
    if rows and rows[0].val_accuracy is not None:
        print(f"best by validation accuracy: {describe(rows[0], keys)} ({rows[0].run_id})")
    print(f"written: {args.out / 'ranking.md'}, {args.out / 'comparison.png'}")
    return 0


def _query(args: argparse.Namespace) -> tuple[list[Row], list[str]]:
    import mlflow

    from mnist_exp.tracking.store import check_reachable, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri, Path.cwd())
    check_reachable(uri)
    client = mlflow.MlflowClient(uri)
    try:
        if args.sweep:
            experiment_ids = [client.get_run(args.sweep).info.experiment_id]
        else:
            experiment = client.get_experiment_by_name(args.experiment)
            if experiment is None:
                raise UserError(f"no experiment named {args.experiment!r} in {uri}")
            experiment_ids = [experiment.experiment_id]
        rows = rank(load_rows(client, experiment_ids, args.sweep))
    except mlflow.exceptions.MlflowException as e:
        raise UserError(first_line(e)) from None
    if not rows:
        raise UserError("no runs to compare there")
    return rows, differing_params(rows[:TOP])  # the columns that tell the shown runs apart


def cli() -> None:
    """`python -m mnist_exp.report`: main, then the quick exit of process_exit.py."""
    exit_after(main)


if __name__ == "__main__":
    cli()
