"""Robust image decoding: any image file -> uint8 RGB [3, H, W], or one clear error.

Real datasets hold files that break a naive ``decode_image(read_file(path))``: missing or
renamed files, text saved as ``.jpg``, truncated downloads, phone photos whose EXIF says
"rotate 90 degrees", 16-bit PNGs, CMYK JPEGs, palette GIFs, BMP/TIFF, and images big enough
to exhaust memory. This module handles each of them in one place.

How a file is decoded:

1. PIL opens it lazily (header only) to learn its format, mode, size and EXIF orientation.
   A missing file or an unidentifiable one stops here, and so does an image with more than
   ``max_pixels`` pixels (before any pixel is decoded).
2. JPEG, WebP and GIF go to ``torchvision.io.decode_image`` (libjpeg-turbo, faster than PIL
   on JPEG: docs/performance.md); it applies EXIF orientation for JPEG, and an animated GIF
   gives its first frame.
3. Everything else goes to PIL: ``ImageOps.exif_transpose`` then ``convert("RGB")`` (alpha
   dropped, palette and CMYK mapped to RGB), 16-bit grey scaled to 8 bit, not clipped. So
   does any file torchvision fails on or returns a different shape for than the header says.

PNG deliberately takes the PIL path: torchvision 0.29's ``decode_png`` crashes the process
(SIGSEGV, which kills a DataLoader worker) on any PNG whose pixel data makes libpng raise: one
flipped byte (a chunk CRC error) or a missing IDAT chunk. PIL raises on those instead, at a
small cost in speed (docs/performance.md). Known gap: a PNG whose zlib stream is complete but holds
fewer rows than the header says (a buggy writer) is zero-filled by PIL without an error.

Every decoder failure becomes an :class:`ImageDecodeError`, a one-sentence ``ValueError``
that names the file (and the caller's ``context``, e.g. the image id) and says what to do.

A path read from an annotation file goes through :func:`image_path` (or
:func:`ensure_inside`), which keeps reads inside the images folder after following symlinks.

Two PIL globals are pinned while this module uses PIL, under a lock so threads never see a
half-restored value: ``ImageFile.LOAD_TRUNCATED_IMAGES`` is forced to False (a truncated file
must be an error, never a silently grey-filled image, even if other code turned it on), and
``Image.MAX_IMAGE_PIXELS`` is lifted, because ``max_pixels`` checked on the header is the one
size rule; PIL's own decompression-bomb warning (89 Mpx) and error (179 Mpx) would otherwise
apply their own fixed limit. The lock is held for the whole PIL decode, so PIL decodes in one
process's threads run one at a time; DataLoader workers are processes and are not affected.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2.functional import to_dtype

DEFAULT_MAX_PIXELS = 64_000_000
"""Largest image (height * width) ``load_rgb`` decodes by default (data.max_image_pixels)."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
"""File suffixes read as images where a folder is listed (``predict``'s folder, the folder
sources of ``data.sources``)."""

ORIENTATION_TAG = 0x0112
TORCHVISION_FORMATS = frozenset({"JPEG", "WEBP", "GIF"})  # not PNG: see the module docstring
TORCHVISION_EXIF_FORMATS = frozenset({"JPEG"})  # decode_image ignores WebP's EXIF
PIL_ONLY_MODES = frozenset({"CMYK"})  # PIL's CMYK/Adobe handling is the reference
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
TRANSPOSED_ORIENTATIONS = frozenset({5, 6, 7, 8})  # 90/270-degree rotations swap H and W
_REASON_CHARS = 160

_PIL_GLOBALS_LOCK = threading.Lock()


class ImageDecodeError(ValueError):
    """An image file cannot be turned into pixels; the message names the file and the fix."""


@dataclass(frozen=True)
class _Header:
    """What PIL's lazy open tells about a file without decoding pixels."""

    format: str
    mode: str
    height: int  # as decoded: EXIF orientation applied
    width: int
    orientation: int
    has_exif: bool

    @property
    def pixels(self) -> int:
        return self.height * self.width


def _where(path: str | Path, context: str) -> str:
    """'image /data/a.jpg (image id 12)': how every message names the file."""
    return f"image {path}" + (f" ({context})" if context else "")


def _reason(error: BaseException) -> str:
    """The decoder's own words, cut to one short line."""
    lines = str(error).strip().splitlines()
    text = lines[-1].strip() if lines else ""
    text = text.rstrip(".") or type(error).__name__
    return text[:_REASON_CHARS]


def _corrupt(where: str, error: BaseException) -> ImageDecodeError:
    return ImageDecodeError(
        f"The {where} could not be decoded ({_reason(error)}); the file is truncated or "
        "corrupt, so replace it with a good copy or remove its entry from the annotations."
    )


@contextmanager
def _pil_guarded() -> Iterator[None]:
    """Pin PIL's truncation and bomb-limit globals (see the module docstring for why)."""
    with _PIL_GLOBALS_LOCK:
        saved_pixels, saved_truncated = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
        Image.MAX_IMAGE_PIXELS = None
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved_pixels
            ImageFile.LOAD_TRUNCATED_IMAGES = saved_truncated


@contextmanager
def _opened(path: str | Path, where: str) -> Iterator[Image.Image]:
    """PIL image opened lazily under :func:`_pil_guarded`; missing/unknown files -> error."""
    if not Path(path).is_file():
        raise ImageDecodeError(
            f"The {where} does not exist; fix the path (file_name / image root) or remove "
            "its entry from the annotations."
        )
    with _pil_guarded():
        try:
            image = Image.open(path)
        except UnidentifiedImageError as error:
            raise ImageDecodeError(
                f"The {where} is not an image PIL can identify (wrong extension, an HTML "
                "error page, or a truncated or corrupt file); replace the file or remove its "
                "entry from the annotations."
            ) from error
        except Exception as error:
            raise _corrupt(where, error) from error
        with image:
            yield image


def _orientation(image: Image.Image) -> int:
    """EXIF orientation (1..8) read from the header; 1 when absent or unreadable.

    ``Image.Image.getexif`` is called on the base class on purpose: the PNG plugin's
    override decodes all pixels when the header holds no EXIF.
    """
    try:
        value = Image.Image.getexif(image).get(ORIENTATION_TAG, 1)
        return int(value) if int(value) in range(1, 9) else 1
    except Exception:
        return 1


def _header(image: Image.Image) -> _Header:
    width, height = image.size
    orientation = _orientation(image)
    if orientation in TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    return _Header(
        format=str(image.format or ""), mode=image.mode, height=height, width=width,
        orientation=orientation, has_exif="exif" in image.info,
    )


def _check_pixels(header: _Header, max_pixels: int, where: str) -> None:
    if header.pixels > max_pixels:
        raise ImageDecodeError(
            f"The {where} is {header.height}x{header.width} = {header.pixels} pixels, above "
            f"the limit of {max_pixels}; raise data.max_image_pixels if it is genuine, or "
            "downscale the file."
        )


def _uses_torchvision(header: _Header) -> bool:
    """Whether decode_image gives the same pixels as the PIL path for this header."""
    if header.format not in TORCHVISION_FORMATS or header.mode in PIL_ONLY_MODES:
        return False
    return header.orientation == 1 or (
        header.format in TORCHVISION_EXIF_FORMATS and header.has_exif
    )


def _decode_torchvision(path: str | Path, header: _Header) -> torch.Tensor | None:
    """decode_image result, or None when it fails or disagrees with the header (-> PIL)."""
    try:
        image = decode_image(
            read_file(str(path)), mode=ImageReadMode.RGB, apply_exif_orientation=True
        )
    except Exception:
        return None
    if image.ndim == 4:  # animated GIF: all frames
        image = image[0]
    if tuple(image.shape) != (3, header.height, header.width) or image.dtype != torch.uint8:
        return None
    return image


def _sixteen_bit_grey(image: Image.Image, where: str) -> torch.Tensor:
    """'I;16*' or 'I' (integer grey) -> uint8 RGB, scaling 0..65535 to 0..255 (65535 -> 255).

    PIL's own ``convert("L")`` clips instead (256 -> 255), which would wreck 16-bit images.
    """
    values = np.asarray(image)
    if values.size and (values.min() < 0 or values.max() > np.iinfo(np.uint16).max):
        raise ImageDecodeError(
            f"The {where} holds 32-bit integer pixels outside 0..65535 that have no 8-bit RGB "
            "meaning; convert the file to 8- or 16-bit RGB or remove its entry."
        )
    grey = to_dtype(torch.from_numpy(values.astype(np.uint16)), torch.uint8, scale=True)
    return grey.unsqueeze(0).expand(3, -1, -1).contiguous()


def _decode_pil(image: Image.Image, where: str) -> torch.Tensor:
    """Full PIL decode of an opened image (call inside :func:`_opened`)."""
    try:
        image.seek(0)  # first frame of animated GIF/WebP/TIFF
        upright = ImageOps.exif_transpose(image)
        if upright.mode not in SIXTEEN_BIT_MODES | {"I", "F"}:
            return torch.from_numpy(np.array(upright.convert("RGB"))).permute(2, 0, 1).contiguous()
    except Exception as error:
        raise _corrupt(where, error) from error
    if upright.mode == "F":
        raise ImageDecodeError(
            f"The {where} holds floating-point pixels that have no 8-bit RGB meaning; convert "
            "the file to 8- or 16-bit RGB or remove its entry."
        )
    return _sixteen_bit_grey(upright, where)


class ImageOutsideFolderError(ImageDecodeError):
    """An annotation file names an image outside its images folder (and that is not allowed)."""


def image_path(root: str | Path, file_name: str, allow_outside: bool = False) -> Path:
    """``root / file_name``, refused when it resolves outside ``root``.

    An annotation file is data, not a list of files the process may read: an absolute
    ``file_name``, a ``../`` one, or a symlink inside the folder pointing elsewhere could
    make training (and the overlays it writes) read any file the user can. The path is
    resolved with its symlinks and must stay inside the resolved ``root``, unless
    ``allow_outside`` (``data.allow_outside_images``) says the user means it.

    Raises:
        ImageOutsideFolderError: the path leaves ``root`` and ``allow_outside`` is off.
    """
    path = Path(root) / file_name
    if not allow_outside:
        ensure_inside(root, path)
    return path


def ensure_inside(root: str | Path, path: str | Path) -> None:
    """Raise ``ImageOutsideFolderError`` unless ``path`` resolves (symlinks followed) inside
    the resolved ``root`` (see :func:`image_path`)."""
    resolved, folder = Path(path).resolve(), Path(root).resolve()
    if not resolved.is_relative_to(folder):
        raise ImageOutsideFolderError(
            f"The image '{path}' resolves to '{resolved}', outside the images folder "
            f"'{folder}'; move the file into that folder, or set allow_outside_images true "
            "(data.allow_outside_images) if reading it there is intended."
        )


def read_image_size(path: str | Path, context: str = "") -> tuple[int, int]:
    """(height, width) as :func:`load_rgb` will return it, from the header only.

    EXIF orientation is applied, so a 90/270-degree rotation swaps the stored dims. No pixel
    is decoded and no size limit is applied (use it to check sizes cheaply).
    """
    where = _where(path, context)
    with _opened(path, where) as image:
        header = _header(image)
    return header.height, header.width


def looks_like_image(path: str | Path) -> bool:
    """True when the file exists and PIL recognises an image header (no pixels decoded).

    A fast data check: it does not prove the pixel data is complete (use ``load_rgb``).
    """
    try:
        read_image_size(path)
    except ImageDecodeError:
        return False
    return True


def load_rgb(
    path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, context: str = ""
) -> torch.Tensor:
    """Decode any image file to a uint8 RGB tensor [3, H, W], upright as viewers show it.

    Args:
        path: the image file.
        max_pixels: refuse images with more than this many pixels (checked on the header,
            before decoding); the config option is ``data.max_image_pixels``.
        context: added to error messages to locate the file, e.g. ``"image id 12"``.

    Raises:
        ImageDecodeError: missing, unidentifiable, truncated/corrupt or too large files.
    """
    where = _where(path, context)
    with _opened(path, where) as image:
        header = _header(image)
        _check_pixels(header, max_pixels, where)
        if not _uses_torchvision(header):
            return _decode_pil(image, where)
    decoded = _decode_torchvision(path, header)
    if decoded is not None:
        return decoded
    with _opened(path, where) as image:
        return _decode_pil(image, where)
