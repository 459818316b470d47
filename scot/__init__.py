"""scot: training-free semantic correspondence (SCOT, Liu et al., CVPR 2020).

The modules follow the pipeline, one concept each: image loading and resizing, backbones,
then the steps features (which make each image's hyperpixels) -> cost -> ot -> rhm ->
transfer -> pck, with :class:`SCOT` (model.py) tying them together; the dense outputs, the
match record, what ``scot match`` writes, evaluation, benchmarks and the command line sit on
top.  The README's "Code layout" section maps every module and package of ``scot/`` (a
test keeps it in step with the tree).

>>> from scot import SCOT, SCOTConfig
>>> result = SCOT(SCOTConfig(backbone="efficientnet-lite2"))("a.jpg", "b.jpg", keypoints=[[10, 20]])  # doctest: +SKIP
"""

from .config import PRESETS, SCOTConfig, load_preset_file, parse_hyperpixel_ids
from .errors import ScotError
from .hyperpixels import Hyperpixels
from .model import SCOT, MatchResult
from .version import __version__

__all__ = [
    "SCOT", "SCOTConfig", "MatchResult", "Hyperpixels", "ScotError", "PRESETS",
    "load_preset_file", "parse_hyperpixel_ids", "__version__",
]
