"""A real small disk for the disk-full tests: a tmpfs mounted in a mount namespace of the
command's own (`unshare --mount` as root, or in a user namespace of its own otherwise), so
it goes away with the command and needs no cleanup; a test that cannot make one skips."""

from __future__ import annotations

import functools
import subprocess
import tempfile

import pytest

from helpers import child_env

# For a child script run on a small disk: the rest of the disk taken by one file.
FILL_THE_DISK = """
def fill_the_disk(path):
    with open(path, "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(bytes(4096))
        except OSError:
            pass
"""


@functools.cache
def namespace() -> tuple[list[str] | None, str]:
    """How to run a command with a tmpfs of its own: as root, or in a user namespace."""
    why = ""
    for prefix in (["unshare", "--mount"], ["unshare", "--user", "--map-root-user", "--mount"]):
        with tempfile.TemporaryDirectory() as folder:
            try:
                probe = subprocess.run([*prefix, "mount", "-t", "tmpfs", "tmpfs", folder],
                                       capture_output=True, text=True, timeout=30)
            except (OSError, subprocess.SubprocessError) as e:
                why = str(e)
                continue
        if probe.returncode == 0:
            return prefix, ""
        why = probe.stderr.strip()
    return None, why


def in_namespace(script: str) -> None:
    """Run a shell script in a mount namespace of its own (skip where none can be made)."""
    prefix, why = namespace()
    if prefix is None:
        pytest.skip(f"no tmpfs can be mounted here, neither as root (`unshare --mount`) nor "
                    f"in a user namespace (`unshare --user --map-root-user --mount`): {why}")
    done = subprocess.run([*prefix, "sh", "-c", script], env=child_env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
