"""The backbone interface and receptive-field geometry.

A backbone exposes numbered *hyperpixel ids*: id 0 is the stem output, ids 1..N the
network's blocks in order.  Each id has a receptive-field geometry (jump, receptive-field
size and centre offset) derived from the kernels, strides and paddings of the layers that
lead to it, so hyperpixel boxes follow the architecture instead of a hand-made table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn


@dataclass(frozen=True)
class SpatialOp:
    """A layer that changes spatial geometry: kernel size, stride and padding.

    ``padding=None`` means TensorFlow "SAME" padding (output ``ceil(in / stride)``, the
    extra pixel padded after), as used by the EfficientNet-Lite checkpoints.
    """

    kernel: int
    stride: int
    padding: int | None


@dataclass(frozen=True)
class Geometry:
    """Where the feature cells of one hyperpixel layer sit in the input image.

    Cell (x, y) is centred at ``(x * jump + offset_x, y * jump + offset_y)`` and sees a
    ``rf x rf`` window of the input.  ``height``/``width`` are the feature-map size.
    """

    jump: int
    rf: int
    offset_x: int
    offset_y: int
    height: int
    width: int


def _out_size_and_pad_before(size: int, op: SpatialOp) -> tuple[int, int]:
    if op.padding is None:
        out = math.ceil(size / op.stride)
        pad_total = max((out - 1) * op.stride + op.kernel - size, 0)
        return out, pad_total // 2
    out = (size + 2 * op.padding - op.kernel) // op.stride + 1
    return out, op.padding


def propagate_geometry(ops: Sequence[SpatialOp], height: int, width: int) -> Geometry:
    """Compose the geometry of a chain of spatial layers applied to an H x W input."""
    jump, rf, off_x, off_y, h, w = 1, 1, 0, 0, height, width
    for op in ops:
        h_out, pad_y = _out_size_and_pad_before(h, op)
        w_out, pad_x = _out_size_and_pad_before(w, op)
        half = (op.kernel - 1) // 2
        rf += (op.kernel - 1) * jump
        off_x += (half - pad_x) * jump
        off_y += (half - pad_y) * jump
        jump *= op.stride
        h, w = h_out, w_out
    return Geometry(jump, rf, off_x, off_y, h, w)


@dataclass
class BackboneOutput:
    """Selected hyperpixel feature maps and, when asked for, the CAM inputs."""

    features: dict[int, torch.Tensor]
    last_map: torch.Tensor | None = None  # (B, C, h, w) after the final activation
    logits: torch.Tensor | None = None  # (B, num_classes)


class Backbone(nn.Module):
    """Base class: a CNN with numbered hyperpixel ids and a linear classifier for CAM."""

    name: str = "backbone"
    weights_source: str = "unknown"

    @property
    def num_ids(self) -> int:
        """Hyperpixel ids are 0 .. num_ids - 1."""
        raise NotImplementedError

    def id_names(self) -> list[str]:
        """A human-readable description of each hyperpixel id."""
        raise NotImplementedError

    def channels(self, hid: int) -> int:
        raise NotImplementedError

    def spatial_ops(self, hid: int) -> list[SpatialOp]:
        """The spatial layers from the input to hyperpixel id ``hid``."""
        raise NotImplementedError

    def geometry(self, hid: int, height: int, width: int) -> Geometry:
        return propagate_geometry(self.spatial_ops(hid), height, width)

    def normalize(self, image01: torch.Tensor) -> torch.Tensor:
        """Map an RGB image in [0, 1] to the network's input convention."""
        raise NotImplementedError

    def classifier_weight(self) -> torch.Tensor:
        """The (num_classes, C) weight of the final linear layer, used for CAM."""
        raise NotImplementedError

    def extract(self, x: torch.Tensor, ids: Sequence[int], head: bool) -> BackboneOutput:
        """Run the network on a normalised batch.

        Returns the maps of ``ids`` and, if ``head``, the last activation map and logits.
        Without ``head`` the pass stops after the deepest selected id.
        """
        raise NotImplementedError

    def check_ids(self, ids: Sequence[int], option: str = "hyperpixel_ids") -> None:
        """Raise a ScotError naming ``option`` unless every id is one of this backbone's."""
        from ..errors import ScotError

        bad = [i for i in ids if not 0 <= i < self.num_ids]
        if bad:
            raise ScotError(f"id(s) {bad} out of range for {self.name}, which has ids 0..{self.num_ids - 1}", option=option)
