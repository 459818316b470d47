"""torchvision ResNet-50/101 as a hyperpixel backbone.

Hyperpixel id 0 is the stem output after max-pooling; ids 1..N are the bottleneck blocks
in network order (ResNet-101: layer1 = 1-3, layer2 = 4-7, layer3 = 8-30, layer4 = 31-33).
A block's feature is taken after the residual addition and *before* its final ReLU,
as in the SCOT/HPF reference code.

The torchvision network is kept as ``backbone.net``; the passes run through its inference
form (:class:`FoldedBottleneck`), every BatchNorm folded into its convolution at load.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .base import Backbone, BackboneOutput, FoldedConv, SpatialOp
from .weights import load_into, parse_random_spec, read_state_dict, torchvision_state_dict

if TYPE_CHECKING:
    from torchvision.models.resnet import Bottleneck

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _variant(name: str):
    """(builder, IMAGENET1K_V1 weights enum); torchvision is imported only when a ResNet is built
    (importing it costs ~2 s, which EfficientNet users should not pay)."""
    import torchvision

    if name == "resnet50":
        return torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V1
    return torchvision.models.resnet101, torchvision.models.ResNet101_Weights.IMAGENET1K_V1


class FoldedBottleneck(nn.Module):
    """A torchvision bottleneck in inference form (BatchNorms folded), without its final ReLU."""

    def __init__(self, block: Bottleneck) -> None:
        super().__init__()
        self.conv1 = FoldedConv(block.conv1, block.bn1, "relu")
        self.conv2 = FoldedConv(block.conv2, block.bn2, "relu")
        self.conv3 = FoldedConv(block.conv3, block.bn3)
        self.downsample = None if block.downsample is None else FoldedConv(block.downsample[0], block.downsample[1])

    def forward(self, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H / stride, W / stride), before the block's ReLU unless ``relu``.

        The residual sum (and the ReLU) run inside the last convolution (see :class:`FoldedConv`).
        """
        shortcut = self.downsample(x) if self.downsample is not None else x
        return self.conv3(self.conv2(self.conv1(x)), shortcut, relu=relu)


class ResNetBackbone(Backbone):
    """ResNet-50/101 with ImageNet weights ``IMAGENET1K_V1`` (the weights the paper used)."""

    mean: torch.Tensor  # (1, 3, 1, 1) buffer
    std: torch.Tensor  # (1, 3, 1, 1) buffer

    def __init__(self, name: str = "resnet101", weights: str | None = None, allow_download: bool = True) -> None:
        super().__init__()
        builder, pretrained = _variant(name)
        self.name = name
        seed = parse_random_spec(weights)
        if seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.net = builder(weights=None)
            self.weights_source = f"random (seed {seed})"
        else:
            self.net = builder(weights=None)
            if weights is None:
                state = torchvision_state_dict(pretrained, name, download=allow_download)
                self.weights_source = f"torchvision {pretrained}"
            else:
                state = read_state_dict(weights)
                self.weights_source = str(weights)
            load_into(self.net, state, str(weights or pretrained), name)
        self.net.eval()
        self.blocks = [b for layer in self._layers() for b in layer]
        self.folded_stem = FoldedConv(self.net.conv1, self.net.bn1, "relu")
        self.folded_blocks = nn.ModuleList(FoldedBottleneck(b) for b in self.blocks)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _layers(self):
        return [self.net.layer1, self.net.layer2, self.net.layer3, self.net.layer4]

    # --- description -------------------------------------------------------------------
    @property
    def num_ids(self) -> int:
        return 1 + len(self.blocks)

    def id_names(self) -> list[str]:
        names = ["stem (after max-pool)"]
        for li, layer in enumerate(self._layers(), start=1):
            names += [f"layer{li}.{bi}" for bi in range(len(layer))]
        return names

    def channels(self, hid: int) -> int:
        return 64 if hid == 0 else self.blocks[hid - 1].bn3.num_features

    def spatial_ops(self, hid: int) -> list[SpatialOp]:
        ops = [SpatialOp(7, 2, 3), SpatialOp(3, 2, 1)]
        for block in self.blocks[:hid]:
            conv = block.conv2  # torchvision (v1.5) strides in the 3x3 convolution
            ops.append(SpatialOp(conv.kernel_size[0], conv.stride[0], conv.padding[0]))
        return ops

    # --- computation -------------------------------------------------------------------
    def normalize(self, image01: torch.Tensor) -> torch.Tensor:
        return (image01 - self.mean) / self.std

    def classifier_weight(self) -> torch.Tensor:
        return self.net.fc.weight

    def extract(self, x: torch.Tensor, ids: Sequence[int], head: bool) -> BackboneOutput:
        wanted = set(ids)
        last_needed = self.num_ids - 1 if head else max(wanted)
        net = self.net
        feats: dict[int, torch.Tensor] = {}
        x = net.maxpool(self.folded_stem(x))
        if 0 in wanted:
            feats[0] = x
        for hid, block in enumerate(self.folded_blocks, start=1):
            if hid > last_needed:
                break
            if hid in wanted:
                feats[hid] = block(x)
                x = torch.relu(feats[hid])
            else:
                x = block(x, relu=True)
        if not head:
            return BackboneOutput(feats)
        logits = net.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        return BackboneOutput(feats, last_map=x, logits=logits)
