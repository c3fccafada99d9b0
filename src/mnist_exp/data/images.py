"""Turning an arbitrary picture of a digit into the model's input, MNIST style.

MNIST digits are white on black, scaled to fit a 20x20 box and centred by their
centre of mass in a 28x28 frame; a photo or a drawing has to be brought to that
form before the model can read it. Images that already are 28x28 pass unchanged
(after inverting a light background), so a saved test digit predicts as in training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mnist_exp.data.load import IMAGE_SHAPE
from mnist_exp.errors import ImageError

MAX_FILE_BYTES = 20 * 2**20
MAX_PIXELS = 40_000_000  # a decompression bomb would be far past this
_BOX = 20


def load_image(path: Path) -> np.ndarray:
    """Read a PNG/JPEG/GIF/BMP file as a (28, 28) float32 array of 0-255 pixels, digit
    bright on dark, ready for the model."""
    return to_mnist_frame(read_grayscale(path))


def read_grayscale(path: Path) -> np.ndarray:
    """Decode an image file to (H, W) float32 grey levels 0-255; transparency counts as white."""
    import tensorflow as tf

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageError(f"{path}: cannot read ({e.strerror})") from None
    if not data:
        raise ImageError(f"{path}: empty file")
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(f"{path}: {len(data)} bytes; images over {MAX_FILE_BYTES} are refused")
    width, height = _declared_size(data)
    if width * height > MAX_PIXELS:
        raise ImageError(f"{path}: {width}x{height} pixels; images over {MAX_PIXELS} pixels "
                         "are refused")
    try:
        pixels = tf.io.decode_image(data, expand_animations=False).numpy().astype(np.float32)
    except (tf.errors.InvalidArgumentError, ValueError):
        raise ImageError(f"{path}: not a readable PNG, JPEG, GIF or BMP image") from None
    if pixels.shape[-1] in (2, 4):  # alpha: composite onto white paper
        alpha = pixels[..., -1:] / 255.0
        pixels = pixels[..., :-1] * alpha + 255.0 * (1 - alpha)
    return pixels.mean(axis=-1)


def to_mnist_frame(gray: np.ndarray) -> np.ndarray:
    """Bright digit on black, fitted into a 20x20 box, centred by mass in 28x28."""
    if np.median(_border(gray)) > 127:
        gray = 255.0 - gray
    if gray.shape == IMAGE_SHAPE:
        return gray.astype(np.float32)
    gray = np.clip(gray - np.median(_border(gray)), 0, None)
    peak = gray.max()
    if peak <= 0:
        return np.zeros(IMAGE_SHAPE, np.float32)
    gray = gray * (255.0 / peak)
    rows, cols = np.nonzero(gray > 0.2 * 255)
    digit = gray[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1]
    scale = _BOX / max(digit.shape)
    size = (max(1, round(digit.shape[0] * scale)), max(1, round(digit.shape[1] * scale)))
    digit = _resize(digit, size)
    frame = np.zeros(IMAGE_SHAPE, np.float32)
    total = digit.sum()
    centre = (np.array([np.arange(size[0]) @ digit.sum(axis=1),
                        np.arange(size[1]) @ digit.sum(axis=0)]) / total
              if total > 0 else np.array(size) / 2)
    top, left = np.clip(np.round(np.array(IMAGE_SHAPE) / 2 - centre).astype(int), 0,
                        np.array(IMAGE_SHAPE) - size)
    frame[top: top + size[0], left: left + size[1]] = digit
    return np.clip(frame, 0, 255)


def _border(image: np.ndarray) -> np.ndarray:
    return np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import tensorflow as tf

    resized = tf.image.resize(image[..., None], size, antialias=True)
    return resized.numpy()[..., 0]


def _declared_size(data: bytes) -> tuple[int, int]:
    """Width and height from the header, before any pixel is decoded (0, 0 if unknown)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] == b"\xff\xd8":
        import tensorflow as tf

        try:
            height, width, _ = tf.io.extract_jpeg_shape(data).numpy()
            return int(width), int(height)
        except tf.errors.InvalidArgumentError:
            pass  # decoding will say what is wrong
    return 0, 0
