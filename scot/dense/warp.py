r"""Warps: the target image seen through a dense flow, in the source frame, and two ways
to compare it with the source (:func:`blend`, :func:`checkerboard`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .flow import flow_inside


def warp_image(trg_image: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    r"""The target image seen through the flow, in the source frame.

    .. math::
        \mathrm{out}[:, v, u] = I_t(\mathrm{flow}[v, u])

    sampled with ``grid_sample`` (``align_corners=True``, so pixel centres sit on integer
    coordinates as keypoints do), exactly zero where the flow leaves the target frame
    :math:`[0, W_t-1] \times [0, H_t-1]` (:func:`flow_inside`).

    Args:
        trg_image: (3, Ht, Wt) float image in [0, 1] (any channel count works).
        flow: (H, W, 2) target (x, y) in target pixels.
        mode: ``bilinear`` or ``nearest``.

    Returns:
        (C, H, W) float32 warped image.
    """
    img = torch.as_tensor(trg_image).float()
    f = torch.as_tensor(flow).float().to(img.device)
    ht, wt = int(img.shape[-2]), int(img.shape[-1])
    gx = f[..., 0] * (2.0 / max(wt - 1, 1)) - 1.0
    gy = f[..., 1] * (2.0 / max(ht - 1, 1)) - 1.0
    grid = torch.stack((gx, gy), dim=2).unsqueeze(0)
    out = F.grid_sample(img.unsqueeze(0), grid, mode=mode, padding_mode="zeros", align_corners=True)[0]
    return out * flow_inside(f, (wt, ht)).to(out.dtype)


def blend(
    src_image: torch.Tensor, warped: torch.Tensor, alpha: float = 0.5, mask: torch.Tensor | None = None
) -> torch.Tensor:
    r"""(C, H, W) :math:`(1-\alpha)\,\mathrm{src} + \alpha\,\mathrm{warped}` where ``mask`` (H, W) holds,
    ``src`` elsewhere."""
    src, wrp = torch.as_tensor(src_image).float(), torch.as_tensor(warped).float()
    out = (1.0 - alpha) * src + alpha * wrp
    return out if mask is None else torch.where(torch.as_tensor(mask).bool().unsqueeze(0), out, src)


def checkerboard(
    src_image: torch.Tensor, warped: torch.Tensor, tiles: int = 8, mask: torch.Tensor | None = None
) -> torch.Tensor:
    r"""(C, H, W) ``src`` and ``warped`` in alternating tiles, ``tiles`` per side.

    Pixel :math:`(u, v)` shows ``warped`` when
    :math:`(\lfloor u\,n / W \rfloor + \lfloor v\,n / H \rfloor)` is odd (and ``mask`` holds),
    ``src`` otherwise, so misalignment shows as broken edges at tile borders.
    """
    src, wrp = torch.as_tensor(src_image).float(), torch.as_tensor(warped).float()
    height, width = int(src.shape[-2]), int(src.shape[-1])
    n = max(int(tiles), 1)
    ty = torch.div(torch.arange(height) * n, height, rounding_mode="floor")
    tx = torch.div(torch.arange(width) * n, width, rounding_mode="floor")
    odd = ((ty.unsqueeze(1) + tx.unsqueeze(0)) % 2).bool()
    if mask is not None:
        odd &= torch.as_tensor(mask).bool()
    return torch.where(odd.unsqueeze(0), wrp, src)
