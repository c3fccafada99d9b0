"""`python -m mnist_exp.sync [FOLDER ...]`: upload the runs a tracking server missed.

Every run keeps a local record (record.py) of what it sends to MLflow. A run whose server
went away, or that ran with tracking.offline=true, ends with its record pending; this
uploads it (with no folder: every pending record under ./outputs), each to the store it
was recorded for, or to --tracking-uri: another store gets a copy, as a new run, and the
record is kept until its own store has it too. It is safe to repeat: what the server
already has is skipped. Only what a store took counts as uploaded: one that refuses (a
password, a run it lacks, a value, not an MLflow store) is named in one line, exit 2. A
sweep whose server was away at its end gets its summary (ranking, plot, best model) on its
parent run once its jobs are uploaded. A sweep whose process died (its sweep.lock is free)
has its open runs ended KILLED, and its Optuna trials still running told FAIL (or, if
their jobs finished after it died, their results); one whose life cannot be told (no
sweep.lock: started before sweeps held one) is named, and ended so only with
--dead-sweeps.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from mnist_exp.cli.process_exit import exit_after
from mnist_exp.errors import (
    NotUploaded,
    ServerAway,
    ServerDown,
    UserError,
    describe,
    exit_with,
    redact,
    report,
)
from mnist_exp.tracking.record import DAMAGE_TAG, EVENTS, RunRecord

if TYPE_CHECKING:
    from mnist_exp.tracking.upload import Uploaded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnist_exp.sync", description=__doc__.split(
        "\n\n")[0].split(": ", 1)[1], epilog="Exit status: 0 all uploaded, 3 a server still "
        "does not answer, 2 a mistake, a store's refusal (the record kept whole) or a "
        "damaged record (uploaded up to its damage), 1 an unexpected error.")
    parser.add_argument("folders", nargs="*", type=Path, default=[Path("outputs")],
                        help="run or sweep output folders, or folders above them "
                             "(default: outputs)")
    parser.add_argument("--tracking-uri",
                        help="upload here instead of to the store each record was "
                             "recorded for: that store at another address, or another "
                             "store, which gets a copy of the run (the record is kept until "
                             "its own store has it too). A record whose URI had a password, "
                             "shown as ***, goes to $MLFLOW_TRACKING_URI")
    parser.add_argument("--dead-sweeps", action="store_true",
                        help="the sweeps under FOLDERS whose process sync cannot tell alive "
                             "or dead (no sweep.lock: started before sweeps held one) have "
                             "ended: end their open runs KILLED, as a dead sweep's (a sweep "
                             "whose lock is held still runs, and is left alone)")
    args = parser.parse_args(argv)
    missing = [str(f) for f in args.folders if not f.is_dir()]
    if missing:
        exit_with(UserError(f"no such folder: {', '.join(missing)}"))

    from mnist_exp.sweeps.liveness import end_dead_sweeps
    from mnist_exp.sweeps.summary import SUMMARY_PENDING, finish_sweep
    from mnist_exp.tracking.store import read_sweep_info
    from mnist_exp.tracking.upload import bound_http_calls, upload_folder

    bound_http_calls()
    outcome = _Outcome()
    try:
        # a sweep killed outright (or said to be dead): its open runs and trials ended
        for line in end_dead_sweeps(args.folders, declared=args.dead_sweeps):
            print(line)
        left = [r for folder in args.folders
                for r in upload_folder(folder, args.tracking_uri, outcome.report, outcome.failed)]
        if left:
            outcome.show()
            raise NotUploaded(left[0].folder, args.tracking_uri or left[0].events[0]
                              .get("tracking_uri", ""))
        for folder in args.folders:
            for marker in sorted(folder.rglob(SUMMARY_PENDING)):
                if outcome.failed_under(marker.parent):  # its jobs first: kept pending
                    continue
                info = read_sweep_info(marker.parent)
                registered = json.loads(marker.read_text() or "{}").get("registered")
                failed = finish_sweep(info, marker.parent, registered)
                if failed is not None:  # uploaded all the same: said, not an error of sync's
                    print(failed)
    except ServerDown as e:
        outcome.show()
        exit_with(ServerAway(f"tracking server not answering ({e}); run sync again once it does"))
    except UserError as e:
        outcome.show()
        exit_with(e)
    if not outcome.uploaded and not outcome.errors:
        print(_nothing(args.folders, args.tracking_uri))
    return outcome.show()


def _nothing(folders: list[Path], uri: str | None) -> str:
    where = ", ".join(map(str, folders))
    if uri is None:
        return f"nothing to upload: every run under {where} is on its tracking server"
    return (f"nothing to upload to {redact(uri)}: every run under {where} is there, or on "
            "the store it was recorded for (a run is copied to another store only until its "
            "own store has it)")


class _Outcome:
    """What a sync did with each record: the runs it uploaded, and one line for each record
    that was damaged or could not be uploaded (the others are uploaded all the same)."""

    def __init__(self) -> None:
        self.uploaded = 0
        self.errors: list[tuple[str, int]] = []
        self.failed_folders: list[Path] = []

    def report(self, record: RunRecord, done: Uploaded) -> None:
        run = f"run {done.run_id} {done.status or ''}".strip()
        if done.events:  # only what the store took is said to be uploaded
            self.uploaded += 1
            print(f"uploaded {record.folder}: {run}" if done.copy_to is None else
                  f"copied {record.folder} to {done.copy_to}: {run}, a new run there; the "
                  f"record and its files are kept until its own store {record.own_uri} has "
                  f"it too: python -m mnist_exp.sync {record.folder}")
        damage = record.damage
        if damage is None:
            return
        journal = record.folder / EVENTS
        if done.status is None:  # its first line, the run's start, is what was lost
            what = "nothing to upload, the run's start is lost"
        else:
            what = (f"uploaded the {len(record.events) - 2} events before it; {run}, tagged "
                    f"{DAMAGE_TAG}={damage.tag}")
        self.errors.append((f"{journal}: line {damage.line} {damage.reason}; {what} (the "
                            f"damaged file is kept as {EVENTS}.damaged)", 2))

    def failed(self, record: RunRecord, error: Exception) -> None:
        message, code = describe(error)
        self.errors.append((f"{record.folder}: not uploaded: {message}", code))
        self.failed_folders.append(record.folder.resolve())

    def failed_under(self, folder: Path) -> bool:
        return any(f.is_relative_to(folder.resolve()) for f in self.failed_folders)

    def show(self) -> int:
        """Print each record's error line (once); the exit status of the first."""
        for message, _code in self.errors:
            report(message)
        code = self.errors[0][1] if self.errors else 0
        self.errors = []
        return code


def cli() -> None:
    """`python -m mnist_exp.sync`: main, then the quick exit of process_exit.py."""
    exit_after(main)


if __name__ == "__main__":
    cli()
