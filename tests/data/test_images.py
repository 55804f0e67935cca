"""Robust image decoding: every awkward file gives right pixels or one clear ImageDecodeError."""

from __future__ import annotations

import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile, ImageOps

from mtl_lightning.data import images
from mtl_lightning.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    ImageOutsideFolderError,
    image_path,
    load_rgb,
    looks_like_image,
    read_image_size,
)

HEIGHT, WIDTH = 24, 40
REPO = Path(__file__).resolve().parents[2]


def _rgb() -> np.ndarray:
    """A non-symmetric colour pattern [H, W, 3] (so rotations and channel swaps show)."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    return np.stack([x * 6, y * 10, (x + 2 * y) * 3], axis=-1).astype(np.uint8)


def _chw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array)).permute(2, 0, 1)


def _reference(path: Path) -> torch.Tensor:
    """What a viewer shows: PIL with EXIF orientation applied, as RGB."""
    with Image.open(path) as image:
        return _chw(np.asarray(ImageOps.exif_transpose(image).convert("RGB")))


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def _png_header_only(path: Path, height: int, width: int) -> Path:
    """A PNG whose IHDR claims height x width but whose pixel data is one empty row."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (1 + 3 * width))
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def _truncated(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# ---------------------------------------------------------------- formats


@pytest.mark.parametrize("suffix", ["png", "webp", "bmp", "tiff"])
def test_lossless_formats_round_trip_exactly(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"a.{suffix}"
    Image.fromarray(_rgb()).save(path, **({"lossless": True} if suffix == "webp" else {}))
    image = load_rgb(path)
    assert image.dtype == torch.uint8
    assert torch.equal(image, _chw(_rgb()))


def test_jpeg_matches_pil_and_the_source(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    Image.fromarray(_rgb()).save(path, quality=95)
    image = load_rgb(path)
    assert (image.int() - _reference(path).int()).abs().max() <= 1
    assert (image.float() - _chw(_rgb()).float()).abs().mean() < 4


@pytest.mark.parametrize("forbid_pil", [True, False])
def test_gif_gives_the_first_frame(
    tmp_path: Path, forbid_pil: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (WIDTH, HEIGHT), colour) for colour in [(255, 0, 0), (0, 0, 255)]]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    if forbid_pil:
        _forbid_pil(monkeypatch)
    else:
        monkeypatch.setattr(images, "TORCHVISION_FORMATS", frozenset())
    image = load_rgb(path)
    assert image.shape == (3, HEIGHT, WIDTH)
    assert image[:, 0, 0].tolist() == [255, 0, 0]


def _forbid_pil(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pil(*args: object) -> None:
        raise AssertionError("PIL decoded a file torchvision handles")

    monkeypatch.setattr(images, "_decode_pil", no_pil)


@pytest.mark.parametrize("suffix", ["jpg", "webp", "gif"])
def test_common_formats_take_the_torchvision_fast_path(
    tmp_path: Path, suffix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / f"fast.{suffix}"
    Image.fromarray(_rgb()).save(path)
    _forbid_pil(monkeypatch)
    assert load_rgb(path).shape == (3, HEIGHT, WIDTH)


def test_png_never_reaches_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(_rgb()).save(path)

    def no_torchvision(*args: object, **kwargs: object) -> None:
        raise AssertionError("decode_png segfaults on corrupt PNGs; PNG must go to PIL")

    monkeypatch.setattr(images, "decode_image", no_torchvision)
    assert torch.equal(load_rgb(path), _chw(_rgb()))


_DECODE_IN_CHILD = """
import sys
from mtl_lightning.data.images import ImageDecodeError, load_rgb
for path in sys.argv[1:]:
    try:
        print(int(load_rgb(path).sum()))
    except ImageDecodeError:
        print("refused")
"""


def test_corrupt_png_chunks_never_crash_the_process(tmp_path: Path) -> None:
    source = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    good = tmp_path / "good.png"
    Image.fromarray(source).save(good)
    data = good.read_bytes()
    offsets, position = [], 8  # (start, end) of each chunk
    while position < len(data):
        length = struct.unpack(">I", data[position : position + 4])[0]
        offsets.append((position, position + 12 + length, data[position + 4 : position + 8]))
        position += 12 + length
    idats = [(start, end) for start, end, kind in offsets if kind == b"IDAT"]
    assert len(idats) > 1
    bad_crc = bytearray(data)
    bad_crc[idats[0][1] - 1] ^= 0xFF  # libpng: "IDAT: CRC error" -> torchvision SIGSEGV
    (tmp_path / "bad_crc.png").write_bytes(bytes(bad_crc))
    start, end = idats[-1]  # libpng: "Not enough image data" -> torchvision SIGSEGV
    (tmp_path / "lost_idat.png").write_bytes(data[:start] + data[end:])
    child = subprocess.run(
        [sys.executable, "-c", _DECODE_IN_CHILD, str(tmp_path / "bad_crc.png"),
         str(tmp_path / "lost_idat.png")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert child.returncode == 0, child.stderr[-500:]
    assert child.stdout.split() == [str(int(source.sum())), "refused"]  # pixels intact


# ---------------------------------------------------------------- colour modes


@pytest.mark.parametrize("suffix", ["png", "tiff", "webp"])  # webp: the torchvision path
@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "1"])
def test_modes_become_rgb_with_the_right_colours(tmp_path: Path, mode: str, suffix: str) -> None:
    source = Image.fromarray(_rgb()).convert(mode)
    path = tmp_path / f"{mode}.{suffix}"
    source.save(path, **({"lossless": True} if suffix == "webp" else {}))
    expected = _chw(np.asarray(source.convert("RGB")))  # alpha dropped, palette looked up
    assert torch.equal(load_rgb(path), expected)


@pytest.mark.parametrize("suffix", ["png", "gif"])
def test_palette_with_transparency_keeps_palette_colours(tmp_path: Path, suffix: str) -> None:
    source = Image.fromarray(_rgb()).convert("P")
    path = tmp_path / f"p.{suffix}"
    source.save(path, transparency=0)
    with Image.open(path) as saved:
        assert "transparency" in saved.info
    assert torch.equal(load_rgb(path), _chw(np.asarray(source.convert("RGB"))))


def test_cmyk_jpeg_is_not_inverted(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(_rgb()).convert("CMYK").save(path, quality=95)
    image = load_rgb(path)
    assert image.shape == (3, HEIGHT, WIDTH)
    assert torch.equal(image, _reference(path))
    assert (image.float() - _chw(_rgb()).float()).abs().mean() < 4  # inverted would be ~128


@pytest.mark.parametrize("suffix", ["png", "tiff"])
def test_16_bit_grey_is_scaled_not_clipped(tmp_path: Path, suffix: str) -> None:
    values = np.array([[0, 256, 32768, 65280, 65535, 1000]], dtype=np.uint16)
    path = tmp_path / f"deep.{suffix}"
    Image.fromarray(values).save(path)
    with Image.open(path) as saved:
        assert saved.mode.startswith("I")
    image = load_rgb(path)
    assert image.dtype == torch.uint8 and image.shape == (3, 1, 6)
    assert image[0].tolist() == [[0, 1, 128, 255, 255, 3]]
    assert torch.equal(image[0], image[2])


# ---------------------------------------------------------------- EXIF orientation


@pytest.mark.parametrize("suffix", ["jpg", "png", "webp"])
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, suffix: str) -> None:
    path = tmp_path / f"o{orientation}.{suffix}"
    extra = {"lossless": True} if suffix == "webp" else {"quality": 95} if suffix == "jpg" else {}
    Image.fromarray(_rgb()).save(path, exif=_exif(orientation), **extra)
    image = load_rgb(path)
    assert (image.int() - _reference(path).int()).abs().max() <= 1
    rotated = orientation in (6, 8)
    assert image.shape[1:] == ((WIDTH, HEIGHT) if rotated else (HEIGHT, WIDTH))
    assert read_image_size(path) == tuple(image.shape[1:])


# ---------------------------------------------------------------- broken files


def test_missing_file_names_path_context_and_fix(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.jpg"
    with pytest.raises(ImageDecodeError) as caught:
        load_rgb(path, context="image id 12")
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert str(path) in message and "image id 12" in message and "fix the path" in message
    assert "\n" not in message
    assert not looks_like_image(path)


def test_text_file_named_jpg_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.jpg"
    path.write_text("<html>404 not found</html>")
    with pytest.raises(ImageDecodeError, match="not an image"):
        load_rgb(path, context="image id 3")
    assert not looks_like_image(path)


def test_random_bytes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "noise.png"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ImageDecodeError, match=str(path.name)):
        load_rgb(path)


@pytest.mark.parametrize("suffix", ["jpg", "png", "webp", "tiff"])
def test_truncated_files_raise_instead_of_grey_fill(
    tmp_path: Path, suffix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / f"cut.{suffix}"
    Image.fromarray(_rgb()).resize((400, 300)).save(path)
    _truncated(path)
    if suffix != "webp":  # PIL reads all of a WebP on open; the others keep their header
        assert looks_like_image(path)
    with pytest.raises(ImageDecodeError, match="truncated or corrupt") as caught:
        load_rgb(path, context="image id 7")
    assert path.name in str(caught.value) and "image id 7" in str(caught.value)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # someone else's setting
    with pytest.raises(ImageDecodeError):
        load_rgb(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored, not clobbered


# ---------------------------------------------------------------- size limit


def test_too_many_pixels_is_refused_before_decoding(tmp_path: Path) -> None:
    path = _png_header_only(tmp_path / "huge.png", 9000, 8000)  # no pixel data at all
    with pytest.raises(ImageDecodeError) as caught:
        load_rgb(path, context="image id 5")
    message = str(caught.value)  # a decode attempt would have said "truncated or corrupt"
    assert "9000x8000" in message and str(DEFAULT_MAX_PIXELS) in message
    assert "raise data.max_image_pixels" in message and "image id 5" in message


def test_max_pixels_is_configurable(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(_rgb()).save(path)
    with pytest.raises(ImageDecodeError, match="above the limit of 100"):
        load_rgb(path, max_pixels=100)
    assert load_rgb(path, max_pixels=HEIGHT * WIDTH).shape == (3, HEIGHT, WIDTH)


def test_pil_bomb_limit_does_not_override_max_pixels(tmp_path: Path) -> None:
    # 100 Mpx sits above PIL's warning limit, 400 Mpx above its error limit.
    saved_limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn = _png_header_only(tmp_path / "warn.png", 10_000, 10_000)
        bomb = _png_header_only(tmp_path / "bomb.png", 20_000, 20_000)
        assert read_image_size(warn) == (10_000, 10_000)
        assert read_image_size(bomb) == (20_000, 20_000)
        assert looks_like_image(bomb)
        with pytest.raises(ImageDecodeError, match=r"raise data\.max_image_pixels"):
            load_rgb(bomb)
    assert saved_limit == Image.MAX_IMAGE_PIXELS


def test_image_path_stays_inside_the_folder(tmp_path: Path) -> None:
    folder, outside = tmp_path / "images", tmp_path / "secret.png"
    (folder / "sub").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(outside)
    Image.new("RGB", (4, 4)).save(folder / "sub" / "a.png")
    (folder / "link.png").symlink_to(outside)
    (folder / "inner.png").symlink_to(folder / "sub" / "a.png")
    assert image_path(folder, "sub/../sub/a.png") == folder / "sub/../sub/a.png"
    assert image_path(folder, "inner.png") == folder / "inner.png"  # a link that stays inside
    for name in (str(outside), "../secret.png", "link.png"):
        with pytest.raises(ImageOutsideFolderError,
                           match=r"resolves to .*secret.png', outside the images folder"):
            image_path(folder, name)
        assert image_path(folder, name, allow_outside=True).resolve() == outside.resolve()
