"""Image loading: files, PIL images, arrays and tensors as float RGB (the resize that follows
is :mod:`scot.resize`).

:func:`load_image` turns a path, PIL image, array or tensor into a float RGB tensor in
[0, 1], handling the formats users actually have (EXIF rotation, grayscale, palette,
alpha, 16-bit) and rejecting unreadable, non-regular, too-small or absurdly large files
with a one-line error.

Pixel values are mapped to [0, 1] as :mod:`scot.pixels` describes (8-bit by 255, 16-bit by
65535, float and 32-bit integer pixels by the smallest range that holds them), which also
converts arrays and tensors.

Large images: the pipeline shrinks every image to ``image_side`` (300 px) on its longest
side, so decoding a 108-megapixel photo at full size wastes gigabytes.  With ``max_side``
:func:`load_image` decodes such an image already reduced by an integer factor (JPEG DCT
scaling through ``Image.draft``, then a box-filter ``Image.reduce``), never below
``max_side`` on the long side, and only when the image is at least ``REDUCE_FROM`` times
larger than that; smaller images load exactly as without ``max_side``.  Results on a
reduced image come from the pre-reduced decode, which differs slightly from resizing the
full-size decode.  :attr:`LoadedImage.size` is always the original size and
:attr:`LoadedImage.scale` relates the two.  Pictures need a bound on size rather than on
resolution: :func:`load_picture` decodes any image larger than the picture reduced to at
most that side.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, UnidentifiedImageError

from .errors import ScotError
from .io import open_regular_file
from .pixels import INTEGER_RANGES, array_to_tensor, tensor_to_rgb, value_divisor
from .resize import resize_longest_side

MIN_SIDE = 32
MAX_PIXELS = 1_000_000_000  # declared size refused before decoding, whatever Pillow allows
REDUCE_FROM = 4  # pre-reduce only images whose long side is at least this many times max_side
ImageLike = str | Path | Image.Image | np.ndarray | torch.Tensor

_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = (5, 6, 7, 8)
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


@dataclass
class LoadedImage:
    """An RGB image as a float tensor, where it came from, and its original size.

    Attributes:
        tensor: float32 (3, h, w) in [0, 1], the image as decoded: the original pixels,
            or the image reduced at decode time when :func:`load_image` was given
            ``max_side`` (then ``(w, h)`` is ``ceil((W, H) * scale)``).
        name: how errors and outputs name the image (its path for files).
        size: (W, H), the original image's width and height in pixels (after EXIF
            orientation); coordinates in results refer to this frame.
        scale: decoded pixels per original pixel, 1.0 or ``1 / r`` for a reduction by the
            integer ``r``; a point (x, y) of the original is at (x, y) * scale in
            ``tensor``.
    """

    tensor: torch.Tensor
    name: str
    size: tuple[int, int]
    scale: float = 1.0

    @property
    def decoded_size(self) -> tuple[int, int]:
        """(w, h) of :attr:`tensor` in pixels."""
        return int(self.tensor.shape[2]), int(self.tensor.shape[1])

    def resized(self, side: int = 300) -> tuple[torch.Tensor, float]:
        """The pipeline's input: :attr:`tensor` resized to ``side`` on its longest side.

        Args:
            side: the longest side of the result, in pixels.

        Returns:
            (image, ratio): the (3, h', w') float tensor, and the factor from *original*
            pixel coordinates to the resized image's, ``resize_ratio(w, h, side) * scale``
            (the reference ratio itself when nothing was reduced).
        """
        image, ratio = resize_longest_side(self.tensor, side)
        return image, ratio * self.scale


def picture_factor(width: int, height: int, side: int) -> int:
    """The integer factor by which :func:`load_picture` shrinks an image: the smallest that
    brings its long side to at most ``side``, ``ceil(long / side)`` (1 when it fits)."""
    return max(1, -(-max(width, height) // side))


def reduction_factor(width: int, height: int, max_side: int | None) -> int:
    """The integer factor by which :func:`load_image` shrinks an image at decode time.

    Args:
        width, height: the image's size in pixels.
        max_side: the long side the caller needs at least (None: full size).

    Returns:
        1 unless ``max_side`` is given and the long side is at least
        ``REDUCE_FROM * max_side``; then the largest ``r`` with ``long / r >= max_side``,
        i.e. ``long // max_side``.
    """
    longest = max(width, height)
    if max_side is None or longest < REDUCE_FROM * max_side:
        return 1
    return longest // max_side


def _check_max_side(max_side: int | None) -> None:
    if max_side is None:
        return
    if isinstance(max_side, bool) or not isinstance(max_side, (int, np.integer)) or max_side < 1:
        raise ScotError(f"must be a whole number of pixels >= 1 or None, got {max_side!r}", option="max_side")


def _open(fh, label: str) -> Image.Image:
    """Identify the image in the open file ``fh`` and check its declared size (header only)."""
    try:
        with warnings.catch_warnings():
            # Pillow warns from 89 MP on; the declared size is checked below instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fh)
    except UnidentifiedImageError:
        raise ScotError(f"{label}: not an image file that can be read (unknown or unsupported format)") from None
    except Image.DecompressionBombError as exc:
        raise ScotError(f"{label}: image is too large to decode safely ({exc})") from None
    except Exception as exc:
        raise ScotError(f"{label}: image is truncated or corrupt ({type(exc).__name__}: {exc})") from None
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise ScotError(f"{label}: image declares {w}x{h} px ({w * h / 1e6:.0f} megapixels), more than the "
                        f"{MAX_PIXELS / 1e6:.0f}-megapixel limit; it is too large to decode safely")
    return img


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1..8) of a loaded image; 1 when absent or malformed."""
    try:
        value = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # malformed EXIF: keep the stored orientation
        return 1
    return value if isinstance(value, int) and value in _TRANSPOSE else 1




def _canonical(img: Image.Image, label: str) -> tuple[Image.Image, float]:
    """The image in a mode that ``reduce`` and the float conversion handle, and its divisor.

    Args:
        img: the loaded, upright PIL image.
        label: how errors name the image.

    Returns:
        (image, divisor): an ``RGB`` image (divisor 255), or one high-depth gray channel
        in mode ``I`` or ``F`` with the value that maps it to [0, 1] (see
        :func:`value_divisor`; its values are checked here, at full resolution).  Alpha
        is composited over white (transparent pixels carry arbitrary colour values).
    """
    mode = img.mode
    if mode.startswith("I;16"):
        return img.convert("I"), 65535.0
    if mode == "F":
        return img, value_divisor(np.asarray(img), label)
    if mode == "I":  # 32-bit integers: 16-bit PNGs load like this in some Pillow versions
        return img, value_divisor(np.asarray(img), label, INTEGER_RANGES)
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB"), 255.0
    if mode != "RGB":
        return img.convert("RGB"), 255.0
    return img, 255.0


def _reduce(img: Image.Image, factor: int, already: int, at_least: bool = False) -> tuple[Image.Image, int]:
    """Shrink a canonical image (see :func:`_canonical`) decoded ``already`` times smaller.

    Args:
        img: the loaded, upright PIL image in mode RGB, I or F.
        factor: the total reduction wanted (from :func:`reduction_factor` or :func:`picture_factor`).
        already: the reduction the decoder applied (JPEG draft), counted against ``factor``.
        at_least: reduce by at least ``factor`` in total (a size bound, for pictures)
            rather than at most (a resolution bound, for the pipeline).

    Returns:
        (image, total reduction now applied to it).
    """
    extra = -(-factor // already) if at_least else factor // already
    if extra < 2:
        return img, already
    return img.reduce(extra), already * extra


def _pixels(img: Image.Image) -> np.ndarray:
    """The raw values of a canonical image: uint8 (3, H, W) for RGB, float64 (1, H, W) for I or F."""
    if img.mode == "RGB":
        return np.ascontiguousarray(np.asarray(img).transpose(2, 0, 1))
    return np.asarray(img, dtype=np.float64)[None]


def _unit_float(pixels: np.ndarray, divisor: float) -> torch.Tensor:
    """(3, H, W) float32 in [0, 1] from :func:`_pixels` values and their divisor."""
    if pixels.dtype == np.uint8:
        return torch.from_numpy(pixels).float().div_(divisor)
    gray = np.clip(pixels[0] / divisor, 0.0, 1.0).astype(np.float32)
    return torch.from_numpy(gray).unsqueeze(0).expand(3, -1, -1).contiguous()


def _decode(img: Image.Image, factor: int, label: str) -> tuple[torch.Tensor, int]:
    """Float RGB tensor (3, h, w) of a loaded PIL image, reduced by ``factor`` when >= 2.

    Returns:
        (tensor, total reduction applied).
    """
    img, divisor = _canonical(img, label)
    img, total = _reduce(img, factor, 1)
    return _unit_float(_pixels(img), divisor), total


def _load_path(path: Path, label: str, max_side: int | None, picture_side: int | None = None) -> LoadedImage:
    with open_regular_file(path, f"{label}:") as fh:
        img = _open(fh, label)
        stored_w, stored_h = img.size
        _check_min_side(img.size, label)  # the shorter side does not depend on the orientation
        if picture_side is None:
            factor = reduction_factor(stored_w, stored_h, max_side)
        else:
            factor = picture_factor(stored_w, stored_h, picture_side)
        drafted = 1
        try:
            if factor >= 2:
                step = next(s for s in (8, 4, 2) if s <= factor)
                result = img.draft(None, (max(1, stored_w // step), max(1, stored_h // step)))
                if result is not None:
                    drafted = max(1, round(stored_w / result[1][2]))
            img.load()
        except Image.DecompressionBombError as exc:
            raise ScotError(f"{label}: image is too large to decode safely ({exc})") from None
        except MemoryError:
            raise ScotError(f"{label}: not enough memory to decode the {stored_w}x{stored_h} px image") from None
        except Exception as exc:
            raise ScotError(f"{label}: image is truncated or corrupt ({type(exc).__name__}: {exc})") from None
        orientation = _orientation(img)
    size = (stored_h, stored_w) if orientation in _SWAPS_AXES else (stored_w, stored_h)
    try:
        if orientation in _TRANSPOSE:
            img = img.transpose(_TRANSPOSE[orientation])
        img, divisor = _canonical(img, label)
        img, total = _reduce(img, factor, drafted, at_least=picture_side is not None)
        pixels = _pixels(img)
        del img  # this frame held the only reference: the 8-bit image is freed before the float copy
        tensor = _unit_float(pixels, divisor)
    except (MemoryError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and "memory" not in str(exc).lower():
            raise
        hint = "" if factor > 1 else " (pass max_side to decode it reduced)"
        raise ScotError(f"{label}: not enough memory to convert the {size[0]}x{size[1]} px image{hint}") from None
    return LoadedImage(tensor, label, size, 1.0 / total)


def _check_min_side(size: tuple[int, int], label: str) -> None:
    w, h = size
    if min(w, h) < MIN_SIDE:
        raise ScotError(f"{label}: image is {w}x{h} px; both sides must be at least {MIN_SIDE} px")


def load_image(source: ImageLike, name: str | None = None, max_side: int | None = None) -> LoadedImage:
    """Load an image as RGB float in [0, 1].

    EXIF orientation is applied to files, alpha is composited over white, grayscale and
    palette images become RGB, 16-bit images are scaled to [0, 1], and float (or 32-bit
    integer) pixels by the smallest of [0, 1], [0, 255], [0, 65535] that holds them (a
    NaN, infinite, negative or larger value is an error; see :mod:`scot.pixels`).  Only regular files
    are opened (a named pipe, device or directory is refused without blocking); files
    declaring more than ``MAX_PIXELS`` pixels, or more than Pillow's decompression-bomb
    limit (``PIL.Image.MAX_IMAGE_PIXELS`` x 2, 179 MP by default), are refused before
    decoding.

    Args:
        source: a file path (str or Path), a PIL image, an (H, W), (H, W, 3) or (H, W, 4)
            uint8/uint16/float array, or a (3, H, W) / (1, 3, H, W) tensor.
        name: how errors and outputs name the image (default: the path, or "image",
            "array", "tensor").
        max_side: the long side the caller will resize to, or None.  A file or PIL image
            whose long side is at least ``REDUCE_FROM * max_side`` is then decoded
            reduced by ``reduction_factor(W, H, max_side)`` (never below ``max_side``);
            arrays and tensors are never reduced.

    Returns:
        :class:`LoadedImage` with ``size`` the original (W, H) and ``scale`` the factor
        from original to decoded pixels.
    """
    _check_max_side(max_side)
    if isinstance(source, (str, Path)):
        path = _local_path(source)
        return _load_path(path, name or str(path), max_side)
    if isinstance(source, Image.Image):
        label = name or "image"
        try:
            source.load()
        except ValueError:  # Pillow's "Operation on closed image"
            raise ScotError(f"{label}: the PIL image is closed; pass it before closing it, or pass its file") from None
        size = source.size
        _check_min_side(size, label)
        tensor, total = _decode(source, reduction_factor(*size, max_side), label)
        return LoadedImage(tensor, label, size, 1.0 / total)
    if isinstance(source, np.ndarray):
        label = name or "array"
        tensor = array_to_tensor(source, label)
    elif isinstance(source, torch.Tensor):
        label = name or "tensor"
        tensor = tensor_to_rgb(source, label)
    else:
        raise ScotError(f"{name or 'image'}: unsupported image type {type(source).__name__}")
    size = (int(tensor.shape[2]), int(tensor.shape[1]))
    _check_min_side(size, label)
    return LoadedImage(tensor.float(), label, size)


def load_picture(path: str | Path, side: int, name: str | None = None) -> LoadedImage:
    """An image file decoded for a picture: at most ``side`` pixels on its long side.

    Whatever the image's size, it is decoded reduced by the integer
    :func:`picture_factor` (JPEG DCT scaling, then a box filter), so no full-size copy
    is made of an image larger than ``side``; otherwise as :func:`load_image`, whose
    :class:`LoadedImage` it returns (``size`` the original, ``scale`` the reduction).
    """
    _check_max_side(side)
    path = _local_path(path)
    return _load_path(path, name or str(path), None, picture_side=side)


def _local_path(source: str | Path) -> Path:
    """``source`` as a Path, refusing URLs (``Path`` would quietly turn ``http://a/b`` into
    the local ``http:/a/b``)."""
    if isinstance(source, str) and "://" in source:
        raise ScotError(f"{source}: is a URL; scot reads local image files only, so download it first")
    return Path(source)


def check_image(source: str | Path) -> None:
    """Check, from the file header only, that ``source`` is a readable image of a usable
    size, so that a run can refuse it before any network pass.

    Raises:
        ScotError: naming the file: missing, not a regular file, empty, not an image, or
            declaring a size that is too small or too large.
    """
    path = _local_path(source)
    label = str(path)
    with open_regular_file(path, f"{label}:") as fh:
        _check_min_side(_open(fh, label).size, label)


def image_size(source: str | Path) -> tuple[int, int]:
    """The (W, H) that :func:`load_image` reports as ``size`` for a file, without decoding
    it where the format allows (JPEG: header only; PNG and others may be decoded to find
    their EXIF orientation).

    Args:
        source: the image file (str or Path).

    Returns:
        (W, H) in pixels, after EXIF orientation.
    """
    path = _local_path(source)
    label = str(path)
    with open_regular_file(path, f"{label}:") as fh:
        img = _open(fh, label)
        w, h = img.size
        orientation = _orientation(img)
    return (h, w) if orientation in _SWAPS_AXES else (w, h)
