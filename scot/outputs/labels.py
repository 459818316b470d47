"""The source label mask of ``scot match --mask``, read and checked before any work."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ScotError
from ..io import open_regular_file


@dataclass(frozen=True)
class LabelMask:
    """A source label mask: (H, W) integer ``labels`` and, for a palette image, its ``palette``
    (written again with the moved mask, so that labels keep their colours)."""

    labels: torch.Tensor
    palette: list[int] | None = None


def read_mask(path: str, size: tuple[int, int]) -> LabelMask:
    """Read a binary, grey, 16-bit or palette label mask of an image of ``size`` (W, H).

    Raises:
        ScotError: naming ``--mask``: unreadable, a colour image, or not ``size``.
    """
    import numpy as np
    from PIL import Image

    with open_regular_file(path, "mask") as fh:
        try:
            img = Image.open(fh)
            img.load()
        except Exception:
            raise ScotError(f"{path} is not an image file that can be read", option="mask") from None
    if img.mode in ("RGB", "RGBA"):
        rgb = np.asarray(img.convert("RGB"))
        if not ((rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])).all():
            raise ScotError(f"{path} is a colour image; give a binary, grey or palette label mask", option="mask")
        arr = rgb[..., 0]
    elif img.mode in ("1", "L", "P", "I", "I;16"):
        arr = np.asarray(img)
    else:
        arr = np.asarray(img.convert("L"))
    if (arr.shape[1], arr.shape[0]) != tuple(size):
        raise ScotError(f"{path} is {arr.shape[1]}x{arr.shape[0]} pixels but the source image is {size[0]}x{size[1]}",
                        option="mask")
    return LabelMask(torch.from_numpy(arr.astype(np.int64)), img.getpalette() if img.mode == "P" else None)
