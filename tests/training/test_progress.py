"""The progress line counts the epoch's batches on every path, as Keras' plain fit does."""

from __future__ import annotations

import math
import re

import pytest

from helpers import prepared
from mnist_exp.training.fit import EpochClock, fit

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _printed_fit(mini, capfd, verbose, *overrides):
    """Fit 600 digits (480 to train on: 15 batches of 32) for 2 epochs; the path taken, the
    number of batches, what fit printed (without the terminal's colours), and how long each
    epoch took."""
    config, data, model, plan = prepared(mini, 600, 2, *overrides)
    t = config.trainer
    clock = EpochClock()
    capfd.readouterr()
    fit(model, data, t, plan, learning_rate=config.optimizer.learning_rate, verbose=verbose,
        callbacks=[clock])
    printed = ANSI.sub("", capfd.readouterr().out)
    return plan, math.ceil(len(data.y_train) / t.batch_size), printed, clock.seconds


@pytest.mark.parametrize("verbose", [1, 2], ids=["progress bar", "one line per epoch"])
def test_resident_epochs_show_their_batches_not_one_step(mini, capfd, verbose):
    """A whole epoch is one call on the resident path; the line still reads 15/15, with the
    time per batch, once per epoch."""
    plan, batches, printed, seconds = _printed_fit(mini, capfd, verbose, "trainer.jit_compile=true")
    assert plan.resident
    assert batches == 15
    # The finished line of each epoch (a progress bar redraws its line as it goes).
    finals = re.findall(rf"\b{batches}/{batches} [^\r\n\x08]*?(\d+)(us|ms|s)/step"
                        r"[^\r\n\x08]*val_loss", printed)
    assert len(finals) == 2, printed
    assert "1/1 " not in printed and "Epoch 2/2" in printed
    for (amount, unit), epoch in zip(finals, seconds, strict=True):  # per batch, not per call
        per_batch = float(amount) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[unit]
        assert per_batch * batches == pytest.approx(epoch, rel=0.25, abs=0.02), printed


@pytest.mark.parametrize(("fused", "overrides"), [
    (True, ("trainer.jit_compile=true", "trainer.augment.max_shift=1")),
    (False, ("trainer.steps_per_execution=1", "trainer.jit_compile=false"))],
    ids=["fused chunks", "plain batches"])
def test_host_batches_show_their_batches(mini, capfd, fused, overrides):
    """Chunks of batches (the augmented fast path) count as their batches; the plain path
    counts one per batch as Keras always did."""
    plan, batches, printed, _ = _printed_fit(mini, capfd, 2, *overrides)
    assert (plan.resident, plan.fused) == (False, fused)
    lines = re.findall(r"^\s*(\d+)/(\d+) - \d+s - \d+(?:us|ms|s)/step", printed, re.M)
    assert lines == [(str(batches), str(batches))] * 2, printed
