"""A one-node SLURM cluster (Debian's slurm-wlm 22.05 + munge) in a folder, for services.py:
its own munge key and socket, its own slurm.conf on free ports, accounting off. Clients
find it through SLURM_CONF=<folder>/slurm/slurm.conf. Needs root (slurmd runs the jobs).

For the tests of a job's end (tests/sweeps/test_slurm_faults.py), `up` also takes SLURM's
KillWait (seconds between SIGTERM and SIGKILL) and a second partition whose jobs preempt
(cancel) the first one's when they need its cores.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

from service_procs import NotInstalled, free_port, spawn, stop_group, wait_until

CONF = """\
ClusterName=mnistexp
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
# No cgroups, no accounting daemon: one machine, a try or a test.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait={kill_wait}
{preemption}# Lets the node declare the CPUs and memory written here, whatever it has.
SlurmdParameters=config_overrides
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={partition} Nodes={host} Default=YES MaxTime=INFINITE State=UP{tier}
"""
# Jobs of the higher tier take the cores of the lower tier's: SLURM cancels those jobs
# (SIGCONT, SIGTERM, and SIGKILL after KillWait), as a site's preemption would.
PREEMPTION = """\
PreemptType=preempt/partition_prio
PreemptMode=CANCEL
"""
URGENT = "\nPartitionName={name} Nodes={host} MaxTime=INFINITE State=UP PriorityTier=2"


def memory_mb() -> int:
    with open("/proc/meminfo") as meminfo:
        return int(meminfo.readline().split()[1]) // 1024


def up(folder: Path, partition: str = "debug", cpus: int | None = None, kill_wait: int = 30,
       preempting: str | None = None) -> dict:
    """Start munged, slurmctld and slurmd for `folder`; `preempting` names a partition whose
    jobs preempt `partition`'s."""
    for daemon in ("munged", "slurmctld", "slurmd", "sinfo"):
        if shutil.which(daemon) is None:
            raise NotInstalled(f"{daemon} is not installed (apt-get install slurm-wlm "
                                        "munge)")
    if os.geteuid() != 0:
        raise NotInstalled("a local SLURM cluster needs root (slurmd runs the jobs)")
    root = folder / "slurm"
    munge = root / "munge"
    for sub in ("state", "spool", "munge"):
        (root / sub).mkdir(parents=True)
    munge.chmod(0o711)  # munged refuses a socket folder others can write or cannot enter
    key = munge / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o400)
    socket_path = munge / "munge.socket"
    pids = []
    try:
        process = spawn(
            ["munged", "--foreground", "--force", f"--socket={socket_path}",
             f"--key-file={key}", f"--pid-file={munge / 'munged.pid'}",
             f"--log-file={munge / 'munged.log'}", f"--seed-file={munge / 'munged.seed'}"],
            root / "munged.out")
        pids.append(process.pid)
        wait_until(socket_path.exists, process, "munged", munge / "munged.log", 30)
        conf = root / "slurm.conf"
        host = socket.gethostname().split(".")[0]
        conf.write_text(CONF.format(
            host=host, root=root, munge_socket=socket_path, ctld_port=free_port(),
            slurmd_port=free_port(), cpus=cpus or os.cpu_count() or 1, memory_mb=memory_mb(),
            partition=partition, kill_wait=kill_wait,
            preemption=PREEMPTION if preempting else "",
            tier=" PriorityTier=1" + URGENT.format(name=preempting, host=host)
            if preempting else ""))
        env = {"SLURM_CONF": str(conf)}
        for daemon, log in (("slurmctld", "slurmctld.log"), ("slurmd", "slurmd.log")):
            process = spawn([daemon, "-D"], root / f"{daemon}.out", env=env)
            pids.append(process.pid)
            if daemon == "slurmctld":
                wait_until(lambda: _sinfo(conf) is not None, process, daemon,
                                    root / log, 60)
        wait_until(lambda: _sinfo(conf) == "idle", process, "slurmd (node idle)",
                            root / "slurmd.log", 60)
    except BaseException:
        for pid in reversed(pids):
            stop_group(pid)
        raise
    return {"pid": pids[-1], "pids": pids, "conf": str(conf), "partition": partition}


def _sinfo(conf: Path) -> str | None:
    """The node's state, or None while slurmctld does not answer."""
    result = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True,
                            env={**os.environ, "SLURM_CONF": str(conf)}, timeout=30)
    return result.stdout.strip().rstrip("*~#") if result.returncode == 0 else None


def down(recorded: dict) -> None:
    # Jobs still queued or running would outlive slurmd (no cgroups to reap them).
    subprocess.run(["scancel", "--full", "--quiet", "--user", "root"],
                   env={**os.environ, "SLURM_CONF": recorded["conf"]}, capture_output=True)
    time.sleep(1)
    for pid in reversed(recorded["pids"]):
        stop_group(pid)
