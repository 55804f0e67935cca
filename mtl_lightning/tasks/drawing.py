"""Shared drawing and mapping helpers of the tasks: readable pictures at any image size.

- :func:`dense_to_size` maps a per-pixel prediction from the model input back to an image:
  the top-left ``from_size`` region (the rest is letterbox padding) resized, nearest
  neighbour, to ``to_size``.
- :func:`non_overlapping_labels` keeps a box's text only where it does not cover the text of
  a better box, so 20 boxes on one object leave one readable label, not a black smear.
- :func:`draw_text_lines` writes lines of text in the top-left corner, on a dark band.

Text uses PIL's default font (the one torchvision's ``draw_bounding_boxes`` uses).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from PIL import ImageDraw, ImageFont
from torchvision.transforms.v2.functional import pil_to_tensor, to_pil_image

#: Pixels between a box's corner and its label (torchvision's margin).
LABEL_MARGIN = 1


@lru_cache(maxsize=1)
def label_font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def text_size(text: str) -> tuple[int, int]:
    """(width, height) in pixels of ``text`` in the label font."""
    left, top, right, bottom = label_font().getbbox(text)
    return int(right - left) + 2 * LABEL_MARGIN, int(bottom - top) + 2 * LABEL_MARGIN + 2


def dense_to_size(
    prediction: torch.Tensor, from_size: tuple[int, int], to_size: tuple[int, int]
) -> torch.Tensor:
    """The top-left ``from_size`` part of a [..., H, W] map, resized (nearest, pixel
    centres aligned) to ``to_size``; dtype kept."""
    cropped = prediction[..., : from_size[0], : from_size[1]]
    if tuple(cropped.shape[-2:]) == tuple(to_size):
        return cropped
    lead = cropped.shape[:-2]
    flat = cropped.reshape(1, -1, *cropped.shape[-2:]).float()
    resized = F.interpolate(flat, size=tuple(to_size), mode="nearest-exact")
    return resized.reshape(*lead, *to_size).to(prediction.dtype)


def non_overlapping_labels(boxes: torch.Tensor, texts: list[str]) -> list[str | None]:
    """``texts`` with ``None`` where a label would overlap an earlier one (callers pass boxes
    best first). Labels sit at each box's top-left corner, as ``draw_bounding_boxes`` puts
    them."""
    placed: list[tuple[float, float, float, float]] = []
    kept: list[str | None] = []
    for box, text in zip(boxes.tolist(), texts):
        width, height = text_size(text)
        rect = (box[0], box[1], box[0] + width, box[1] + height)
        if any(rect[0] < r[2] and r[0] < rect[2] and rect[1] < r[3] and r[1] < rect[3]
               for r in placed):
            kept.append(None)
            continue
        placed.append(rect)
        kept.append(text)
    return kept


def draw_text_lines(image: torch.Tensor, lines: list[str],
                    color: tuple[int, int, int] = (255, 255, 255)) -> torch.Tensor:
    """``lines`` written top-left on a dark band, one under the other (uint8 [3, H, W])."""
    if not lines:
        return image
    picture = to_pil_image(image)
    draw = ImageDraw.Draw(picture)
    y = 0
    for line in lines:
        width, height = text_size(line)
        draw.rectangle((0, y, width, y + height), fill=(0, 0, 0))
        draw.text((LABEL_MARGIN, y + LABEL_MARGIN), line, fill=color, font=label_font())
        y += height
    return pil_to_tensor(picture)
