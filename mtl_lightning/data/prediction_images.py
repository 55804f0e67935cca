"""The folder of images ``predict`` reads: every image file, no labels, original size kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from mtl_lightning.data.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, ImageDecodeError, load_rgb


class ImageFolderForPrediction(Dataset):
    """Every image file of a folder (sorted), for ``predict``: no labels, original size kept.

    Each sample's ``meta["name"]`` is the file's name with its extension (``a.jpg`` and
    ``a.png`` are two names), the key of everything ``predict`` writes for it. A file that
    cannot be read (corrupt, truncated, above ``max_pixels``) does not stop the others: its
    sample is a black placeholder whose ``meta["error"]`` holds the one-sentence reason, and
    ``predict`` lists it instead of predicting.
    """

    def __init__(
        self, folder: str | Path, transforms: Any, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> None:
        self.folder = Path(folder)
        self.max_pixels = max_pixels
        if not self.folder.is_dir():
            raise FileNotFoundError(
                f"data.predict_images='{folder}' is not a folder; give a folder of images."
            )
        self.paths = sorted(
            p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not self.paths:
            raise FileNotFoundError(
                f"No images ({', '.join(IMAGE_SUFFIXES)}) in data.predict_images='{folder}'."
            )
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.paths[index]
        meta: dict[str, Any] = {"path": str(path), "name": path.name}
        try:
            image = load_rgb(path, self.max_pixels, context="data.predict_images")
        except ImageDecodeError as error:
            image = torch.zeros(3, 1, 1, dtype=torch.uint8)
            meta["error"] = str(error).split("; ")[0] + "."  # the fix is not in annotations
        meta["orig_size"] = tuple(image.shape[-2:])
        sample = {"image": tv_tensors.Image(image), "targets": {}, "has": {}, "meta": meta}
        return self.transforms(sample)



__all__ = ["ImageFolderForPrediction"]
