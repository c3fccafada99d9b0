"""TensorFlow's native start-up log stays off the console; real messages do not."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

from helpers import child_env

NATIVE = re.compile(r"^(I\d{4} |WARNING: All log messages before absl)", re.MULTILINE)

IMPORT_THEN = """
import os
from mnist_exp.cli.native_log import quiet_native_startup
with quiet_native_startup():
    import tensorflow
    os.write(2, b"E0000 a real error from C++\\n")
    print("a Python warning", file=__import__("sys").stderr)
    {then}
"""


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=child_env(env),
                          capture_output=True, text=True, timeout=300)


def test_a_run_shows_no_native_start_up_lines(tiny_run):
    assert not NATIVE.search(tiny_run.process.stderr), tiny_run.process.stderr[:2000]
    assert "Creating initial MLflow database tables" not in tiny_run.process.stderr


def test_only_the_noise_is_dropped_and_a_crash_keeps_its_last_words():
    result = _python(IMPORT_THEN.format(then='os.write(2, b"last words\\n"); os.abort()'))
    assert result.returncode == -signal.SIGABRT, result.stderr  # the abort, not an import error
    assert not NATIVE.search(result.stderr), result.stderr
    for line in ("E0000 a real error from C++", "a Python warning", "last words"):
        assert line in result.stderr


def test_a_log_level_of_the_users_own_brings_the_native_log_back():
    result = _python(IMPORT_THEN.format(then="pass"), TF_CPP_MIN_LOG_LEVEL="0")
    assert result.returncode == 0, result.stderr
    assert NATIVE.search(result.stderr), result.stderr
