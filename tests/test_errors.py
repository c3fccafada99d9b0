"""One road for errors: every command and a sweep show a mistake as the one line
`errors.describe` makes, and end with its exit code."""

from __future__ import annotations

import ast
from pathlib import Path

import mlflow
import numpy as np
import pytest

from helpers import ONE_EPOCH, ROOT, own_lines, run_module, sweep_runs
from mnist_exp.data.load import load_idx_folder
from mnist_exp.errors import (
    ConfigError,
    DataError,
    JobsFailed,
    NotUploaded,
    UserError,
    describe,
    exit_with,
)

# (module, arguments, what the one line must say); {tmp} is the test's folder.
MISTAKES = [
    ("mnist_exp.run", ["data=mnist_sample", "optimizer.learning_rate=-1"],
     "optimizer.learning_rate: got -1; allowed: a number > 0"),
    ("mnist_exp.evaluate", ["model_uri=abc", "seed=-1"], "seed: got -1"),
    ("mnist_exp.report", ["--experiment", "nope", "--tracking-uri", "sqlite:///{tmp}/mlflow.db"],
     "no experiment named 'nope'"),
    ("mnist_exp.sync", ["{tmp}/nope"], "no such folder: "),
    ("mnist_exp.predict", ["0123456789abcdef0123456789abcdef", "0",
                           "--tracking-uri", "sqlite:///{tmp}/mlflow.db"],
     "cannot load model 'runs:/0123456789abcdef0123456789abcdef/model'"),
]


@pytest.mark.parametrize(("module", "args", "message"), MISTAKES,
                         ids=[m.split(".")[1] for m, _, _ in MISTAKES])
def test_each_command_shows_a_mistake_as_one_line_and_exits_2(tmp_path, module, args, message):
    mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_experiments()  # made
    result = run_module(module, *(a.format(tmp=tmp_path) for a in args), cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in own_lines(result.stderr) if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("mnist-exp: error: "), result.stderr
    assert message in errors[0]


def test_a_sweep_with_a_job_failing_on_a_mistake_exits_as_that_job_alone(tmp_path, mini):
    # A mistake only the data shows: a sweep's values are checked before it starts.
    (x_train, y_train), (x_test, y_test) = load_idx_folder(mini)
    np.savez(tmp_path / "bad.npz", x_train=x_train[:600], y_train=y_train[:600] + 1,
             x_test=x_test[:300], y_test=y_test[:300])
    alone = run_module("mnist_exp.run", "data=mnist_sample", f"data.path={tmp_path}/bad.npz",
                       cwd=tmp_path)
    [line] = own_lines(alone.stderr)
    mistake = line.removeprefix("mnist-exp: error: ")

    result = run_module("mnist_exp.run", "-m", "data=mnist_sample", *ONE_EPOCH,
                        f"data.path={mini},{tmp_path}/bad.npz", "hydra.sweep.dir=sweep",
                        cwd=tmp_path)
    assert result.returncode == alone.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = own_lines(result.stderr)[-1]
    assert last == (f"mnist-exp: error: 1 job(s) failed; job 1: {mistake} (see FAILED in the "
                    f"job folders 1 under sweep)")
    assert (tmp_path / "sweep" / "1" / "FAILED").read_text().splitlines()[0] == mistake
    assert not (tmp_path / "sweep" / "0" / "FAILED").exists()
    _, [parent], children = sweep_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "mnist_sample")
    assert parent.info.status == "FINISHED"
    by_job = {r.data.tags["sweep.job"]: r for r in children}
    assert by_job["0"].info.status == "FINISHED" and by_job["1"].info.status == "FAILED"
    assert mistake in by_job["1"].data.tags["error"]


def test_describe_gives_a_user_error_its_own_line_and_code():
    assert describe(ConfigError("trainer.epochs: got 0")) == ("trainer.epochs: got 0", 2)
    assert describe(DataError("x.npz: empty")) == ("x.npz: empty", 2)
    line, code = describe(NotUploaded(Path("out"), "http://alice:hunter2@host:5000"))
    assert code == 3 and "hunter2" not in line and "python -m mnist_exp.sync out" in line
    assert describe(JobsFailed("2 job(s) failed", 3)) == ("2 job(s) failed", 3)


def test_describe_keeps_an_unexpected_errors_traceback_in_the_log(tmp_path):
    log_file = tmp_path / "run.log"
    try:
        {}["missing"]
    except KeyError as e:
        line, code = describe(e, log_file)
    assert code == 1
    assert line == (f"KeyError: 'missing' (unexpected; the traceback is in {log_file}; "
                    "HYDRA_FULL_ERROR=1 prints it here)")
    assert "Traceback (most recent call last)" in log_file.read_text()
    assert describe(ValueError(""), tmp_path / "no" / "run.log")[0].startswith(
        "ValueError: ValueError (unexpected; no log file could be written")


def test_exit_with_prints_the_line_and_exits_with_the_code(capsys):
    with pytest.raises(SystemExit) as ended:
        exit_with(UserError("a mistake"))
    assert ended.value.code == 2
    assert capsys.readouterr().err == "mnist-exp: error: a mistake\n"


def test_only_errors_report_writes_the_error_prefix():
    """A second place that writes `mnist-exp: error:` would be a second road for errors
    (exit_with, and sync's line per record, both go through report)."""
    prefix = "mnist-exp: error:"
    errors_py = ROOT / "src" / "mnist_exp" / "errors.py"
    assert [p for p in sorted((ROOT / "src").rglob("*.py")) if prefix in p.read_text()] == [
        errors_py]
    assert errors_py.read_text().count(prefix) == 1
    writers = [f.name for f in ast.walk(ast.parse(errors_py.read_text()))
               if isinstance(f, ast.FunctionDef) and any(
                   isinstance(n, ast.Constant) and prefix in str(n.value) for n in ast.walk(f))]
    assert writers == ["report"]
