"""Image classification data: an image and a label per record.

A record's image is its encoded bytes (a Parquet binary column), an object
holding such `bytes` (how Hugging Face datasets store images), or a path
relative to the dataset file's folder, read through the same FileAccess as the
records. Every image is decoded once when the data is loaded, so a broken one
fails the job at once with its file and line; batches decode them again and
run the model's own image processor (resize, crop, normalise), after a random
crop-and-resize and horizontal flip for training images when asked to.
"""

from __future__ import annotations

import io
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from kubetune_trainer.data.formats import Keys
from kubetune_trainer.data.labels import LabelIds
from kubetune_trainer.data.sources import FileAccess, Problems, Record, each
from kubetune_trainer.errors import DataError

if TYPE_CHECKING:
    from PIL import Image


@dataclass(frozen=True)
class ImageSample:
    """One encoded image and its class id."""

    image: bytes
    label: int
    where: str


def _image_bytes(record: Record, key: str, files: FileAccess) -> bytes:
    value = record.data.get(key)
    if isinstance(value, dict):  # {"bytes": ..., "path": ...}, the Hugging Face datasets layout
        value = value.get("bytes") or value.get("path")
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str) and value:
        if not record.file:
            raise DataError(f"{record.where}: image path {value!r} needs the dataset file it is relative to")
        path = posixpath.join(posixpath.dirname(record.file), value)
        with files.open(path) as stream:
            return stream.read()
    got = "missing" if value is None else f"got {type(value).__name__}"
    raise DataError(f"{record.where}: field {key!r} must hold the image: its bytes, an object with "
                    f"'bytes', or a path relative to the dataset file ({got})")


def decode(data: bytes, where: str = "") -> Image.Image:
    """The image as RGB; DataError naming `where` when it does not decode."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except UnidentifiedImageError:
        raise DataError(f"{where}: the image does not decode (not a PNG, JPEG, GIF, BMP, TIFF or WebP "
                        "image)") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{where}: the image does not decode ({str(e).splitlines()[0]})") from None


def image_samples(records: list[Record], keys: Keys, labels: LabelIds, files: FileAccess,
                  problems: Problems = None) -> list[ImageSample]:
    """Read and check every record's image and label; the first bad one raises DataError (or goes
    to `problems`)."""

    def sample(record: Record) -> ImageSample:
        data = _image_bytes(record, keys["image"], files)
        decode(data, record.where)
        return ImageSample(data, labels.of(record, keys["label"]), record.where)

    return each(records, sample, problems)


class ImageBatches:
    """Collates image samples with the model's image processor (a `collate(samples, training)`)."""

    def __init__(self, processor: Any, augment: bool) -> None:
        self.processor = processor
        self.augment = _augmentation() if augment else None

    def __call__(self, samples: list[ImageSample], training: bool) -> dict[str, torch.Tensor]:
        images = [decode(s.image, s.where) for s in samples]
        if training and self.augment is not None:
            images = [self.augment(image) for image in images]
        batch = self.processor(images=images, return_tensors="pt")
        return {"pixel_values": batch["pixel_values"],
                "labels": torch.tensor([s.label for s in samples], dtype=torch.long)}


def _augmentation() -> Callable[[Image.Image], Image.Image]:
    """A random crop of 60-100% of the image (aspect 3:4 to 4:3) resized back to its size, then a
    horizontal flip half the time (torchvision's, drawing on torch's RNG, which checkpoints keep)."""
    from torchvision.transforms import v2

    flip = v2.RandomHorizontalFlip()

    def augment(image: Image.Image) -> Image.Image:
        crop = v2.RandomResizedCrop(size=(image.height, image.width), scale=(0.6, 1.0), antialias=True)
        return flip(crop(image))

    return augment
