"""scripts/benchmark_search.py, smoke-tested: both searches run (2 trials of 1 epoch on the
shipped digits) and the table shows each, with the ratio. Its figures are measured, never
asserted."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from helpers import ROOT, child_env


@pytest.mark.slow
def test_the_search_benchmark_runs_both_searches_and_prints_their_ratio(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark_search.py"),
                             "--data", "mnist_sample", "--trials", "2", "--epochs", "1",
                             "--out", str(tmp_path)], cwd=tmp_path, env=child_env(),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert any(line.startswith("| plain script") for line in rows)
    assert any("mnist_exp.run -m hparams_search=optuna" in line for line in rows)
    assert re.search(r"^ratio \(ours / plain\): \d+\.\d\dx$", result.stdout, re.MULTILINE)
    [measured] = json.loads((tmp_path / "search.json").read_text())["rounds"]
    assert len(measured["plain"]["trials"]) == 2
    assert len(measured["ours"]["trials"]) == 2
    assert (tmp_path / "search.md").read_text().strip() in result.stdout
