"""`python -m mnist_exp.sync [FOLDER ...]`: upload the runs a tracking server missed.

Every run keeps a local record (record.py) of what it sends to MLflow. A run whose server
went away, or that ran with tracking.offline=true, ends with its record pending; this
uploads it (with no folder: every pending record under ./outputs), each to the store it
names, or to --tracking-uri. It is safe to repeat: what the server already has is
skipped. A sweep whose server was away at its end gets its summary (ranking, plot, best
model) on its parent run once its jobs are uploaded.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mnist_exp.cli.process_exit import exit_after
from mnist_exp.errors import NotUploaded, ServerAway, ServerDown, UserError, exit_with


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnist_exp.sync", description=__doc__.split(
        "\n\n")[0].split(": ", 1)[1], epilog="Exit status: 0 all uploaded, 3 a server still "
        "does not answer, 2 a mistake.")
    parser.add_argument("folders", nargs="*", type=Path, default=[Path("outputs")],
                        help="run or sweep output folders, or folders above them "
                             "(default: outputs)")
    parser.add_argument("--tracking-uri",
                        help="upload here instead of to the store each record names (a "
                             "record whose URI had a password, shown as ***, goes to "
                             "$MLFLOW_TRACKING_URI)")
    args = parser.parse_args(argv)
    missing = [str(f) for f in args.folders if not f.is_dir()]
    if missing:
        exit_with(UserError(f"no such folder: {', '.join(missing)}"))

    from mnist_exp.sweeps.summary import SUMMARY_PENDING, finish_sweep
    from mnist_exp.tracking.record import RunRecord
    from mnist_exp.tracking.store import read_sweep_info
    from mnist_exp.tracking.upload import bound_http_calls, upload_folder

    bound_http_calls()
    uploaded: list[RunRecord] = []

    def report(record: RunRecord) -> None:
        uploaded.append(record)
        end = next(e for e in reversed(record.events) if e["op"] == "end")
        print(f"uploaded {record.folder}: run {record.ids.get('run_id')} {end['status']}")

    try:
        left = [r for folder in args.folders
                for r in upload_folder(folder, args.tracking_uri, report)]
        if left:
            raise NotUploaded(left[0].folder, args.tracking_uri or left[0].events[0]
                              .get("tracking_uri", ""))
        for folder in args.folders:
            for marker in sorted(folder.rglob(SUMMARY_PENDING)):
                info = read_sweep_info(marker.parent)
                registered = json.loads(marker.read_text() or "{}").get("registered")
                failed = finish_sweep(info, marker.parent, registered)
                if failed is not None:  # uploaded all the same: said, not an error of sync's
                    print(failed)
    except ServerDown as e:
        exit_with(ServerAway(f"tracking server not answering ({e}); run sync again once it does"))
    except UserError as e:
        exit_with(e)
    if not uploaded:
        print("nothing to upload: every run under "
              f"{', '.join(map(str, args.folders))} is on its tracking server")
    return 0


def cli() -> None:
    """`python -m mnist_exp.sync`: main, then the quick exit of process_exit.py."""
    exit_after(main)


if __name__ == "__main__":
    cli()
