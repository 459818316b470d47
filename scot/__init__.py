"""scot: training-free semantic correspondence (SCOT, Liu et al., CVPR 2020).

The package is laid out as the pipeline::

    image.py      load + resize to 300 px
    backbones/    CNNs exposing numbered hyperpixel ids (ResNet, EfficientNet-Lite)
    features.py   hyperpixel fusion and receptive-field boxes
    cam.py        class activation maps -> OT marginals
    cost.py       1 - clamp(cos, 0)
    ot.py         batched Sinkhorn (plain, log-domain, unbalanced)
    rhm.py        regularized Hough matching
    transfer.py   matches and keypoint transfer
    model.py      SCOT: the public API tying them together
    viz2d.py      match visualisation

>>> from scot import SCOT, SCOTConfig
>>> result = SCOT(SCOTConfig(backbone="efficientnet-lite2"))("a.jpg", "b.jpg", keypoints=[[10, 20]])  # doctest: +SKIP
"""

from .config import PRESETS, SCOTConfig, load_preset_file, parse_hyperpixel_ids
from .errors import ScotError
from .features import Hyperpixels
from .model import SCOT, MatchResult
from .version import __version__

__all__ = [
    "SCOT", "SCOTConfig", "MatchResult", "Hyperpixels", "ScotError", "PRESETS",
    "load_preset_file", "parse_hyperpixel_ids", "__version__",
]
