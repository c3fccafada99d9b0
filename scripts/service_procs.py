"""Process plumbing shared by services.py and service_slurm.py: free ports, starting a
server in a process group of its own, waiting until it answers, stopping it by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path


class ServiceError(Exception):
    """A service cannot be started as asked; the message is one line for the user."""


class NotInstalled(ServiceError):
    """What a service needs is missing from this machine (tests skip, saying which)."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(ready: Callable[[], bool], process: subprocess.Popen | None, what: str,
               log: Path, timeout: float = 120) -> None:
    """Poll `ready` until it holds; fail with the log's tail if the process dies or the
    time runs out."""
    deadline = time.monotonic() + timeout
    while not ready():
        if (process is not None and process.poll() is not None) or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-1500:] if log.is_file() else ""
            raise ServiceError(f"{what} did not start (log {log}):\n{tail}")
        time.sleep(0.5)


def spawn(command: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """Start a foreground server in a process group of its own, so down stops it and all
    its children by one pid."""
    with log.open("ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
                                start_new_session=True)


def stop_group(pid: int, timeout: float = 30) -> None:
    """SIGTERM the process group led by `pid`, SIGKILL what is left after `timeout`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            with contextlib.suppress(ChildProcessError):  # reap it if it is our own child
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.2)


def answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
        return True
    except OSError:
        return False
