"""One typed configuration for the whole pipeline.

:class:`SCOTConfig` declares every algorithm option once: its type, default, help text,
valid range and command-line flag live in one field (:func:`option`).  The command line
generates its options from these fields, and :meth:`SCOTConfig.validate` checks them from
the same declaration, so help, defaults and checks cannot drift apart.

Options left as ``None`` are filled from the *preset* (:mod:`scot.presets`) for the chosen
backbone; :meth:`SCOTConfig.resolve` returns the concrete configuration that every output
records.  :func:`load_preset_file` reads a user's preset file, each value checked by its
option's declaration.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ScotError
from .presets import (
    BACKBONES,
    DEFAULT_PRESET,
    PAPER_OPTIONS,
    PRESET_OPTIONS,
    PRESETS,
    Preset,
    preset_default,
    preset_help,
    preset_names,
    read_preset_file,
)
from .solver import SolverPlan

__all__ = ["BACKBONES", "DEFAULT_PRESET", "PAPER_OPTIONS", "PRESETS", "PRESET_OPTIONS", "Preset", "SCOTConfig", "Spec",
           "TRANSFERS", "build_config", "check_option", "kind", "load_preset_file", "option", "options_table",
           "parse_hyperpixel_ids", "specs"]

TRANSFERS = ("mean", "weighted", "median")


# --------------------------------------------------------------------------------------
# Declaring an option
@dataclass(frozen=True)
class Spec:
    """How one option is shown, parsed and checked (the metadata of a config field)."""

    help: str
    flag: str  # "--eps"; booleans "--on/--off" (or a single flag)
    choices: tuple[Any, ...] | None = None
    low: float | None = None  # inclusive lower bound
    above: float | None = None  # exclusive lower bound
    parse: Callable[[str], Any] | None = None  # command-line text -> value
    unset: str | None = None  # what a None default means, shown as the default
    short: str | None = None  # a one-letter alias, e.g. "-b"

    @property
    def flags(self) -> list[str]:
        return self.flag.split("/")


def option(default: Any, help: str, flag: str, **spec: Any) -> Any:
    """A :class:`SCOTConfig` field: its default and its :class:`Spec`."""
    return field(default=default, metadata={"spec": Spec(help, flag, **spec)})


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise ScotError(f"'{text}' is not a list of numbers, e.g. '1,1.5,2'") from None


def _is_integer(value: Any) -> bool:
    """An int-like value (int, NumPy or 0-d integer tensor), not a float that happens to be whole."""
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def _shown_item(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else repr(value)


def _shown_list(values: list[Any]) -> str:
    text = "[" + ", ".join(_shown_item(v) for v in values) + "]"
    return text if len(text) <= 60 else text[:57] + "..."


def parse_hyperpixel_ids(value: str | Iterable[int] | None, option: str = "hyperpixel_ids") -> tuple[int, ...] | None:
    """Parse ``"(2,22,24)"``, ``"2 22 24"`` or an iterable of ints into a tuple of ids
    (errors name ``option``)."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if re.search(r"[^\d,\s()\[\]]", text):
            raise ScotError(f"'{value}' is not a list of non-negative integers, e.g. '(2,22,24)'", option=option)
        ids = tuple(int(tok) for tok in re.findall(r"\d+", text))
    else:
        try:
            items = list(value)
        except TypeError:
            raise ScotError(f"{value!r} is not a list of non-negative integers", option=option) from None
        wrong = [v for v in items if isinstance(v, bool) or not _is_integer(v)]
        if wrong:  # no coercion: 3.5 or true is not an id, as '(3.5,11)' is not on the command line
            raise ScotError(f"must be a list of non-negative integers, got {_shown_list(items)} "
                            f"({_shown_item(wrong[0])} is not an integer)", option=option)
        ids = tuple(operator.index(v) for v in items)
    if not ids:
        raise ScotError("the id list is empty", option=option)
    if len(set(ids)) != len(ids):
        raise ScotError(f"ids {ids} contain duplicates", option=option)
    if any(i < 0 for i in ids):
        raise ScotError(f"ids {ids} contain a negative id", option=option)
    return ids


# --------------------------------------------------------------------------------------
@dataclass
class SCOTConfig:
    """Every option of the SCOT pipeline.  Defaults reproduce the paper's code."""

    # --- backbone and hyperpixels ---------------------------------------------------------
    backbone: str = option(
        "auto", "resnet101, resnet50, efficientnet-lite0, efficientnet-lite2, or auto (ResNet-101 when its "
        "ImageNet weights are available, else EfficientNet-Lite2).", "--backbone", choices=("auto", *BACKBONES),
        short="-b")
    weights: str | None = option(
        None, "A state-dict file for the backbone (torchvision or lukemelas key names), or random[:SEED].",
        "--weights", unset="the backbone's ImageNet weights")
    preset: str = option(
        DEFAULT_PRESET, preset_help(), "--preset", choices=preset_names())
    hyperpixel_ids: tuple[int, ...] | None = option(
        None, "Hyperpixel ids, e.g. '(2,22,24,25,27,28,29)'; 'scot layers' lists them.", "--hyperpixel",
        parse=parse_hyperpixel_ids, unset="the preset's")
    image_side: int = option(300, "Longest image side after resizing, in pixels.", "--image-side", low=32)
    device: str = option("cpu", "cpu, cuda or cuda:INDEX.", "--device")

    # --- CAM and marginals ----------------------------------------------------------------
    cam: bool = option(
        True, "Weight the transport marginals with class activation maps (off: uniform).", "--cam/--no-cam")
    cam_scales: tuple[float, ...] = option(
        (1.0, 1.5, 2.0), "Input scales of the class activation map.", "--cam-scales", parse=_floats, above=0)
    cam_weighting: str = option(
        "levels", "levels (the paper's 0.5/0.8/0.9/1.0 steps) or linear (0.5 + 0.5 CAM).", "--cam-weighting",
        choices=("levels", "linear"))

    # --- features -------------------------------------------------------------------------
    feature_scales: tuple[float, ...] | None = option(
        None, "Average hyperpixel features over these input scales, e.g. '1,1.5,2' (scales shared with the CAM "
        "cost no extra network pass); must include 1.", "--feature-scales", parse=_floats, above=0,
        unset=preset_default("feature_scales"))
    center_features: bool | None = option(
        None, "Subtract each image's mean hyperpixel before the cosine.", "--center-features/--no-center-features",
        unset=preset_default("center_features"))

    # --- cost -----------------------------------------------------------------------------
    tf32: bool = option(
        False, "Let CUDA matmuls and convolutions use TF32 tensor cores (faster on Ampere and newer GPUs, about "
        "1e-3 relative error). Off: exact float32 everywhere.", "--tf32/--no-tf32")
    exp1: float = option(1.0, "Exponent on the clamped cosine when optimal transport is off (HPF's similarity).",
                         "--exp1", above=0)

    # --- optimal transport ----------------------------------------------------------------
    ot: bool = option(True, "Optimal transport (off: nearest neighbour on the cosine).", "--ot/--no-ot")
    eps: float = option(0.05, "Entropic regularisation of Sinkhorn.", "--eps", above=0)
    sinkhorn_iters: int = option(1, "Sinkhorn iterations (the paper's code runs 1).", "--sinkhorn-iters", low=1)
    sinkhorn_tol: float | None = option(
        None, "Stop Sinkhorn early once the L1 marginal error is below this.", "--sinkhorn-tol", above=0,
        unset="run every iteration")
    sinkhorn_mode: str = option(
        "plain", "plain, or log (log-domain iterations, stable at small eps).", "--sinkhorn-mode",
        choices=("plain", "log"))
    unbalanced_tau: float | None = option(
        None, "Unbalanced OT: KL weight of the relaxed marginals.", "--tau", above=0, unset="balanced OT")
    max_eps_doublings: int = option(
        10, "How many times eps may be doubled when the plain plan is not finite.", "--max-eps-doublings", low=0)
    exp2: float | None = option(
        None, "Exponent of the rescaled plan (N P)^exp2.", "--exp2", above=0,
        unset=preset_default("exp2"))

    # --- regularized Hough matching -------------------------------------------------------
    rhm: bool = option(True, "Regularized Hough matching.", "--rhm/--no-rhm")
    rhm_cells: int = option(8192, "About how many cells the Hough space has.", "--rhm-cells", low=1)
    rhm_kernel: int = option(7, "Side of the Gaussian that smooths the Hough histogram (odd).", "--rhm-kernel", low=1)

    # --- matching and transfer ------------------------------------------------------------
    symmetric: bool | None = option(
        None, "Also match target to source and add the two RHM confidences, each scaled to a maximum of 1.",
        "--symmetric/--one-way", unset=preset_default("symmetric"))
    transfer: str | None = option(
        None, "How a keypoint combines the moves of the boxes that contain it: mean, weighted (by match "
        "confidence) or median.", "--transfer", choices=TRANSFERS,
        unset=preset_default("transfer"))
    subpixel: int = option(
        0, "Sub-pixel transfer: soft-argmax of the confidence over an NxN target window (odd N; 0: off).",
        "--subpixel", low=0)
    flip: str | None = option(
        None, "Mirror-aware matching: off, or auto (also match the mirrored source and keep the mirror when its "
        "matches keep left-right order clearly better; see docs/accuracy.md).", "--flip", choices=("off", "auto"),
        unset=preset_default("flip"))
    flip_margin: float = option(
        0.05, "With --flip auto: by how much the mirror's left-right order (a correlation in [-1, 1]) must beat the "
        "plain match's for the mirror to be kept (-2: always).", "--flip-margin", low=-2)
    sided_parts: str = option(
        "swap", "With --flip auto, on a benchmark that names its parts with a side (SPair-71k): a kept mirror moves "
        "each such keypoint by its partner's match, so a left wing tip lands on the target's left wing tip (swap), "
        "or by its own, landing on its mirrored look-alike (keep).", "--sided-parts", choices=("swap", "keep"))
    mutual: bool = option(False, "Move keypoints only with mutually-best matches (when a keypoint has any).",
                          "--mutual/--no-mutual")

    # --- execution ------------------------------------------------------------------------
    low_memory: bool = option(
        False, "Stream the cost, Sinkhorn and RHM over blocks of rows: no N x M matrix in memory, about 3x the "
        "correlation work; matches one way.", "--low-memory/--in-memory")
    low_memory_rows: int = option(1024, "Source hyperpixels per block in low-memory mode.", "--low-memory-rows", low=1)

    # ------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every option; raise :class:`ScotError` naming the first bad one."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, _checked(f.name, getattr(self, f.name), f.metadata["spec"], f.default))
        if self.feature_scales is not None and 1.0 not in self.feature_scales:
            raise ScotError(f"must include 1, got {self.feature_scales}", option="feature_scales")
        if self.rhm_kernel % 2 == 0:
            raise ScotError(f"must be odd, got {self.rhm_kernel}", option="rhm_kernel")
        if self.subpixel and self.subpixel % 2 == 0:
            raise ScotError(f"the window must be an odd size (3, 5, ...) or 0, got {self.subpixel}", option="subpixel")
        if self.tf32 and not str(self.device).startswith("cuda"):
            raise ScotError("TF32 is a CUDA tensor-core format; use it with a cuda device", option="tf32")
        if self.low_memory and self.symmetric:
            raise ScotError("two-way matching needs the whole N x M matrix; it cannot be combined with low memory",
                            option="symmetric")
        plan = SolverPlan.of(self)
        if self.low_memory and not plan.can_stream:
            raise ScotError("low memory streams plain Sinkhorn with a fixed iteration count; it cannot be combined "
                            f"with {plan.blocker_text()}", option="low_memory")

    # ------------------------------------------------------------------------------------
    def replace(self, **changes: Any) -> SCOTConfig:
        return dataclasses.replace(self, **changes)

    def resolve(self, backbone: str) -> SCOTConfig:
        """Fill preset-dependent options for a concrete backbone."""
        preset = PRESETS[self.preset]
        ids = self.hyperpixel_ids
        if ids is None:
            ids = preset.hyperpixel_ids.get(backbone)
            if ids is None:
                raise ScotError(f"preset '{self.preset}' has no hyperpixel ids for backbone '{backbone}'; give them",
                                option="hyperpixel_ids")
        exp2 = preset.exp2 if self.exp2 is None else self.exp2
        options = {**PAPER_OPTIONS, **preset.options.get(backbone, {})}
        filled = {k: options[k] if getattr(self, k) is None else getattr(self, k) for k in PRESET_OPTIONS}
        if self.low_memory and self.symmetric is None:
            filled["symmetric"] = False  # low-memory streaming matches one way (see dropped_by_low_memory)
        filled["feature_scales"] = tuple(filled["feature_scales"])
        return dataclasses.replace(self, backbone=backbone, hyperpixel_ids=tuple(ids), exp2=exp2, **filled)

    def dropped_by_low_memory(self, backbone: str) -> bool:
        """True when the preset would match both ways but low-memory mode matches one way."""
        options = PRESETS[self.preset].options.get(backbone, {})
        return bool(self.low_memory and self.symmetric is None and options.get("symmetric", False))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SCOTConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ScotError(f"unknown option(s) {', '.join(unknown)}", option="configuration")
        return cls(**data)


_KINDS: dict[str, str] = {}


def specs() -> dict[str, Spec]:
    """Every :class:`SCOTConfig` field's :class:`Spec`, in declaration order."""
    return {f.name: f.metadata["spec"] for f in dataclasses.fields(SCOTConfig)}


def kind(name: str) -> str:
    """The value kind of an option: bool, int, float, str, floats (a list) or ids."""
    return _KINDS[name]


def _kind(name: str) -> str:
    """The value kind of a field from its annotation: bool, int, float, str, floats or ids."""
    hint = str(typing.get_type_hints(SCOTConfig)[name])
    for token, kind in (("bool", "bool"), ("tuple[int", "ids"), ("tuple[float", "floats"), ("int", "int"),
                        ("float", "float"), ("str", "str")):
        if token in hint:
            return kind
    raise TypeError(f"SCOTConfig.{name}: unsupported annotation {hint}")


def _checked(name: str, value: Any, spec: Spec, default: Any) -> Any:
    """``value`` converted to the field's kind and checked against ``spec`` (ScotError if bad)."""
    if value is None:
        if default is not None:
            raise ScotError("must be given (None is not allowed)", option=name)
        return None
    kind = _KINDS[name]
    if spec.parse is not None and isinstance(value, str):
        try:
            value = spec.parse(value)
        except ScotError as exc:
            raise ScotError(exc.message, option=name) from None
    if kind == "ids":
        if isinstance(value, (str, bytes)):  # text was parsed above; bytes are not ids
            raise ScotError(f"must be a list of non-negative integers, got {value!r}", option=name)
        return parse_hyperpixel_ids(value)
    if kind == "floats":
        if not isinstance(value, (list, tuple)) or not value:
            raise ScotError(f"must be a non-empty list of numbers, got {value!r}", option=name)
        items = tuple(_number(name, v, float) for v in value)
        for v in items:
            _bounds(name, v, spec)
        return items
    if kind == "bool":
        if not isinstance(value, bool):
            raise ScotError(f"must be true or false, got {value!r}", option=name)
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise ScotError(f"must be text, got {value!r}", option=name)
        if spec.choices is not None and value not in spec.choices:
            raise ScotError(f"'{value}' is not one of {', '.join(spec.choices)}", option=name)
        return value
    value = _number(name, value, int if kind == "int" else float)
    _bounds(name, value, spec)
    return value


def _number(name: str, value: Any, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ScotError(f"must be a number, got {value!r}", option=name)
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise ScotError(f"must be a whole number, got {value!r}", option=name)
        return int(value)
    if not math.isfinite(value):
        raise ScotError(f"must be a finite number, got {value!r}", option=name)
    return float(value)


def _bounds(name: str, value: float, spec: Spec) -> None:
    if spec.low is not None and value < spec.low:
        raise ScotError(f"must be at least {spec.low:g}, got {value:g}", option=name)
    if spec.above is not None and value <= spec.above:
        raise ScotError(f"must be > {spec.above:g}, got {value:g}", option=name)


def check_option(name: str, value: Any) -> Any:
    """``value`` as option ``name`` holds it, checked by the option's declaration
    (:class:`ScotError` without the option's name otherwise): the ``check`` of
    :func:`scot.presets.read_preset_file`."""
    f = _FIELDS[name]
    try:
        return _checked(name, value, f.metadata["spec"], f.default)
    except ScotError as exc:
        raise ScotError(exc.message) from None


def load_preset_file(path: str | Path, backbone: str | None = None) -> dict[str, Any]:
    """Read a preset JSON written by ``scot search-layers`` (:func:`scot.presets.read_preset_file`),
    every value checked as its option is, with one-line errors naming the file and field.

    Returns:
        The options it sets: ``hyperpixel_ids``, and ``exp2``, ``backbone`` and the
        ``options`` object's fields when present.
    """
    return read_preset_file(path, check_option, backbone)


_FIELDS = {f.name: f for f in dataclasses.fields(SCOTConfig)}
_KINDS.update({name: _kind(name) for name in _FIELDS})


def _check_shipped(presets: Mapping[str, Preset]) -> None:
    """The shipped presets pass the options' own checks (else the installation is broken)."""
    for preset in presets.values():
        try:
            check_option("exp2", preset.exp2)
            for ids in preset.hyperpixel_ids.values():
                check_option("hyperpixel_ids", ids)
            for options in preset.options.values():
                for name, value in options.items():
                    check_option(name, value)
        except ScotError as exc:
            raise RuntimeError(f"scot installation: preset {preset.name} is invalid ({exc})") from None


_check_shipped(PRESETS)


def build_config(options: Mapping[str, Any], preset_file: str | Path | None = None) -> SCOTConfig:
    """A configuration from option values, with the precedence
    defaults < preset < preset file < explicit options.

    Args:
        options: field name -> value; ``None`` leaves the field unset (its default).
        preset_file: a ``scot search-layers`` JSON whose ids and options apply unless an
            explicit option overrides them; its backbone replaces ``auto``.
    """
    fields = {k: v for k, v in options.items() if v is not None}
    if preset_file is not None:
        from_file = load_preset_file(preset_file, fields.get("backbone"))
        file_backbone = from_file.pop("backbone", None)
        if file_backbone is not None and fields.get("backbone", "auto") == "auto":
            fields["backbone"] = file_backbone
        fields = {**from_file, **fields}
    return SCOTConfig(**fields)


def options_table() -> str:
    """The Markdown table of every option (flag, default, meaning), as the README shows it."""
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(SCOTConfig):
        spec: Spec = f.metadata["spec"]
        flags = " / ".join(f"`{x}`" for x in spec.flags)
        if f.default is None:
            default = spec.unset or ""
        elif isinstance(f.default, bool):
            default = "on" if f.default else "off"
        elif isinstance(f.default, tuple):
            default = "`" + ",".join(f"{v:g}" for v in f.default) + "`"
        else:
            default = f"`{f.default}`"
        rows.append(f"| {flags} | {default} | {spec.help} |")
    return "\n".join(rows)
