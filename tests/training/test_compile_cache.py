"""XLA's persistent compilation cache (trainer.compile_cache): a later run loads what an
earlier one compiled, a damaged entry costs one clear failure, and the folder stays
bounded. Real runs of the command on the shipped digits."""

from __future__ import annotations

import os
import time

import mlflow
import pytest

from helpers import TINY, own_lines, run_module
from mnist_exp.training import compile_cache


def entries(folder) -> dict[str, float]:
    return {p.name: p.stat().st_mtime for p in folder.glob("*.pb")}


def run(workdir, cache, *extra):
    return run_module("mnist_exp.run", "data=mnist_sample", *TINY, "tracking.log_model=false",
                      f"trainer.compile_cache_dir={cache}", *extra, cwd=workdir)


def test_a_later_run_loads_what_an_earlier_compiled_and_a_damaged_entry_costs_one_run(
        tmp_path):
    cache = tmp_path / "xla"
    store = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    first = run(tmp_path, cache)
    assert first.returncode == 0, first.stderr[-2000:]
    written = entries(cache)
    assert written, "the first run compiled nothing into the cache"

    second = run(tmp_path, cache)
    assert second.returncode == 0, second.stderr[-2000:]
    assert entries(cache) == written  # every compilation was a load: nothing new, nothing rewritten
    finished = store.search_runs(["1"])
    assert finished[0].data.metrics["test_accuracy"] == finished[1].data.metrics["test_accuracy"]

    for entry in cache.glob("*.pb"):  # as a disk error or a stray edit would leave it
        entry.write_bytes(entry.read_bytes()[:3000])
    damaged = run(tmp_path, cache)
    assert damaged.returncode == 2
    lines = own_lines(damaged.stderr)
    assert "Traceback" not in damaged.stderr
    assert "compilation cache" in lines[-1] and "run again" in lines[-1], lines[-1]
    assert not cache.exists()
    assert sorted(r.info.status for r in store.search_runs(["1"])) == [
        "FAILED", "FINISHED", "FINISHED"]

    again = run(tmp_path, cache)
    assert again.returncode == 0, again.stderr[-2000:]
    assert entries(cache)


@pytest.mark.slow
def test_off_and_unusable_folders_train_without_it(tmp_path):
    off = run(tmp_path, tmp_path / "off", "trainer.compile_cache=false")
    assert off.returncode == 0, off.stderr[-2000:]
    assert not (tmp_path / "off").exists()

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    unusable = run(tmp_path, blocker / "xla")
    assert unusable.returncode == 0, unusable.stderr[-2000:]
    assert "compilation cache off: cannot use" in unusable.stdout + unusable.stderr


def test_the_folder_keeps_its_newest_entries_within_its_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(compile_cache, "MAX_BYTES", 2500)
    now = time.time()
    for age, name in enumerate(["newest", "newer", "older", "oldest"]):
        (tmp_path / f"{name}.pb").write_bytes(b"x" * 1000)
        os.utime(tmp_path / f"{name}.pb", (now - age * 60, now - age * 60))
    dead = tmp_path / "entry.pbvm-1-2.tmp"  # a writer killed mid-write
    dead.write_bytes(b"x")
    os.utime(dead, (now - 7200, now - 7200))
    live = tmp_path / "entry.pbvm-3-4.tmp"  # a writer at work now
    live.write_bytes(b"x")
    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_auto_jit=2")

    assert compile_cache.use(tmp_path) == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "entry.pbvm-3-4.tmp", "newer.pb", "newest.pb"]
    assert os.environ["TF_XLA_FLAGS"].startswith("--tf_xla_auto_jit=2 ")
    assert compile_cache.use(None) is None
    assert os.environ["TF_XLA_FLAGS"] == "--tf_xla_auto_jit=2"


@pytest.mark.parametrize("xdg", [None, "/somewhere"])
def test_the_default_folder_follows_xdg(monkeypatch, xdg):
    if xdg is None:
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_CACHE_HOME", xdg)
    folder = compile_cache.folder_for(True, None)
    assert folder.parts[-3:] == (".cache" if xdg is None else "somewhere", "mnist-exp", "xla")
    assert compile_cache.folder_for(False, "/x") is None
