"""Leaving a command's process without Python's teardown of TensorFlow.

When a command is done, Python first waits for its threads and runs its atexit handlers
(MLflow's, logging's, a sweep's closing of its parent run), then finalizes every module
and object. With TensorFlow and Keras loaded, that last part takes ~2 s on 2 cores
(measured: 2.3 s between the last atexit handler and the end of a tracked run's
process), nobody sees it, and it writes nothing. `exit_after` does the first two steps
as Python would, in Python's order, flushes the standard streams, and ends the process.
An exception other than SystemExit (a bug's traceback, Ctrl-C outside a run) takes
Python's ordinary way out, and so does a process under a profiler or a debugger
(`python -m cProfile -m mnist_exp.run`), which writes its results after `main` returns.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Callable
from typing import NoReturn


def exit_after(main: Callable[[], object]) -> NoReturn:
    """Run `main`, then exit with its status (its return value or SystemExit's code)."""
    try:
        status = main()
    except SystemExit as e:
        status = e.code
    code = _exit_code(status)
    if sys.getprofile() is not None or sys.gettrace() is not None:
        raise SystemExit(code)  # `python -m cProfile`, a debugger: they finish after us
    threading._shutdown()  # what Py_FinalizeEx does first: wait for non-daemon threads
    atexit._run_exitfuncs()  # then the atexit handlers, last registered first
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: as Python's own exit would, say 120
            code = code or 120
    os._exit(code)


def _exit_code(status: object) -> int:
    """sys.exit's rules: None is 0, an int is itself, anything else is printed and 1."""
    if status is None:
        return 0
    if isinstance(status, int):
        return status
    print(status, file=sys.stderr)
    return 1
