"""Training batches: every sample once per epoch, reshuffled, in fixed chunks, augmented."""

from __future__ import annotations

import numpy as np

from mnist_exp.training.batches import BatchChunks


def test_chunks_cover_every_sample_once_per_epoch_in_fixed_batches():
    images = np.arange(1000 * 4, dtype=np.int32).reshape(1000, 2, 2)
    labels = np.arange(1000)
    chunks = BatchChunks(images, labels, batch_size=32, steps=8, seed=0)  # 31 batches, prime
    seen = []
    for _ in range(2):
        shapes = [chunks[i][0].shape for i in range(len(chunks))]
        assert shapes[0] == (1, 8, 2, 2)  # the 8 samples left over, first (Keras' signature)
        assert shapes[1:] == [(8, 32, 2, 2)] * 3 + [(7, 32, 2, 2)]  # 31 batches: 8 + 8 + 8 + 7
        order = np.concatenate([chunks[i][1].ravel() for i in range(len(chunks))])
        assert sorted(order) == list(range(1000))
        for i in range(len(chunks)):
            x, y = chunks[i]
            np.testing.assert_array_equal(x[..., 0, 0], images[y][..., 0, 0])
        seen.append(order)
        chunks.on_epoch_end()
    assert not np.array_equal(seen[0], seen[1])  # reshuffled each epoch


def test_plain_batches_are_reshuffled_every_epoch():
    labels = np.arange(100)
    batches = BatchChunks(labels, labels, batch_size=32, steps=1, seed=0, chunked=False)
    first = [batches[i][1] for i in range(len(batches))]
    assert [len(b) for b in first] == [4, 32, 32, 32]
    batches.on_epoch_end()
    assert not np.array_equal(first[0], batches[0][1])


def test_augmented_batches_move_each_image_by_at_most_max_shift():
    images = np.zeros((500, 28, 28), np.uint8)
    images[np.arange(500), 10, np.arange(500) % 20 + 4] = 255  # one marked pixel, label = col
    labels = np.arange(500) % 20 + 4
    chunks = BatchChunks(images, labels, batch_size=50, steps=5, seed=0, max_shift=2)
    moves = set()
    for i in range(len(chunks)):
        x, y = chunks[i]
        x, y = x.reshape(-1, 28, 28), y.ravel()
        assert x.dtype == np.uint8 and (x > 0).sum(axis=(1, 2)).tolist() == [1] * len(y)
        rows, cols = np.nonzero(x)[1:]
        moves |= set(zip((rows - 10).tolist(), (cols - y).tolist(), strict=True))
    assert moves == {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}


def test_horizontal_flip_mirrors_about_half_and_keeps_labels():
    images = np.zeros((1000, 28, 28), np.uint8)
    images[:, 5, 0] = 255
    batches = BatchChunks(images, np.arange(1000), batch_size=1000, steps=1, seed=0,
                           chunked=False, horizontal_flip=True)
    x, y = batches[0]
    mirrored = x[:, 5, 27] == 255
    assert 400 < mirrored.sum() < 600
    assert (x[~mirrored, 5, 0] == 255).all() and sorted(y) == list(range(1000))
    assert (images[:, 5, 0] == 255).all()  # the training set itself is untouched


def test_chunk_size_prefers_an_even_split():
    labels = np.arange(48000)
    chunks = BatchChunks(labels, labels, batch_size=32, steps=64, seed=0)
    assert {chunks[i][0].shape for i in range(len(chunks))} == {(60, 32)}  # 1500 = 25 x 60
