"""W&B image media of one picture (``wandb.Image(masks=..., boxes=...)``) in plain data.

W&B takes masks as ``{"mask_data": uint8 [H, W], "class_labels": {id: name}}`` and boxes as
``{"box_data": [{"position", "class_id", ...}], "class_labels": ...}``; the tasks that have
masks or boxes build them with these helpers (no import of ``wandb`` here).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

#: W&B mask value of pixels that are no class.
WANDB_IGNORE = 255


def class_labels(names: list[str]) -> dict[int, str]:
    return dict(enumerate(names))


def wandb_mask(mask: torch.Tensor, num_classes: int) -> np.ndarray:
    """A mask for W&B: every value that is no class (ignore, void) becomes ``WANDB_IGNORE``."""
    mask = mask.long()
    known = (mask >= 0) & (mask < num_classes)
    return torch.where(known, mask, WANDB_IGNORE).to(torch.uint8).numpy()


def box_data(boxes: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor,
             names: list[str]) -> list[dict[str, Any]]:
    """W&B ``box_data`` entries of absolute ``xyxy`` pixel boxes with their scores."""
    return [
        {"position": {"minX": float(b[0]), "minY": float(b[1]), "maxX": float(b[2]),
                      "maxY": float(b[3])},
         "domain": "pixel", "class_id": int(c), "scores": {"score": float(s)},
         "box_caption": f"{names[int(c)]} {float(s):.2f}"}
        for b, c, s in zip(boxes.tolist(), labels.tolist(), scores.tolist())
    ]
