"""A continued Optuna study proposes new configurations, and ends the trials a stopped
search left running (real Optuna, in-memory storage)."""

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution

from hydra_plugins.mnist_exp_optuna.sweeper import _reseed, _told_as_duplicate
from mnist_exp.sweeps.study import ABANDONED, fail_abandoned, make_sampler

SPACE = {"lr": FloatDistribution(1e-4, 1e-1, log=True)}
SAMPLER = {"name": "random", "seed": 42}


def _command(storage: optuna.storages.BaseStorage, reseed: bool) -> list[dict]:
    """What one `python -m mnist_exp.run -m hparams_search=optuna` invocation proposes."""
    study = optuna.create_study(study_name="s", storage=storage, load_if_exists=True,
                                sampler=make_sampler(SAMPLER["name"], SAMPLER["seed"]))
    if reseed:
        _reseed(study, SAMPLER)
    trials = [study.ask(SPACE) for _ in range(2)]
    for trial in trials:
        study.tell(trial, trial.params["lr"])
    return [t.params for t in trials]


def test_a_continued_study_does_not_repeat_the_first_commands_trials():
    storage = optuna.storages.InMemoryStorage()
    first = _command(storage, reseed=True)
    assert _command(storage, reseed=True) != first
    # the defect it fixes: a sampler seeded alike proposes the same trials again
    alike = optuna.storages.InMemoryStorage()
    assert _command(alike, reseed=False) == _command(alike, reseed=False)


def test_reseeding_is_reproducible():
    a, b = optuna.storages.InMemoryStorage(), optuna.storages.InMemoryStorage()
    assert [_command(a, True), _command(a, True)] == [_command(b, True), _command(b, True)]


def test_a_repeated_proposal_is_told_the_finished_value_not_run():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = {"units": CategoricalDistribution([64])}  # every proposal is the same
    first = study.ask(space)
    assert not _told_as_duplicate(study, first)
    study.tell(first, 0.9)
    again = study.ask(space)
    assert _told_as_duplicate(study, again)
    assert study.trials[-1].state == optuna.trial.TrialState.COMPLETE
    assert study.trials[-1].value == 0.9 and study.trials[-1].user_attrs["duplicate_of"] == 0


def test_trials_left_running_are_told_fail_all_of_them_or_a_dead_searchs_only():
    """A search starting on the study fails every running trial; sync, a dead search's
    trials only (another search of the study may be training the others)."""
    study = optuna.create_study()
    done, dead, other, later = (study.ask(SPACE) for _ in range(4))
    study.tell(done, 0.5)
    assert fail_abandoned(study, {dead._trial_id, done._trial_id}) == [dead.number]
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "FAIL", "RUNNING", "RUNNING"]
    assert study.trials[1].user_attrs == {ABANDONED: True} and not study.trials[0].user_attrs
    assert fail_abandoned(study) == [other.number, later.number]
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "FAIL", "FAIL"]
    assert fail_abandoned(study) == []
