"""The resize that starts the pipeline: the longest side to ``image_side`` (300 px).

:func:`resize_longest_side` reproduces the reference resize exactly: the scale is
``side / max(H, W)`` computed in float32, the new size is truncated with ``int()``, and
the image is resampled bilinearly with ``align_corners=False``, up or down.
:func:`resized_size` gives the size without resizing anything.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
