"""The data layer on real MNIST files: parsing, checksums, splits, clear failures."""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from mnist_exp.data.load import (
    load_arrays,
    load_dataset,
    load_idx_folder,
    read_idx,
    split_validation,
)
from mnist_exp.errors import DataError

# The md5 of each official MNIST test file's content, once ungzipped (the published .gz
# files have md5 9fb629c4... and ec29112d...).
OFFICIAL_T10K_MD5 = {"t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
                     "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637"}


def test_the_sample_rebuilds_the_official_t10k_files_and_they_verify(t10k):
    for name, digest in OFFICIAL_T10K_MD5.items():
        assert hashlib.md5((t10k / name).read_bytes()).hexdigest() == digest
    images = read_idx(t10k / "t10k-images-idx3-ubyte", verify_as="mnist")
    labels = read_idx(t10k / "t10k-labels-idx1-ubyte", verify_as="mnist")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))
    assert labels[:5].tolist() == [7, 2, 1, 0, 4]  # the famous first test digits


def test_gzipped_official_file_is_verified_by_its_content(t10k, tmp_path):
    gz = tmp_path / "t10k-labels-idx1-ubyte.gz"  # recompressed: a different .gz md5
    gz.write_bytes(gzip.compress((t10k / "t10k-labels-idx1-ubyte").read_bytes()))
    assert read_idx(gz, verify_as="mnist").shape == (10000,)


def test_tampered_official_file_fails_its_checksum(t10k, tmp_path):
    content = bytearray((t10k / "t10k-labels-idx1-ubyte").read_bytes())
    content[100] = (content[100] + 1) % 10
    tampered = tmp_path / "t10k-labels-idx1-ubyte.gz"
    tampered.write_bytes(gzip.compress(bytes(content)))
    with pytest.raises(DataError, match="checksum mismatch"):
        read_idx(tampered, verify_as="mnist")
    assert read_idx(tampered, verify_as=None)[100] == content[108]


def test_the_shipped_sample_is_verified_against_its_recorded_checksums(tmp_path, mini):
    for f in mini.glob("*.gz"):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (x_train, _), _, _ = load_arrays("mnist_sample", str(tmp_path))
    assert x_train.shape == (8000, 28, 28)
    content = bytearray(gzip.decompress((mini / "train-labels-idx1-ubyte.gz").read_bytes()))
    content[-1] = (content[-1] + 1) % 10
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(content)))
    with pytest.raises(DataError, match="checksum mismatch for the official mnist_sample"):
        load_arrays("mnist_sample", str(tmp_path))


def test_mini_folder_loads_with_the_expected_shapes(mini):
    (x_train, y_train), (x_test, y_test) = load_idx_folder(mini)
    assert x_train.shape == (8000, 28, 28) and y_train.shape == (8000,)
    assert x_test.shape == (2000, 28, 28) and y_test.shape == (2000,)


def test_npz_copy_loads_the_same_arrays(mini, tmp_path):
    (x_train, y_train), (x_test, y_test) = load_idx_folder(mini)
    archive = tmp_path / "mnist.npz"
    np.savez(archive, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    (a, b), (c, d), source = load_arrays("mnist", str(archive))
    assert source == str(archive)
    for got, want in zip((a, b, c, d), (x_train, y_train, x_test, y_test), strict=True):
        np.testing.assert_array_equal(got, want)


def _copy_with(mini, tmp_path, name, content: bytes):
    for f in mini.glob("*.gz"):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / name).write_bytes(content)
    return tmp_path


@pytest.mark.parametrize(("mangle", "message"), [
    (lambda b: b[: len(b) // 2], "corrupt or truncated gzip"),
    (lambda b: gzip.compress(b"\x00\x00\x09\x03" + gzip.decompress(b)[4:]), "data type"),
    (lambda b: gzip.compress(b"\x12\x34" + gzip.decompress(b)[2:]), "bad magic number"),
    (lambda b: gzip.compress(gzip.decompress(b)[:-784]), "truncated or corrupt"),
])
def test_damaged_files_are_named_with_the_problem(mini, tmp_path, mangle, message):
    name = "train-images-idx3-ubyte.gz"
    folder = _copy_with(mini, tmp_path, name, mangle((mini / name).read_bytes()))
    with pytest.raises(DataError, match=message) as error:
        load_idx_folder(folder)
    assert name in str(error.value)


def test_image_and_label_counts_must_agree(mini, tmp_path):
    labels = gzip.decompress((mini / "t10k-labels-idx1-ubyte.gz").read_bytes())
    fewer = labels[:4] + (1999).to_bytes(4, "big") + labels[8:-1]
    folder = _copy_with(mini, tmp_path, "t10k-labels-idx1-ubyte.gz", gzip.compress(fewer))
    with pytest.raises(DataError, match="2000 images but 1999 labels"):
        load_idx_folder(folder)


def test_missing_file_is_named(mini, tmp_path):
    _copy_with(mini, tmp_path, "x", b"")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte"):
        load_idx_folder(tmp_path)


def test_unreadable_npz_is_a_clear_error(tmp_path):
    bad = tmp_path / "mnist.npz"
    bad.write_bytes(b"not a zip archive")
    with pytest.raises(DataError, match=r"not a readable \.npz"):
        load_arrays("mnist", str(bad))


def test_validation_split_is_seeded_disjoint_and_stratified():
    x = np.arange(1000)
    y = np.repeat(np.arange(10), 100)
    x_tr, x_val, _, y_val = split_validation(x, y, 0.2, seed=1)
    again = split_validation(x, y, 0.2, seed=1)
    other = split_validation(x, y, 0.2, seed=2)
    assert len(x_val) == 200 and len(x_tr) == 800
    assert set(x_tr).isdisjoint(x_val) and set(x_tr) | set(x_val) == set(x)
    np.testing.assert_array_equal(x_val, again[1])
    assert set(x_val) != set(other[1])
    assert np.bincount(y_val).tolist() == [20] * 10
    np.testing.assert_array_equal(y_val, y[x_val])


def test_dataset_takes_validation_from_training_only(mini):
    data = load_dataset("mnist", str(mini), validation_split=0.25, seed=3)
    (x_train, _), (x_test, _) = load_idx_folder(mini)
    assert len(data.x_train) + len(data.x_val) == len(x_train) == 8000
    np.testing.assert_array_equal(data.x_test, x_test)


def test_offline_without_a_local_copy_says_how_to_fix_it(tmp_path):
    # A proxy on a closed port makes the real download fail at once, online or not.
    env = {**os.environ, "KERAS_HOME": str(tmp_path), "HTTPS_PROXY": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
           "http_proxy": "http://127.0.0.1:9", "TF_CPP_MIN_LOG_LEVEL": "3"}
    code = ("from mnist_exp.data.load import load_arrays\nfrom mnist_exp.errors import DataError\n"
            "try:\n    load_arrays('mnist')\nexcept DataError as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]  # the DataError was raised and caught
    assert "could not download mnist" in done.stdout and "data.path" in done.stdout
