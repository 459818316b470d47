"""Image loading and the resize step that starts the pipeline.

:func:`load_image` turns a path, PIL image, array or tensor into a float RGB tensor in
[0, 1], handling the formats users actually have (EXIF rotation, grayscale, palette,
alpha, 16-bit) and rejecting unreadable or too-small files with a one-line error.

:func:`resize_longest_side` reproduces the reference resize exactly: the scale is
``side / max(H, W)`` computed in float32, the new size is truncated with ``int()``, and
the image is resampled bilinearly with ``align_corners=False``, up or down.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ScotError

MIN_SIDE = 32
ImageLike = Union[str, Path, Image.Image, np.ndarray, torch.Tensor]


@dataclass
class LoadedImage:
    """An RGB image as a float tensor (3, H, W) in [0, 1] plus where it came from."""

    tensor: torch.Tensor
    name: str

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.tensor.shape[2]), int(self.tensor.shape[1])


def _pil_to_float_rgb(img: Image.Image, name: str) -> np.ndarray:
    """Convert any PIL mode to an (H, W, 3) float32 array in [0, 1]."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            scale = 65535.0
        elif mode == "F":
            scale = 1.0 if arr.size == 0 or arr.max() <= 1.0 else (255.0 if arr.max() <= 255.0 else 65535.0)
        else:  # 32-bit integer mode: 16-bit PNGs load like this in some Pillow versions
            scale = 255.0 if arr.size == 0 or arr.max() <= 255 else 65535.0
        gray = np.clip(arr / scale, 0.0, 1.0).astype(np.float32)
        return np.repeat(gray[:, :, None], 3, axis=2)

    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        # Composite over white: transparent pixels carry arbitrary colour values.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
    elif mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.float32) / 255.0


def _open_path(path: Path) -> Image.Image:
    if not path.exists():
        raise ScotError(f"{path}: file does not exist")
    if path.is_dir():
        raise ScotError(f"{path}: is a directory, not an image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            img.load()
    except UnidentifiedImageError:
        raise ScotError(f"{path}: not an image file that can be read (unknown or unsupported format)") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ScotError(f"{path}: image is too large to decode safely") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ScotError(f"{path}: image is truncated or corrupt ({exc})") from None
    return img


def load_image(source: ImageLike, name: str | None = None) -> LoadedImage:
    """Load an image as RGB float in [0, 1], shape (3, H, W).

    Accepts a file path, a PIL image, an (H, W[, C]) uint8/float array or a (3, H, W)
    tensor.  EXIF orientation is applied, alpha is composited over white, grayscale and
    palette images become RGB, 16-bit images are scaled to [0, 1].
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        label = name or str(path)
        img = _open_path(path)
        try:
            img = ImageOps.exif_transpose(img)
        except Exception:  # malformed EXIF: keep the stored orientation
            pass
        arr = _pil_to_float_rgb(img, label)
        tensor = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()
    elif isinstance(source, Image.Image):
        label = name or "image"
        tensor = torch.from_numpy(np.ascontiguousarray(_pil_to_float_rgb(source, label))).permute(2, 0, 1).contiguous()
    elif isinstance(source, np.ndarray):
        label = name or "array"
        tensor = _array_to_tensor(source, label)
    elif isinstance(source, torch.Tensor):
        label = name or "tensor"
        tensor = _tensor_to_rgb(source, label)
    else:
        raise ScotError(f"{name or 'image'}: unsupported image type {type(source).__name__}")

    h, w = int(tensor.shape[1]), int(tensor.shape[2])
    if min(h, w) < MIN_SIDE:
        raise ScotError(f"{label}: image is {w}x{h} px; both sides must be at least {MIN_SIDE} px")
    return LoadedImage(tensor.float(), label)


def _array_to_tensor(arr: np.ndarray, label: str) -> torch.Tensor:
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ScotError(f"{label}: expected an (H, W), (H, W, 3) or (H, W, 4) array, got shape {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.dtype == np.uint8:
        out = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        out = arr.astype(np.float32) / 65535.0
    elif np.issubdtype(arr.dtype, np.floating):
        out = arr.astype(np.float32)
        if out.max(initial=0.0) > 1.0:
            out = out / 255.0
    else:
        raise ScotError(f"{label}: unsupported array dtype {arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1).contiguous()


def _tensor_to_rgb(t: torch.Tensor, label: str) -> torch.Tensor:
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 3 or t.shape[0] not in (1, 3):
        raise ScotError(f"{label}: expected a (3, H, W) tensor, got shape {tuple(t.shape)}")
    t = t.detach().to("cpu", torch.float32)
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    if t.max() > 1.0:
        t = t / 255.0
    return t.contiguous()


def resize_ratio(width: int, height: int, side: int = 300) -> float:
    """The reference's resize factor ``side / max(H, W)``, evaluated in float32 as the reference does.

    The reference divides a Python number by a float32 tensor, which PyTorch evaluates as
    ``reciprocal(max(H, W)) * side``; that rounds differently from a true float32 division
    for about one long side in ten (e.g. 490 px: 299 rows after truncation, not 300).
    """
    ratio = torch.tensor(float(max(width, height)), dtype=torch.float32).reciprocal() * side
    return float(ratio)


def resized_size(width: int, height: int, side: int = 300) -> tuple[int, int]:
    """(new_width, new_height) exactly as the reference truncates them."""
    ratio = torch.tensor(resize_ratio(width, height, side), dtype=torch.float32)
    new_h = int(torch.tensor(float(height), dtype=torch.float32) * ratio)
    new_w = int(torch.tensor(float(width), dtype=torch.float32) * ratio)
    return new_w, new_h


def resize_longest_side(image: torch.Tensor, side: int = 300) -> tuple[torch.Tensor, float]:
    """Resize a (3, H, W) image so its longest side is ``side``; return it and the ratio."""
    h, w = int(image.shape[-2]), int(image.shape[-1])
    new_w, new_h = resized_size(w, h, side)
    out = F.interpolate(image.unsqueeze(0), size=(new_h, new_w), mode="bilinear", align_corners=False)[0]
    return out, resize_ratio(w, h, side)
