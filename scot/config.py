"""One typed configuration for the whole pipeline, and the named presets.

A :class:`SCOTConfig` holds every algorithm option.  Options left as ``None`` are filled
from the *preset* (``pfpascal``, ``pfwillow`` or ``spair``) for the chosen backbone when
the model is built; :meth:`SCOTConfig.resolve` returns the concrete configuration that
every output records.

The ResNet presets are those of the SCOT paper's code (Liu et al., CVPR 2020); ResNet-50
on PF-PASCAL/PF-WILLOW, for which SCOT gives none, uses Hyperpixel Flow's set.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .errors import ScotError

BACKBONES = ("resnet101", "resnet50", "efficientnet-lite0", "efficientnet-lite2")
SINKHORN_MODES = ("plain", "log")
COST_DTYPES = ("float32", "tf32")


@dataclass(frozen=True)
class Preset:
    """Per-benchmark defaults: hyperpixel ids per backbone, the plan exponent and the PCK rule."""

    name: str
    exp2: float
    hyperpixel_ids: dict[str, tuple[int, ...]]
    pck_threshold: str  # "img" or "bbox"
    description: str = ""
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-backbone defaults of other options (e.g. ``feature_scales``), filled where the
    configuration leaves them ``None``."""


PRESET_DIR = Path(__file__).with_name("presets")
"""Preset files shipped with the package, as written by ``scot search-layers``."""


def _shipped(name: str) -> dict[str, Any]:
    """The shipped preset file ``scot/presets/<name>.json``: its ids and its ``options``."""
    path = PRESET_DIR / f"{name}.json"
    try:
        doc = json.loads(path.read_text())
        ids = tuple(int(i) for i in doc["hyperpixel_ids"])
    except (OSError, KeyError, TypeError, ValueError) as exc:  # a broken installation, not a user error
        raise RuntimeError(f"scot installation: shipped preset {path} is missing or unreadable ({exc})") from exc
    return {"hyperpixel_ids": ids, "options": _preset_options(doc.get("options", {}), path)}


PRESET_OPTIONS = ("feature_scales", "center_features", "symmetric", "transfer")
"""Options besides the ids and ``exp2`` that a preset file may set."""

TRANSFERS = ("mean", "weighted", "median")

PAPER_OPTIONS: dict[str, Any] = {"feature_scales": (1.0,), "center_features": False, "symmetric": False, "transfer": "mean"}
"""What the preset options resolve to when neither the configuration nor the preset sets them."""


def _preset_options(options: Any, path: Path) -> dict[str, Any]:
    if not isinstance(options, dict) or set(options) - set(PRESET_OPTIONS):
        raise ScotError(f"--preset-file: {path}: 'options' must be an object with keys among {', '.join(PRESET_OPTIONS)}")
    out: dict[str, Any] = {}
    if "feature_scales" in options:
        try:
            out["feature_scales"] = tuple(float(v) for v in options["feature_scales"])
        except (TypeError, ValueError):
            raise ScotError(f"--preset-file: {path}: 'feature_scales' must be a list of numbers") from None
    for key in ("center_features", "symmetric"):
        if key in options:
            if not isinstance(options[key], bool):
                raise ScotError(f"--preset-file: {path}: '{key}' must be true or false")
            out[key] = options[key]
    if "transfer" in options:
        if options["transfer"] not in TRANSFERS:
            raise ScotError(f"--preset-file: {path}: 'transfer' must be one of {', '.join(TRANSFERS)}")
        out["transfer"] = options["transfer"]
    return out


_LITE = {b: _shipped(f"pfwillow-{b}") for b in ("efficientnet-lite0", "efficientnet-lite2")}


_PF_IDS = {
    "resnet101": (2, 22, 24, 25, 27, 28, 29),
    "resnet50": (2, 7, 11, 12, 13),
    # Found by `scot search-layers` on the shared PF-WILLOW development pairs; each file
    # records the command, the PCK of the best sets and their check on all 200 pairs.
    **{b: shipped["hyperpixel_ids"] for b, shipped in _LITE.items()},
}
_PF_OPTIONS = {b: shipped["options"] for b, shipped in _LITE.items()}

PRESETS: dict[str, Preset] = {
    "pfpascal": Preset("pfpascal", 0.5, dict(_PF_IDS), "img", "PF-PASCAL (SCOT paper settings)", dict(_PF_OPTIONS)),
    "pfwillow": Preset("pfwillow", 0.5, dict(_PF_IDS), "bbox", "PF-WILLOW (SCOT paper settings)", dict(_PF_OPTIONS)),
    "spair": Preset(
        "spair",
        1.0,
        {
            "resnet101": (0, 19, 27, 28, 29, 30),
            "resnet50": (0, 11, 12, 13),
            "efficientnet-lite0": (1, 9, 11, 13, 14, 15),
            "efficientnet-lite2": (1, 13, 15, 17, 18, 19, 20),
        },
        "bbox",
        "SPair-71k (SCOT paper settings)",
    ),
}
DEFAULT_PRESET = "pfpascal"


def parse_hyperpixel_ids(value: str | Iterable[int] | None) -> tuple[int, ...] | None:
    """Parse ``"(2,22,24)"``, ``"2 22 24"`` or an iterable of ints into a tuple of ids."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if re.search(r"[^\d,\s()\[\]]", text):
            raise ScotError(f"--hyperpixel: '{value}' is not a list of non-negative integers, e.g. '(2,22,24)'")
        ids = tuple(int(tok) for tok in re.findall(r"\d+", text))
    else:
        try:
            ids = tuple(int(v) for v in value)
        except (TypeError, ValueError):
            raise ScotError(f"hyperpixel ids {value!r} are not integers") from None
    if not ids:
        raise ScotError("--hyperpixel: the id list is empty")
    if len(set(ids)) != len(ids):
        raise ScotError(f"--hyperpixel: ids {ids} contain duplicates")
    if any(i < 0 for i in ids):
        raise ScotError(f"--hyperpixel: ids {ids} contain a negative id")
    return ids


@dataclass
class SCOTConfig:
    """Every option of the SCOT pipeline.  Defaults reproduce the paper's code."""

    # --- backbone and hyperpixels -------------------------------------------------------
    backbone: str = "auto"
    """``resnet101``, ``resnet50``, ``efficientnet-lite0``, ``efficientnet-lite2`` or ``auto``
    (ResNet-101 when its ImageNet weights are available, else EfficientNet-Lite2)."""
    weights: str | None = None
    """A state-dict file (torchvision/lukemelas key names), ``random`` or ``random:SEED``.
    ``None`` uses the backbone's pretrained ImageNet weights."""
    preset: str = DEFAULT_PRESET
    hyperpixel_ids: tuple[int, ...] | None = None
    """Selected feature layers (None: the preset's set for the backbone)."""
    image_side: int = 300
    """Images are resized so that their longest side is exactly this many pixels."""
    device: str = "cpu"

    # --- CAM and marginals --------------------------------------------------------------
    cam: bool = True
    cam_scales: tuple[float, ...] = (1.0, 1.5, 2.0)

    # --- cost -------------------------------------------------------------------------
    cost_dtype: str = "float32"
    """Precision of the correlation matmuls: ``float32``, or ``tf32`` (CUDA tensor cores)."""
    exp1: float = 1.0
    """Exponent on the clamped cosine when OT is off (HPF's 'cos' similarity)."""

    # --- optimal transport -------------------------------------------------------------
    ot: bool = True
    eps: float = 0.05
    sinkhorn_iters: int = 1
    sinkhorn_tol: float | None = None
    sinkhorn_mode: str = "plain"
    unbalanced_tau: float | None = None
    """KL weight of the relaxed marginals (None: balanced OT)."""
    max_eps_doublings: int = 10
    exp2: float | None = None
    """Exponent on the rescaled plan, (n·P)^exp2 (None: the preset's value)."""

    # --- regularized Hough matching ----------------------------------------------------
    rhm: bool = True
    rhm_cells: int = 8192
    rhm_kernel: int = 7

    # --- training-free refinements (off in the paper's setting) --------------------------
    subpixel: int = 0
    """Sub-pixel transfer: soft-argmax over a ``subpixel x subpixel`` target window (0: off)."""
    mutual: bool = False
    """Move keypoints only with mutually-best matches (when a keypoint has any)."""
    feature_scales: tuple[float, ...] | None = None
    """Input scales whose hyperpixel features are averaged (scales shared with the CAM
    passes cost no extra network pass).  None: the preset's scales for the backbone,
    ``(1,)`` (the paper) unless a shipped preset file says otherwise."""
    cam_weighting: str = "levels"
    """``levels`` (the paper's 0.5/0.8/0.9/1.0 steps) or ``linear`` (0.5 + 0.5 * CAM)."""
    center_features: bool | None = None
    """Subtract each image's mean hyperpixel before the cosine (None: the preset's; the
    paper does not)."""
    symmetric: bool | None = None
    """Also match target to source and add the two RHM confidences, each scaled to a
    maximum of 1 (None: the preset's; the paper matches one way)."""
    transfer: str | None = None
    """How a keypoint combines the displacements of the source boxes that contain it:
    ``mean`` (the paper), ``weighted`` (by match confidence) or ``median`` (None: the
    preset's)."""

    # --- execution ----------------------------------------------------------------------
    stream_block: int = 0
    """Low-memory mode: stream cost, Sinkhorn and RHM over blocks of about this many source
    hyperpixels (0: hold the whole N x M matrix; ~3x the matmul work when on)."""

    # --- bookkeeping ------------------------------------------------------------------
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every option; raise :class:`ScotError` naming the first bad one."""
        if self.backbone != "auto" and self.backbone not in BACKBONES:
            raise ScotError(f"--backbone: unknown backbone '{self.backbone}' (choose from auto, {', '.join(BACKBONES)})")
        if self.preset not in PRESETS:
            raise ScotError(f"--preset: unknown preset '{self.preset}' (choose from {', '.join(PRESETS)})")
        if self.hyperpixel_ids is not None:
            self.hyperpixel_ids = parse_hyperpixel_ids(self.hyperpixel_ids)
        if not (isinstance(self.eps, (int, float)) and self.eps > 0):
            raise ScotError(f"--eps: epsilon must be > 0, got {self.eps}")
        if self.image_side < 32:
            raise ScotError(f"--image-side: must be at least 32 px, got {self.image_side}")
        if self.sinkhorn_iters < 1:
            raise ScotError(f"--sinkhorn-iters: must be >= 1, got {self.sinkhorn_iters}")
        if self.sinkhorn_tol is not None and self.sinkhorn_tol <= 0:
            raise ScotError(f"--sinkhorn-tol: must be > 0, got {self.sinkhorn_tol}")
        if self.sinkhorn_mode not in SINKHORN_MODES:
            raise ScotError(f"--sinkhorn-mode: '{self.sinkhorn_mode}' is not one of {', '.join(SINKHORN_MODES)}")
        if self.unbalanced_tau is not None and self.unbalanced_tau <= 0:
            raise ScotError(f"--tau: the unbalanced-OT marginal weight must be > 0, got {self.unbalanced_tau}")
        if self.max_eps_doublings < 0:
            raise ScotError(f"max_eps_doublings must be >= 0, got {self.max_eps_doublings}")
        if self.exp2 is not None and self.exp2 <= 0:
            raise ScotError(f"--exp2: must be > 0, got {self.exp2}")
        if self.exp1 <= 0:
            raise ScotError(f"--exp1: must be > 0, got {self.exp1}")
        if self.cost_dtype not in COST_DTYPES:
            raise ScotError(f"--cost-dtype: '{self.cost_dtype}' is not one of {', '.join(COST_DTYPES)}")
        if self.cost_dtype == "tf32" and not str(self.device).startswith("cuda"):
            raise ScotError("--cost-dtype tf32 is a CUDA tensor-core format; use it with --device cuda")
        if self.rhm_cells < 1:
            raise ScotError(f"--rhm-cells: must be >= 1, got {self.rhm_cells}")
        if self.rhm_kernel < 1 or self.rhm_kernel % 2 == 0:
            raise ScotError(f"rhm_kernel must be a positive odd number, got {self.rhm_kernel}")
        if self.feature_scales is not None and (not self.feature_scales or 1.0 not in self.feature_scales
                                                or any(f <= 0 for f in self.feature_scales)):
            raise ScotError(f"--feature-scales: must be positive and include 1, got {self.feature_scales}")
        if self.cam_weighting not in ("levels", "linear"):
            raise ScotError(f"--cam-weighting: '{self.cam_weighting}' is not one of levels, linear")
        if self.transfer is not None and self.transfer not in TRANSFERS:
            raise ScotError(f"--transfer: '{self.transfer}' is not one of {', '.join(TRANSFERS)}")
        if self.stream_block and self.symmetric:
            raise ScotError("--symmetric matches both ways on the whole N x M matrix; it cannot be combined with --low-memory")
        if self.subpixel < 0 or (self.subpixel and self.subpixel % 2 == 0):
            raise ScotError(f"--subpixel: the window must be an odd size (3, 5, ...) or 0, got {self.subpixel}")
        if self.stream_block < 0:
            raise ScotError(f"--low-memory: block size must be >= 0, got {self.stream_block}")
        if self.stream_block and (not self.ot or self.sinkhorn_mode == "log" or self.sinkhorn_tol is not None
                                  or self.subpixel or self.mutual):
            raise ScotError("--low-memory streams plain Sinkhorn with a fixed iteration count; it cannot be combined "
                            "with --no-ot, --sinkhorn-mode log, --sinkhorn-tol, --subpixel or --mutual")
        if not self.cam_scales or any(s <= 0 for s in self.cam_scales):
            raise ScotError(f"cam_scales must be positive, got {self.cam_scales}")

    # ------------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, preset: str = DEFAULT_PRESET, **overrides: Any) -> "SCOTConfig":
        """The configuration of a named preset, with keyword overrides."""
        return cls(preset=preset, **overrides)

    def replace(self, **changes: Any) -> "SCOTConfig":
        return dataclasses.replace(self, **changes)

    def resolve(self, backbone: str) -> "SCOTConfig":
        """Fill preset-dependent options for a concrete backbone."""
        preset = PRESETS[self.preset]
        ids = self.hyperpixel_ids
        if ids is None:
            ids = preset.hyperpixel_ids.get(backbone)
            if ids is None:
                raise ScotError(f"--preset: preset '{self.preset}' has no hyperpixel ids for backbone '{backbone}'; pass --hyperpixel")
        exp2 = preset.exp2 if self.exp2 is None else self.exp2
        options = {**PAPER_OPTIONS, **preset.options.get(backbone, {})}
        filled = {k: options[k] if getattr(self, k) is None else getattr(self, k) for k in PRESET_OPTIONS}
        if self.stream_block and self.symmetric is None:
            filled["symmetric"] = False  # low-memory streaming matches one way (see dropped_by_low_memory)
        filled["feature_scales"] = tuple(filled["feature_scales"])
        return dataclasses.replace(self, backbone=backbone, hyperpixel_ids=tuple(ids), exp2=exp2, **filled)

    def dropped_by_low_memory(self, backbone: str) -> bool:
        """True when the preset would match both ways but ``--low-memory`` matches one way."""
        options = PRESETS[self.preset].options.get(backbone, {})
        return bool(self.stream_block and self.symmetric is None and options.get("symmetric", False))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SCOTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ScotError(f"configuration: unknown option(s) {', '.join(unknown)}")
        kwargs = dict(data)
        for key in ("hyperpixel_ids", "cam_scales", "feature_scales"):
            if kwargs.get(key) is not None:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


def load_preset_file(path: str | Path, backbone: str | None = None) -> dict[str, Any]:
    """Read a preset JSON written by ``scot search-layers``.

    Returns the options it sets (``hyperpixel_ids``; ``exp2``, ``backbone`` and the
    ``options`` object, e.g. ``feature_scales``, when present).
    The file holds either one result or a ``results`` list ranked best first; the best
    entry for ``backbone`` (or the overall best) is used.
    """
    p = Path(path)
    if not p.is_file():
        raise ScotError(f"--preset-file: {p} does not exist or is not a file")
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ScotError(f"--preset-file: {p} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ScotError(f"--preset-file: {p} must hold a JSON object")
    file_backbone = data.get("backbone")
    if backbone is not None and file_backbone is not None and backbone != file_backbone and backbone != "auto":
        raise ScotError(f"--preset-file: {p} was searched for backbone '{file_backbone}', not '{backbone}'")
    entry = data
    if "results" in data:
        results = data["results"]
        if not isinstance(results, list) or not results:
            raise ScotError(f"--preset-file: {p} has an empty 'results' list")
        entry = results[0]
    if "hyperpixel_ids" not in entry:
        raise ScotError(f"--preset-file: {p} has no 'hyperpixel_ids'")
    out: dict[str, Any] = {"hyperpixel_ids": parse_hyperpixel_ids(entry["hyperpixel_ids"])}
    for key in ("exp2",):
        if key in data:
            out[key] = float(data[key])
    out.update(_preset_options(data.get("options", {}), p))
    if file_backbone is not None:
        out["backbone"] = file_backbone
    return out
