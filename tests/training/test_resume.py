"""Resume state: one folder per live run, even when two runs share a config."""

from __future__ import annotations

from helpers import compose_config
from mnist_exp.config.schema import parse_config
from mnist_exp.training.resume import resume_state_for


def test_two_live_runs_of_one_config_never_share_a_folder(tmp_path):
    config = parse_config(compose_config())
    with resume_state_for(config, tmp_path) as first, resume_state_for(config, tmp_path) as second:
        assert first.folder != second.folder
        first.claim("run-a")
        second.claim("run-b")
        second.backup_dir.mkdir()  # an epoch's state, then the run is interrupted
        first.release()
    assert not first.folder.exists() and second.folder.is_dir()
    # Resuming finds the interrupted run in its slot; a fresh run takes the first free one.
    with resume_state_for(config, tmp_path, resume=True) as resumed:
        assert resumed.run_to_resume(True) == "run-b"
        with resume_state_for(config, tmp_path, resume=True) as other:
            assert other.folder == first.folder and other.run_to_resume(True) is None


def test_a_fresh_run_discards_stale_state_it_finds(tmp_path):
    config = parse_config(compose_config())
    with resume_state_for(config, tmp_path) as interrupted:
        interrupted.claim("run-a")
        interrupted.backup_dir.mkdir()
    with resume_state_for(config, tmp_path) as fresh:
        assert fresh.folder == interrupted.folder
        assert fresh.run_to_resume(False) is None and not fresh.backup_dir.exists()
