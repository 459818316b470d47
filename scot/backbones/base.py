"""The backbone interface and receptive-field geometry.

A backbone exposes numbered *hyperpixel ids*: id 0 is the stem output, ids 1..N the
network's blocks in order.  Each id has a receptive-field geometry (jump, receptive-field
size and centre offset) derived from the kernels, strides and paddings of the layers that
lead to it, so hyperpixel boxes follow the architecture instead of a hand-made table.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
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


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) of one axis: output ``ceil(size / stride)``."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def fused_cpu_kernels(x: torch.Tensor) -> bool:
    """Whether ``x`` can go through oneDNN's fused convolution kernels.

    These are CPU float32 kernels that apply the bias, an activation and a residual sum in the
    convolution's own pass over its output (oneDNN "post-ops", PyTorch's
    ``torch.ops.mkldnn._convolution_pointwise``).  They are used where PyTorch has them and
    ``torch.backends.mkldnn`` is enabled, and never while gradients are recorded (they have no
    backward) or within :func:`portable_kernels`.
    """
    return (_HAS_FUSED and not _portable.depth and x.device.type == "cpu" and x.dtype == torch.float32
            and bool(torch.backends.mkldnn.enabled) and not (torch.is_grad_enabled() and x.requires_grad))


@contextmanager
def portable_kernels() -> Iterator[None]:
    """Within this block, folded convolutions use plain PyTorch operators only (``F.conv2d``,
    ``addmm``, in-place sums and activations), e.g. for ``torch.utils.flop_counter``, which
    does not see oneDNN's fused kernels."""
    _portable.depth += 1
    try:
        yield
    finally:
        _portable.depth -= 1


# Whether this PyTorch build has the kernels at all (fixed for the process, so checked once).
_HAS_FUSED = hasattr(torch.ops.mkldnn, "_convolution_pointwise") and torch.backends.mkldnn.is_available()


class _Portable(threading.local):
    depth = 0  # nesting of portable_kernels() blocks in this thread


_portable = _Portable()
# Each activation's oneDNN post-op: its name and scalars.
_FUSED_ACTIVATION: dict[str | None, tuple[str, list[float]]] = {
    None: ("none", []), "relu": ("relu", []), "relu6": ("hardtanh", [0.0, 6.0])
}


class FoldedConv(nn.Module):
    r"""A convolution with the BatchNorm that follows it folded in, and an optional activation.

    With the BatchNorm's statistics :math:`\mu, \sigma^2`, scale :math:`\gamma`, shift
    :math:`\beta` and :math:`s = \gamma / \sqrt{\sigma^2 + \epsilon}`, the pair equals one
    convolution with weight :math:`s W` and bias :math:`\beta - s \mu` (computed in float64,
    stored in the convolution's dtype): the inference form, one pass over the output instead
    of two.

    ``same=True`` pads as TensorFlow's "SAME" does, from the actual input size.  Where that
    padding is symmetric (every stride-1 convolution with an odd kernel; a stride-2 one on
    odd sizes) it is the convolution's own zero padding, with no padded copy of the input;
    otherwise the input is padded first (``F.pad``), unless the caller has padded it.

    On the CPU (see :func:`fused_cpu_kernels`) the bias, the activation and a residual sum run
    inside oneDNN's convolution; elsewhere a pointwise convolution on the CPU is one ``addmm``
    and any other one ``F.conv2d``, each followed by the sum and the activation in place.

    Args:
        conv: the trained convolution (any bias is folded too).
        bn: the BatchNorm applied to its output (eval statistics).
        activation: ``None``, ``"relu"`` or ``"relu6"``, applied after the bias.
        same: TensorFlow "SAME" padding instead of ``conv.padding``.
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, activation: str | None = None,
                 same: bool = False) -> None:
        super().__init__()
        if activation not in _FUSED_ACTIVATION:
            raise ValueError(f"unknown activation {activation!r}")
        gamma, beta, mean, var = bn.weight, bn.bias, bn.running_mean, bn.running_var
        if gamma is None or beta is None or mean is None or var is None:
            raise ValueError("only a BatchNorm with affine parameters and running statistics can be folded")
        with torch.no_grad():
            scale = gamma.double() / torch.sqrt(var.double() + bn.eps)
            bias = beta.double() - mean.double() * scale
            if conv.bias is not None:
                bias = bias + conv.bias.double() * scale
            weight = conv.weight.double() * scale.view(-1, 1, 1, 1)
        self.weight = nn.Parameter(weight.to(conv.weight.dtype), requires_grad=False)
        self.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
        self.kernel = (int(conv.kernel_size[0]), int(conv.kernel_size[1]))
        self.stride = (int(conv.stride[0]), int(conv.stride[1]))
        self.padding = (int(conv.padding[0]), int(conv.padding[1]))
        self.groups = int(conv.groups)
        self.activation = activation
        self.same = same

    @property
    def pointwise(self) -> bool:
        """A 1 x 1, stride-1, unpadded, ungrouped convolution: a matrix product over the pixels."""
        return self.kernel == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0) and self.groups == 1

    def same_pads(self, height: int, width: int) -> tuple[int, int, int, int]:
        """TensorFlow "SAME" padding ``(left, right, top, bottom)`` of an ``height x width`` input."""
        (top, bottom), (left, right) = (same_padding(height, self.kernel[0], self.stride[0]),
                                        same_padding(width, self.kernel[1], self.stride[1]))
        return left, right, top, bottom

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, *, relu: bool = False,
                padded: bool = False) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H', W').

        Args:
            x: the input, channels-last for speed.
            residual: (B, C_out, H', W') added to the convolution's output (a residual
                connection), before the activation.
            relu: a ReLU after the sum, for a convolution without an activation of its own.
            padded: ``x`` already carries its "SAME" padding (see :meth:`same_pads`).

        Returns:
            ``act(conv(x) + bias [+ residual])``, channels-last for a channels-last input.
        """
        activation = self.activation
        if relu:
            if activation is not None:
                raise ValueError(f"a ReLU after a convolution that ends in {activation!r}")
            activation = "relu"
        padding = (0, 0) if padded else self.padding
        if self.same and not padded:
            left, right, top, bottom = self.same_pads(int(x.shape[-2]), int(x.shape[-1]))
            if top == bottom and left == right:
                padding = (top, left)
            else:
                x, padding = F.pad(x, [left, right, top, bottom]), (0, 0)
        if fused_cpu_kernels(x):
            return self._fused(x, padding, residual, activation)
        if self.pointwise and x.device.type == "cpu":
            # At one thread PyTorch sends 1 x 1 convolutions to its reference kernel, which
            # converts the layout twice; addmm over the pixels of the channels-last input (a
            # view) gives a channels-last output.
            b, c, h, w = x.shape
            cout = int(self.weight.shape[0])
            rows = x.permute(0, 2, 3, 1).reshape(b * h * w, c)
            y = torch.addmm(self.bias, rows, self.weight.reshape(cout, c).t()).view(b, h, w, cout).permute(0, 3, 1, 2)
        else:
            y = F.conv2d(x, self.weight, self.bias, self.stride, padding, 1, self.groups)
        if residual is not None:
            y = y.add_(residual)
        return _activate(y, activation)

    def _fused(self, x: torch.Tensor, padding: tuple[int, int], residual: torch.Tensor | None,
               activation: str | None) -> torch.Tensor:
        attr, scalars = _FUSED_ACTIVATION[activation]
        geometry = ([padding[0], padding[1]], [self.stride[0], self.stride[1]], [1, 1], self.groups)
        if residual is None:
            return torch.ops.mkldnn._convolution_pointwise(x, self.weight, self.bias, *geometry, attr, scalars, "")
        if x.is_contiguous(memory_format=torch.channels_last):
            residual = residual.contiguous(memory_format=torch.channels_last)
        # The binary form takes no "none" post-op: no activation is None.
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, residual, self.weight, self.bias, *geometry, "add", None,
            None if activation is None else attr, scalars, None)


def _activate(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation == "relu":
        return y.relu_()
    if activation == "relu6":
        return F.relu6(y, inplace=True)
    return y


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
            raise ScotError(
                f"id(s) {bad} out of range for {self.name}, which has ids 0..{self.num_ids - 1}", option=option
            )
