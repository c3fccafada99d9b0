"""The epoch's progress line in training batches, whatever the path: Keras counts the calls
it makes, and on the fast paths one call runs a chunk of batches or a whole epoch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras


class BatchProgress(keras.callbacks.ProgbarLogger):
    """Keras' own progress bar (verbose 1) or epoch line (verbose 2), counting batches:
    `done[i]` is how many of the epoch's batches are trained once Keras' step `i` has run
    (one each on the plain path, a chunk's on the fused one, all of them on the resident
    one). Its time per step is then the time per batch, as on the plain path."""

    def __init__(self, done: Sequence[int]) -> None:
        super().__init__()
        self.done = list(done)

    def set_params(self, params: dict[str, Any]) -> None:
        super().set_params(params)
        self.target = self.done[-1] if self.done else self.target

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        super().on_train_batch_end(self.done[min(batch, len(self.done) - 1)] - 1, logs)
