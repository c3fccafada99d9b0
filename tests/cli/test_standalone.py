"""The repository stands alone: nothing it runs or tests reads from beside the checkout."""

from __future__ import annotations

import subprocess

from helpers import MINI, ROOT


def _project_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, text=True)
    if listed.returncode == 0:
        return [name for name in listed.stdout.splitlines() if (ROOT / name).is_file()]
    skip = {".git", ".venv", "outputs", "mlruns", "__pycache__"}
    return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
            if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]


def test_no_project_file_points_outside_the_checkout():
    outside = ["../" + "shared", "shared/" + "datasets"]
    offenders = []
    for name in _project_files():
        text = (ROOT / name).read_bytes().decode("utf-8", errors="ignore")
        offenders += [f"{name}: {o}" for o in outside if o in text]
    assert not offenders


def test_the_shipped_sample_is_small_and_says_where_it_comes_from():
    files = sorted(p.name for p in MINI.glob("*.gz"))
    assert files == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
                     "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    assert sum(p.stat().st_size for p in MINI.glob("*.gz")) < 2 * 1024 * 1024
    note = (MINI / "README.md").read_text()
    assert "LeCun" in note and "CC BY-SA 3.0" in note
