"""Keep TensorFlow's native start-up log off the console, and nothing else.

Importing TensorFlow prints INFO lines from C++ (a CUDA stub that finds no GPU, oneDNN
notices), each run twice, and absl's warning that it has not been initialised; no
setting silences them, because they come before TensorFlow reads TF_CPP_MIN_LOG_LEVEL.
While the import runs, the process's stderr goes through `grep`, which drops exactly
those lines and passes every other one on at once. A separate process, not a thread, so
that a crash inside the import still gets its last words to the console.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

# absl's pre-initialisation warning, and its INFO lines: "I1124 14:19:11.445 ... file.cc:31]"
_NOISE = (r"^WARNING: All log messages before absl::InitializeLog\(\) is called"
          r"|^I[0-9]{4} [0-9:. ]+[0-9]+ [^ ]+:[0-9]+\] ")


def wants_native_log(verbose: bool = False) -> bool:
    """Whether the user asked to see TensorFlow's native log: hydra.verbose, or a
    TF_CPP_MIN_LOG_LEVEL of their own below 3 (0 shows everything)."""
    return verbose or os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3") != "3"


@contextmanager
def quiet_native_startup(verbose: bool = False) -> Iterator[None]:
    """Import TensorFlow inside this block to keep its start-up chatter off stderr."""
    if wants_native_log(verbose):
        yield
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # what TensorFlow logs once it has read it
    grep = shutil.which("grep")
    if grep is None:
        yield
        return
    sys.stderr.flush()
    console = os.dup(2)
    filter_ = subprocess.Popen([grep, "--line-buffered", "-v", "-E", _NOISE],
                               stdin=subprocess.PIPE, stdout=console)
    os.dup2(filter_.stdin.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(console, 2)
        os.close(console)
        filter_.stdin.close()
        filter_.wait()
