"""One write path (issue 25): every write to a tracking store is an event in a local record
first, uploaded by the one uploader (tracking/replay.py). This scans src/ for calls of
MLflow's write APIs, on any object, and allows them only in the uploader's modules and the
few exceptions below, each with its reason. A failure names file:line."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"

# MLflow's write APIs, by the name they are called by (a client's method, a fluent
# function, a flavour's log_model): whatever object they are called on.
WRITE_APIS = frozenset({
    "create_run", "set_terminated", "update_run", "delete_run", "restore_run",
    "log_metric", "log_metrics", "log_param", "log_params", "log_batch", "log_text",
    "log_figure", "log_dict", "log_artifact", "log_artifacts", "log_image", "log_table",
    "log_input", "log_inputs", "log_outputs", "set_tag", "set_tags", "delete_tag",
    "create_experiment", "set_experiment", "set_experiment_tag", "set_experiment_tags",
    "delete_experiment", "rename_experiment", "create_registered_model",
    "create_model_version", "register_model", "set_registered_model_alias",
    "delete_registered_model_alias", "set_registered_model_tag", "set_model_version_tag",
    "start_run", "end_run", "log_model", "create_logged_model", "initialize_logged_model",
    "finalize_logged_model", "set_logged_model_tags",
})
# Called by a name too common to list alone: (receiver, method).
WRITE_CALLS = frozenset({("Model", "log")})

# The uploader: the one place that writes to a store.
UPLOADER = frozenset({"src/mnist_exp/tracking/replay.py", "src/mnist_exp/tracking/ops.py"})

# Writes allowed elsewhere, each with its reason: (file, API) -> reason.
EXCEPTIONS = {
    ("src/mnist_exp/tracking/store.py", "create_experiment"):
        "prepare_experiment: the uploader's own step before a run is created (replay.py "
        "calls it); a sweep calls it too, before any record exists, for the experiment id "
        "its jobs nest under. Idempotent: an experiment is found before it is created.",
    ("src/mnist_exp/tracking/store.py", "set_experiment_tag"):
        "prepare_experiment marks a new experiment's kind, as above.",
}

# Not yet moved onto a record (issue 25, "One write path"): the debt, frozen. Each entry is
# how many calls of that API the file holds today; a NEW direct write anywhere fails, and an
# entry that shrank must shrink here too, so the list only ever gets shorter.
NOT_YET_MOVED: dict[tuple[str, str], int] = {
}


def _own_modules(tree: ast.Module) -> set[str]:
    """Names a module binds to our own packages (`from mnist_exp.tracking import logs`):
    calls on them (logs.log_params) are ours, not MLflow's."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                ("mnist_exp", "hydra_plugins.mnist_exp")):
            names |= {alias.asname or alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names
                      if alias.name.startswith("mnist_exp")}
    return names


def _receiver(node: ast.expr) -> str:
    while isinstance(node, ast.Attribute | ast.Call | ast.Subscript):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else ""


def mlflow_writes() -> list[tuple[str, int, str]]:
    """Every call of an MLflow write API in src/: (file, line, API)."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        ours = _own_modules(tree)
        name = str(path.relative_to(ROOT))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            method, receiver = node.func.attr, _receiver(node.func.value)
            if receiver in ours:
                continue
            if method in WRITE_APIS or (receiver, method) in WRITE_CALLS:
                found.append((name, node.lineno, method))
    return sorted(found)


def test_the_scan_sees_mlflow_writes():
    """The scan finds the uploader's own writes (so it can fail at all)."""
    apis = {api for file, _, api in mlflow_writes() if file in UPLOADER}
    assert {"create_run", "log_batch", "set_terminated", "log_artifact"} <= apis


def test_only_the_uploader_writes_to_a_tracking_store():
    """No write outside the uploader but the documented exceptions and the frozen debt;
    each new one is named by file:line."""
    outside = [(f, line, api) for f, line, api in mlflow_writes()
               if f not in UPLOADER and (f, api) not in EXCEPTIONS]
    counts = Counter((f, api) for f, _, api in outside)
    new = [f"{f}:{line}: {api}" for f, line, api in outside
           if counts[(f, api)] > NOT_YET_MOVED.get((f, api), 0)]
    assert not new, ("MLflow writes outside the uploader (record an event instead, "
                     "tracking/record.py):\n" + "\n".join(new))


def test_the_debt_list_is_exact():
    """A write moved onto a record leaves the list too, so the debt only shrinks."""
    counts = Counter((f, api) for f, _, api in mlflow_writes())
    stale = {key: n for key, n in NOT_YET_MOVED.items() if counts[key] != n}
    assert not stale, f"NOT_YET_MOVED no longer matches src/ (now {dict(counts)}): {stale}"


def test_every_exception_has_a_reason_and_a_call():
    counts = Counter((f, api) for f, _, api in mlflow_writes())
    for key, reason in EXCEPTIONS.items():
        assert reason.strip() and counts[key] >= 1, key


def test_the_sweeps_new_events_are_safe_to_replay(tmp_path):
    """An untag and an alias event (a resumed sweep's parent, a champion) applied twice, as
    a replay after a failure applies them, change nothing the second time."""
    import time

    import mlflow

    from mnist_exp.tracking.record import RunRecord
    from mnist_exp.tracking.replay import Uploader

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    client.create_registered_model("m")
    source = client.create_run(client.create_experiment("models")).info.run_id
    version = client.create_model_version("m", str(tmp_path), run_id=source).version
    record = RunRecord.create(tmp_path / "record")
    now = int(time.time() * 1000)
    record.append("start", experiment_name="sweeps", run_name="parent", start_time=now,
                  tags={"mnist_exp.ended_by": "sync", "kept": "yes"}, tracking_uri=uri)
    record.append("untag", keys=["mnist_exp.ended_by"])
    record.append("alias", name="m", alias="champion", version=version)
    record.append("end", status="FINISHED", end_time=now)
    for _ in range(2):
        record.set_uploaded(1)  # after its start: what a replay after a failure sends again
        Uploader(record, uri).upload()
        run = client.get_run(record.ids["run_id"])
        assert run.data.tags.get("kept") == "yes"
        assert "mnist_exp.ended_by" not in run.data.tags
        assert run.info.status == "FINISHED"
        assert client.get_model_version_by_alias("m", "champion").version == version
