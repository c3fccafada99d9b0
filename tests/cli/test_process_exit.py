"""The quick exit of the commands (process_exit.py) still does what Python's own exit
does before its teardown: waits for threads, runs atexit handlers, flushes output, and
keeps the exit status."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROGRAM = """
import atexit, sys, threading, time
from pathlib import Path
from mnist_exp.cli.process_exit import exit_after

def main():
    def late():
        time.sleep(0.5)
        Path("thread_done").write_text("yes")
    threading.Thread(target=late).start()
    atexit.register(lambda: Path("atexit_done").write_text("yes"))
    sys.stdout.write("buffered, no newline")
    {end}

exit_after(main)
"""


@pytest.mark.parametrize(("end", "code", "stderr"), [
    ("return None", 0, ""), ("return 3", 3, ""), ("raise SystemExit(130)", 130, ""),
    ("sys.exit('mnist-exp: error: one line')", 1, "mnist-exp: error: one line\n")])
def test_the_quick_exit_keeps_status_threads_atexit_and_output(tmp_path, end, code, stderr):
    done = subprocess.run([sys.executable, "-c", PROGRAM.format(end=end)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == code
    assert done.stdout == "buffered, no newline"
    assert done.stderr == stderr
    assert (tmp_path / "thread_done").read_text() == "yes"
    assert (tmp_path / "atexit_done").read_text() == "yes"


def test_a_profiled_command_still_writes_its_profile(tmp_path):
    done = subprocess.run([sys.executable, "-m", "cProfile", "-o", "prof.out", "-m",
                           "mnist_exp.sync", "--help"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "prof.out").stat().st_size > 0
