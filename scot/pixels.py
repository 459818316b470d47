"""Pixel values: images held in memory (arrays, tensors) as float RGB in [0, 1], and the
ranges pixel values may come in.

8-bit images are divided by 255 and 16-bit ones by 65535.  Float pixels (float TIFFs, PIL
mode ``F``, float arrays, tensors) and 32-bit integer ones (PIL mode ``I``) carry no range
of their own, so the image's largest value decides it (:func:`value_divisor`): the smallest
of [0, 1] (kept as it is), [0, 255] and [0, 65535] that holds every value (integer images:
[0, 255] or [0, 65535]).  A NaN or infinite value, a negative one, or one above 65535 fits
no range and is an error naming the image, never clipped or passed on.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import ScotError

FLOAT_RANGES = (1.0, 255.0, 65535.0)  # the ranges float pixels may come in, smallest first
INTEGER_RANGES = (255.0, 65535.0)  # the same for 32-bit integer pixels (PIL mode I)


def value_divisor(values: np.ndarray | torch.Tensor, label: str, ranges: tuple[float, ...] = FLOAT_RANGES) -> float:
    """The divisor that maps an image's pixel values into [0, 1]: the smallest range holding them.

    Args:
        values: the image's pixel values, any shape (float or integer).
        label: how the error names the image.
        ranges: the candidate ranges [0, r], smallest first (:data:`FLOAT_RANGES` or
            :data:`INTEGER_RANGES`); the last one is the most any image may use.

    Returns:
        r, the smallest of ``ranges`` with every value in [0, r].

    Raises:
        ScotError: naming the image, for a NaN or infinite value, a negative one, or one
            above the last range.
    """
    if isinstance(values, torch.Tensor):
        finite, low, high = bool(torch.isfinite(values).all()), float(values.min()), float(values.max())
    else:
        finite, low, high = bool(np.isfinite(values).all()), float(values.min()), float(values.max())
    if not finite:
        raise ScotError(f"{label}: the image holds NaN or infinite values")
    if low < 0:
        raise ScotError(f"{label}: pixel values go down to {low:g}; an image holds no negative values "
                        f"(scale it to [0, 1], [0, 255] or [0, {ranges[-1]:.0f}])")
    if high > ranges[-1]:
        raise ScotError(f"{label}: pixel values reach {high:g}, beyond {ranges[-1]:.0f} (the 16-bit range); "
                        f"scale the image to [0, 1], [0, 255] or [0, {ranges[-1]:.0f}]")
    return next(r for r in ranges if high <= r)


def array_to_tensor(arr: np.ndarray, label: str) -> torch.Tensor:
    """(3, H, W) float32 in [0, 1] of an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array (alpha dropped)."""
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
        out = (arr / value_divisor(arr, label)).astype(np.float32)
    else:
        raise ScotError(f"{label}: unsupported array dtype {arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1).contiguous()


def tensor_to_rgb(t: torch.Tensor, label: str) -> torch.Tensor:
    """(3, H, W) float32 in [0, 1] on the CPU of a (1 or 3, H, W) or (1, 1 or 3, H, W) tensor."""
    if t.device.type == "meta":
        raise ScotError(f"{label}: the tensor is on the meta device, which holds no pixel values")
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 3 or t.shape[0] not in (1, 3):
        raise ScotError(f"{label}: expected a (3, H, W) tensor, got shape {tuple(t.shape)}")
    t = t.detach().to("cpu")
    if t.dtype == torch.bool or t.is_complex():
        raise ScotError(f"{label}: unsupported tensor dtype {t.dtype}")
    divisor = value_divisor(t if t.is_floating_point() else t.double(), label)
    t = t.to(torch.float32) / divisor if divisor != 1.0 else t.to(torch.float32)
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    return t.contiguous()
