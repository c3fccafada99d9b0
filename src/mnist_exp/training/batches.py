"""The training batches: the training set reshuffled every epoch, in chunks of batches for
the looped step, with augmentation (shift, mirror) on the CPU beside the compiled step.

Our own sequence rather than Keras' shuffle of NumPy arrays, which repeats the same batch
order every epoch once keras.utils.set_random_seed is set (Keras 3.15).
"""

from __future__ import annotations

import keras
import numpy as np

from mnist_exp.training.order import epoch_order


class BatchChunks(keras.utils.PyDataset):
    """The training set, reshuffled every epoch, as chunks of (up to) `steps` batches of
    `batch_size`: shape (steps, batch, ...); with chunked=False, one plain batch per item.
    A smaller batch of the samples left over travels alone. Augmentation (shift, mirror)
    happens here, on the CPU beside the compiled step, so the trained model stays exactly
    the configured one."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, steps: int,
                 seed: int, chunked: bool = True, max_shift: int = 0,
                 horizontal_flip: bool = False) -> None:
        super().__init__()
        self.chunked = chunked
        self.max_shift, self.horizontal_flip = max_shift, horizontal_flip
        self.images, self.labels = images, labels
        self.seed, self.epoch = seed, -1
        full, rest = divmod(len(labels), batch_size)
        # Prefer a chunk size that divides the batches evenly: each distinct chunk shape
        # costs an XLA compilation (~1 s) in the first epoch.
        steps = next((k for k in range(steps, steps // 2, -1) if full % k == 0), steps)
        sizes = [steps] * (full // steps) + ([full % steps] if full % steps else [])
        self.chunks = [(start * batch_size, count, batch_size)
                       for start, count in zip(np.cumsum([0, *sizes[:-1]]), sizes, strict=True)]
        if rest:  # first: Keras reads its input signature off items 0 and 1, and must see
            # that the batch size varies, or the smaller batch fails as a shape mismatch
            self.chunks.insert(0, (full * batch_size, 1, rest))
        self.set_epoch(0)

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        start, count, size = self.chunks[index]
        picked = self.order[start: start + count * size]
        images = self._augmented(self.images[picked])
        if not self.chunked:
            return images, self.labels[picked]
        return (images.reshape(count, size, *self.images.shape[1:]),
                self.labels[picked].reshape(count, size, *self.labels.shape[1:]))

    def _augmented(self, images: np.ndarray) -> np.ndarray:
        """Each image moved by its own random (dy, dx), the gap filled with background
        (zeros), and mirrored with probability 1/2 if asked."""
        if self.max_shift:
            s, moved = self.max_shift, np.zeros_like(images)
            shifts = self.rng.integers(-s, s + 1, size=(2, len(images)))
            for dy in range(-s, s + 1):  # one slice copy per distinct shift: ~10x faster
                for dx in range(-s, s + 1):  # than gathering pixel by pixel
                    which = np.flatnonzero((shifts[0] == dy) & (shifts[1] == dx))
                    moved[which, _span(dy), _span(dx)] = images[which, _span(-dy), _span(-dx)]
            images = moved
        if self.horizontal_flip:
            mirror = self.rng.random(len(images)) < 0.5
            images[mirror] = images[mirror, :, ::-1]  # a copy already: picked by index
        return images

    def on_epoch_end(self) -> None:
        self.set_epoch(self.epoch + 1)

    def set_epoch(self, epoch: int) -> None:
        """Epoch `epoch`'s order and augmentation, whatever came before: a run resumed at
        epoch k draws what an uninterrupted one draws there."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.order = epoch_order(self.seed, epoch, len(self.labels)).numpy()
            self.rng = np.random.default_rng([self.seed, epoch])  # augmentation only


def _span(shift: int) -> slice:
    """The pixels that a move by `shift` writes to; _span(-shift): those it reads from."""
    return slice(shift, None) if shift >= 0 else slice(None, shift)
