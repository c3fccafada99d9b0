"""The published checksums of the official MNIST-format files, and the check that a file
claiming to be one of them matches, so a truncated or altered download fails loudly."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import NamedTuple

from mnist_exp.errors import DataError

log = logging.getLogger("mnist_exp.data.load")  # the name its lines had before the split


class Official(NamedTuple):
    """What the published file holds: its item count, the md5 of the published .gz, and
    the md5s of its uncompressed content (which survive recompression, e.g. by Debian).
    For mnist_sample, "published" means as shipped in this repository."""

    items: int
    gz_md5: str
    content_md5: tuple[str, ...] = ()


OFFICIAL: dict[str, dict[str, Official]] = {
    "mnist": {
        "train-images-idx3-ubyte": Official(60000, "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        "train-labels-idx1-ubyte": Official(60000, "d53e105ee54ea40749a09fcbcd1e9432"),
        "t10k-images-idx3-ubyte": Official(10000, "9fb629c4189551a2d022fa330f9573f3",
                                           ("2646ac647ad5339dbf082846283269ea",)),
        "t10k-labels-idx1-ubyte": Official(10000, "ec29112dd5afa0611ce80d1b7f02629c",
                                           ("27ae3e4e09519cfbb04c329615203637",)),
    },
    # The official MNIST test set shuffled with numpy.random.default_rng(0) and split
    # 8,000 / 2,000 (see mnist_sample/README.md).
    "mnist_sample": {
        "train-images-idx3-ubyte": Official(8000, "7db24afd2854b3f52ca1a264bc3f8cc6",
                                            ("a59811b062b5886d8a1ae1be5c50e6c4",)),
        "train-labels-idx1-ubyte": Official(8000, "e848283caf97512b57967bd9676a38d3",
                                            ("4fff8f8b82163dc5b021de149a1641e6",)),
        "t10k-images-idx3-ubyte": Official(2000, "fa98a7fff39aee3c46450656ac6302dc",
                                           ("f15cf52e7ce4e1306f1d8278c1152b0f",)),
        "t10k-labels-idx1-ubyte": Official(2000, "bafbfbc3fec38e60db849a261f00c631",
                                           ("8b27ecb1ec135b7652db904823aee4bc",)),
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte": Official(60000, "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                                            ("f4a8712d7a061bf5bd6d2ca38dc4d50a",)),
        "train-labels-idx1-ubyte": Official(60000, "25c81989df183df01b3e8a0aad5dffbe",
                                            ("9018921c3c673c538a1fc5bad174d6f9",)),
        "t10k-images-idx3-ubyte": Official(10000, "bef4ecab320f06d8554ea6380940ec79",
                                           ("8181f5470baa50b63fa0f6fddb340f0a",)),
        "t10k-labels-idx1-ubyte": Official(10000, "bb300cfdad3c16e7a12a480ee83cd310",
                                           ("15d484375f8d13e6eb1aabb0c3f46965",)),
    },
}


def verify_checksum(path: Path, stored: bytes, content: bytes, items: int, dataset: str) -> None:
    stem = path.name.removesuffix(".gz")
    official = OFFICIAL.get(dataset, {}).get(stem)
    if official is None or items != official.items:
        return  # not a file that claims to be the official one (e.g. a re-split subset)
    if path.suffix == ".gz" and hashlib.md5(stored).hexdigest() == official.gz_md5:
        return
    if not official.content_md5:
        log.warning("%s: no published checksum for this file's uncompressed content; "
                    "not verified", path)
        return
    digest = hashlib.md5(content).hexdigest()
    if digest not in official.content_md5:
        raise DataError(f"{path}: checksum mismatch for the official {dataset} file {stem} "
                        f"(content md5 {digest}); re-download it, or set "
                        "data.verify_checksums=false for a deliberately modified copy")
