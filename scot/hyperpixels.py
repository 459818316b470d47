r"""What an image becomes for matching: hyperpixels, multi-layer features on a regular grid.

A *hyperpixel* concatenates the selected backbone maps at one cell of the grid of the
first (shallowest) selected id: every map is bilinearly upsampled (``align_corners=True``)
to that grid, without per-layer normalisation.  Cell (x, y) has the receptive-field box

.. math::
    [x j + o_x - r//2,\; y j + o_y - r//2,\; x j + o_x + r//2,\; y j + o_y + r//2]

with jump ``j``, receptive field ``r`` and centre offset ``o`` of the first selected id
(``o = 0`` for ResNets, as in the reference); the box centre is ``x1 + (x2 - x1) // 2``.

The upsampled table is never built.  Bilinear upsampling is linear: a layer group ``X``
(maps that share one native resolution, ``h_g x w_g`` cells by ``C_g`` channels) reaches
the grid as :math:`U X` with the separable interpolation matrix
:math:`U = U_y \otimes U_x` (:func:`bilinear_matrix`).  :class:`Hyperpixels` therefore
keeps every group at its native resolution (:class:`LayerGroup`) together with ``U_y`` and
``U_x``, and :mod:`scot.cost` correlates two images through the small native Gram matrices.
:mod:`scot.features` makes them from an image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .backbones import Geometry


def bilinear_matrix(out_size: int, in_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The (out_size, in_size) matrix of 1-D bilinear resampling with ``align_corners=True``.

    Row ``k`` holds the weights ``(1 - λ, λ)`` of the two input samples around
    ``k (in - 1) / (out - 1)``; rows sum to one.  It is exactly what
    :func:`torch.nn.functional.interpolate` applies along one axis.
    """
    eye = torch.eye(in_size, device=device).unsqueeze(0)  # in_size channels, each a unit impulse
    return F.interpolate(eye, size=out_size, mode="linear", align_corners=True)[0].t().contiguous()


def box_centres(boxes: torch.Tensor) -> torch.Tensor:
    """Centres ``x1 + (x2 - x1) // 2`` of (n, 4) boxes, as the reference computes them."""
    x = boxes[:, 0] + torch.div(boxes[:, 2] - boxes[:, 0], 2, rounding_mode="floor")
    y = boxes[:, 1] + torch.div(boxes[:, 3] - boxes[:, 1], 2, rounding_mode="floor")
    return torch.stack((x, y), dim=1)


def receptive_field_boxes(geometry: Geometry, height: int, width: int) -> torch.Tensor:
    """(height * width, 4) receptive-field boxes of a grid, row-major."""
    half = geometry.rf // 2
    x = torch.arange(width, dtype=torch.float32) * geometry.jump + geometry.offset_x
    y = torch.arange(height, dtype=torch.float32) * geometry.jump + geometry.offset_y
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    xx, yy = xx.reshape(-1), yy.reshape(-1)
    return torch.stack((xx - half, yy - half, xx + half, yy + half), dim=1)


@dataclass
class LayerGroup:
    """Selected maps that share one native resolution, concatenated along channels.

    The group reaches the hyperpixel grid as ``(rows ⊗ cols) @ maps``.
    """

    maps: torch.Tensor  # (h_g * w_g, C_g) native cells, row-major; centred when the image's features are
    shape: tuple[int, int]  # (h_g, w_g)
    rows: torch.Tensor  # (h, h_g) bilinear matrix from the native rows to the grid rows
    cols: torch.Tensor  # (w, w_g) the same for columns
    factorized: bool = False  # correlated through its Gram matrix (else upsampled into the dense part)

    @property
    def channels(self) -> int:
        return int(self.maps.shape[1])

    def upsampled(self, c0: int = 0, c1: int | None = None) -> torch.Tensor:
        """(h * w, c1 - c0) the group's channels ``c0:c1`` on the hyperpixel grid."""
        h_g, w_g = self.shape
        h, w = self.rows.shape[0], self.cols.shape[0]
        x = self.maps[:, c0:c1]
        if (h_g, w_g) == (h, w):
            return x
        c = x.shape[1]
        x = x.t().reshape(1, c, h_g, w_g).contiguous(memory_format=torch.channels_last)
        x = F.interpolate(x, (h, w), mode="bilinear", align_corners=True)
        return x.permute(0, 2, 3, 1).reshape(h * w, c)


@dataclass
class Hyperpixels:
    """Everything the matcher needs about one image, in the resized frame.

    The fused features :math:`f_i / \\|f_i\\|` are kept in two parts (see the module
    docstring): ``dense``, the groups that are cheapest to correlate by a plain product,
    upsampled to the grid and divided by the hyperpixel norms; and ``factorized``, the
    groups correlated through their native Gram matrices.  :meth:`fused` builds the
    classic (n, D) table when it is wanted.
    """

    dense: torch.Tensor  # (n, D_d) upsampled groups / ||f_i||
    factorized: list[LayerGroup]  # native-resolution groups (their maps are not divided by the norms)
    inv_norms: torch.Tensor  # (n,) 1 / ||f_i|| of the fused (centred) hyperpixels; 0 for a zero feature
    xs: torch.Tensor  # (w,) x of the grid columns' box centres
    ys: torch.Tensor  # (h,) y of the grid rows' box centres
    boxes: torch.Tensor  # (n, 4) x1, y1, x2, y2 (CPU, float32)
    weights: torch.Tensor  # (n,) unnormalised marginal weights (CPU, float32)
    size: tuple[int, int]  # (W, H) after resizing
    ratio: float  # resized / original
    original_size: tuple[int, int]  # (W, H) as loaded
    geometry: Geometry
    name: str = "image"
    cam: torch.Tensor | None = None  # (H, W) on CPU
    top_classes: list[int] = field(default_factory=list)
    on_object: torch.Tensor | None = None  # (n,) bool, CAM above the foreground level (None: no CAM)
    layout: list[tuple[tuple[int, int], int, bool]] = field(default_factory=list)
    """(native shape, channels, factorized) of every layer group, grid resolution first."""
    dense_reversed: torch.Tensor | None = field(default=None, repr=False)
    origin: str = ""
    """The model that made them (:meth:`~scot.features.HyperpixelExtractor.origin`): only features of one
    origin can be matched together."""
    mirror: Hyperpixels | None = field(default=None, repr=False)
    """The description of the horizontally mirrored image, for mirror-aware matching
    (``flip='auto'``, :mod:`scot.mirror`); None unless asked for."""

    @property
    def n(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, columns) of the hyperpixel grid."""
        return len(self.ys), len(self.xs)

    @property
    def dim(self) -> int:
        """D, the channels of a fused hyperpixel."""
        return int(self.dense.shape[1]) + sum(g.channels for g in self.factorized)

    @property
    def device(self) -> torch.device:
        return self.inv_norms.device

    @property
    def centres(self) -> torch.Tensor:
        """(n, 2) box centres (x, y), row-major over the grid."""
        return box_centres(self.boxes)

    def operand(self, reverse: bool = False) -> torch.Tensor:
        """(n, D_d) :attr:`dense`, or with ``reverse`` its rows in reverse order (cell ``n - 1 - i``
        first): the target's layout in the matching matrix (see :mod:`scot.cost`)."""
        if not reverse:
            return self.dense
        if self.dense_reversed is None:
            self.dense_reversed = self.dense.flip(0)
        return self.dense_reversed

    def fused(self) -> torch.Tensor:
        """(n, D) the unit-norm hyperpixel features (zero rows stay zero): the classic table."""
        parts = [self.dense] + [g.upsampled().mul(self.inv_norms.unsqueeze(1)) for g in self.factorized]
        return torch.cat(parts, 1)

    def to(self, device: torch.device | str) -> Hyperpixels:
        """A copy whose feature tensors live on ``device`` (boxes, weights and grid coordinates
        stay on the host); itself when they are there.  The reversed operand is not copied:
        :meth:`operand` rebuilds it on the device, cheaper than a transfer."""
        device = torch.device(device)
        if self.device == device:
            return self
        factorized = [LayerGroup(g.maps.to(device), g.shape, g.rows.to(device), g.cols.to(device), True)
                      for g in self.factorized]
        moved = ("dense", "factorized", "inv_norms", "dense_reversed", "mirror")
        fields = {f: getattr(self, f) for f in self.__dataclass_fields__ if f not in moved}
        return Hyperpixels(dense=self.dense.to(device), factorized=factorized, inv_norms=self.inv_norms.to(device),
                           mirror=None if self.mirror is None else self.mirror.to(device), **fields)

    def _tensors(self) -> list[torch.Tensor]:
        tensors = [self.dense, self.inv_norms, self.xs, self.ys, self.boxes, self.weights]
        tensors += [t for t in (self.cam, self.dense_reversed, self.on_object) if t is not None]
        for g in self.factorized:
            tensors += [g.maps, g.rows, g.cols]
        if self.mirror is not None:
            tensors += self.mirror._tensors()
        return tensors

    def nbytes(self) -> int:
        """Bytes of every tensor held, wherever it lives (what a cache of images counts)."""
        return sum(t.element_size() * t.nelement() for t in self._tensors())

    def device_nbytes(self) -> int:
        """Bytes held on an accelerator (the matching operands once on a GPU; 0 on the CPU)."""
        return sum(t.element_size() * t.nelement() for t in self._tensors() if t.device.type != "cpu")

    def operand_nbytes(self) -> int:
        """Bytes of the matching operands (features, the reversed dense part, norms, groups):
        what :meth:`to` and :meth:`operand` create on a device that does not hold them yet."""
        tensors = [self.dense, self.inv_norms] + [x for g in self.factorized for x in (g.maps, g.rows, g.cols)]
        tensors.append(self.dense)  # the reversed copy
        return sum(t.element_size() * t.nelement() for t in tensors)
