"""The named presets: per-benchmark defaults, the files that ship them, and preset files.

A preset (``pfpascal``, ``pfwillow``, ``spair``) gives, per backbone, the hyperpixel ids,
the plan exponent ``exp2``, the PCK rule, and defaults of a few other options
(:data:`PRESET_OPTIONS`).  The ResNet presets are those of the SCOT paper's code (Liu et
al., CVPR 2020); ResNet-50 on PF-PASCAL/PF-WILLOW, for which SCOT gives none, uses
Hyperpixel Flow's set.  The EfficientNet-Lite ids and options of each preset are the
files of this folder, ``<preset>-<backbone>.json``, each chosen on that benchmark's
validation pairs: the PF-WILLOW ones written by ``scot search-layers`` (each records its
command and the PCK behind its choice), the PF-PASCAL and SPair-71k ones from the
``scot eval`` runs they list (each with its command and figures).

:func:`read_preset_file` reads such a file, shipped or the user's ``--preset-file``.  What a
valid value of an option is belongs to the option's declaration
(:class:`~scot.config.SCOTConfig`), so the reader takes it as ``check``; this module
depends only on the error type and the JSON reader, and :mod:`scot.config` on it.

The command line's help about presets (:func:`preset_help`, :func:`preset_default`) is
generated from :data:`PRESETS`, so it cannot drift from the data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ScotError
from ..io import read_json

BACKBONES = ("resnet101", "resnet50", "efficientnet-lite0", "efficientnet-lite2")
DEFAULT_PRESET = "pfpascal"

PRESET_DIR = Path(__file__).parent
"""Preset files shipped with the package, as written by ``scot search-layers``."""

PRESET_OPTIONS = ("feature_scales", "center_features", "symmetric", "transfer", "flip")
"""Options besides the ids and ``exp2`` that a preset file may set."""

FILE_OPTIONS = ("exp2",) + PRESET_OPTIONS
"""Every option a preset file may set besides the ids (what ``scot search-layers --try`` may vary)."""

PAPER_OPTIONS: dict[str, Any] = {"feature_scales": (1.0,), "center_features": False, "symmetric": False,
                                 "transfer": "mean", "flip": "off"}
"""What the preset options resolve to when neither the configuration nor the preset sets them."""

Check = Callable[[str, Any], Any]
"""``check(option, value)``: the value as the option holds it, or a :class:`ScotError` whose
message says what is wrong (without naming the file, which the reader adds)."""


@dataclass(frozen=True)
class Preset:
    """Per-benchmark defaults: hyperpixel ids per backbone, the plan exponent and the PCK rule."""

    name: str
    exp2: float
    hyperpixel_ids: dict[str, tuple[int, ...]]
    pck_threshold: str  # "img" or "bbox"
    description: str = ""  # the benchmark
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-backbone defaults of other options (e.g. ``feature_scales``), filled where the
    configuration leaves them ``None``."""


def _file_error(path: Path, message: str) -> ScotError:
    return ScotError(f"{path}: {message}", option="preset_file")


def _checked(check: Check, path: Path, name: str, value: Any) -> Any:
    try:
        return check(name, value)
    except ScotError as exc:
        raise _file_error(path, f"'{name}' {exc.message}") from None


def read_preset_file(path: str | Path, check: Check, backbone: str | None = None) -> dict[str, Any]:
    """Read a preset JSON written by ``scot search-layers``.

    The file's top-level ``hyperpixel_ids`` are authoritative: they are what the file says
    to use.  When it also holds a ``results`` list (ranked best first), its first entry must
    carry the same ids, so an edit of one without the other is an error rather than a
    silent choice.  Every value is checked by ``check`` exactly as the option would be
    (no coercion: ``[3.5, 11]`` or ``[3, true]`` are not ids); errors are one line naming
    the file and the field.

    Args:
        path: the file.
        check: the option check (:data:`Check`).
        backbone: the backbone the file will be used with (``auto`` or None: any).

    Returns:
        The options it sets: ``hyperpixel_ids``, and ``exp2``, ``backbone`` and the
        ``options`` object's fields when present.
    """
    p = Path(path)
    data = read_json(p, str(p), option="preset_file")
    if not isinstance(data, dict):
        raise ScotError(f"{p} must hold a JSON object", option="preset_file")
    file_backbone = data.get("backbone")
    if file_backbone is not None and (not isinstance(file_backbone, str) or file_backbone not in BACKBONES):
        raise _file_error(p, f"unknown backbone {file_backbone!r}")
    if backbone is not None and file_backbone is not None and backbone not in (file_backbone, "auto"):
        raise ScotError(f"{p} was searched for backbone '{file_backbone}', not '{backbone}'", option="preset_file")
    if "hyperpixel_ids" not in data:
        raise _file_error(p, "no top-level 'hyperpixel_ids'")
    ids = _checked(check, p, "hyperpixel_ids", data["hyperpixel_ids"])
    results = data.get("results")
    if results is not None:
        if not isinstance(results, list) or not results or not isinstance(results[0], dict):
            raise _file_error(p, "'results' must be a non-empty list of objects")
        best = results[0].get("hyperpixel_ids")
        same = isinstance(best, list) and all(type(i) is int for i in best) and sorted(best) == sorted(ids or ())
        if not same:
            raise _file_error(p, f"top-level 'hyperpixel_ids' {list(ids or ())} differ from the best result's "
                                 f"{best}; edit both or remove 'results'")
    out: dict[str, Any] = {"hyperpixel_ids": ids}
    if data.get("exp2") is not None:
        out["exp2"] = _checked(check, p, "exp2", data["exp2"])
    options = data.get("options", {})
    if not isinstance(options, dict) or set(options) - set(PRESET_OPTIONS):
        raise _file_error(p, f"'options' must be an object with keys among {', '.join(PRESET_OPTIONS)}")
    out.update({key: _checked(check, p, key, value) for key, value in options.items()})
    if file_backbone is not None:
        out["backbone"] = file_backbone
    return out


def _as_written(name: str, value: Any) -> Any:
    """The shipped files' values, lists as tuples (the configuration checks them on import)."""
    return tuple(value) if isinstance(value, list) else value


def _shipped(name: str) -> dict[str, Any]:
    """The shipped preset file ``scot/presets/<name>.json``: its ids and its options."""
    path = PRESET_DIR / f"{name}.json"
    try:
        return read_preset_file(path, _as_written)
    except ScotError as exc:  # a broken installation, not a user error
        raise RuntimeError(f"scot installation: shipped preset {path} is missing or unreadable ({exc})") from None


LITE_BACKBONES = ("efficientnet-lite0", "efficientnet-lite2")
# The EfficientNet-Lite settings of each benchmark, chosen on its validation (PF-WILLOW:
# development) pairs: pfwillow-*.json by `scot search-layers` (each records the command, the
# PCK of the best sets and their check on all 200 pairs); pfpascal-*.json and spair-*.json
# by `scot eval` runs of the settings they list, with their figures.
_LITE = {p: {b: _shipped(f"{p}-{b}") for b in LITE_BACKBONES} for p in ("pfpascal", "pfwillow", "spair")}
_RESNET_IDS = {
    "pf": {"resnet101": (2, 22, 24, 25, 27, 28, 29), "resnet50": (2, 7, 11, 12, 13)},
    "spair": {"resnet101": (0, 19, 27, 28, 29, 30), "resnet50": (0, 11, 12, 13)},
}


def _preset(name: str, exp2: float, resnet: str, thres: str, description: str) -> Preset:
    """A preset: the ResNet ids of the SCOT paper (``resnet``: its PF or SPair choice) and the
    shipped Lite files of ``name``."""
    lite = _LITE[name]
    for backbone, f in lite.items():  # exp2 is one per preset; a shipped file must agree with it
        if f.get("exp2", exp2) != exp2:
            raise RuntimeError(f"scot installation: the {name} preset file of {backbone} sets exp2 {f['exp2']}, "
                               f"not the preset's {exp2}")
    ids = {**_RESNET_IDS[resnet], **{b: f["hyperpixel_ids"] for b, f in lite.items()}}
    options = {b: {k: v for k, v in f.items() if k in PRESET_OPTIONS} for b, f in lite.items()}
    return Preset(name, exp2, ids, thres, description, options)


PRESETS: dict[str, Preset] = {
    "pfpascal": _preset("pfpascal", 0.5, "pf", "img", "PF-PASCAL"),
    "pfwillow": _preset("pfwillow", 0.5, "pf", "bbox", "PF-WILLOW"),
    "spair": _preset("spair", 1.0, "spair", "bbox", "SPair-71k"),
}


# --------------------------------------------------------------------------------------
# Help text generated from the data
def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return ",".join(f"{v:g}" for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def preset_names() -> tuple[str, ...]:
    """The preset names, in :data:`PRESETS` order."""
    return tuple(PRESETS)


def preset_help() -> str:
    """The ``--preset`` help: every preset with its PCK rule and ``exp2``."""
    each = [f"{p.name} ({p.description}: exp2 {p.exp2:g}, PCK by {p.pck_threshold})" for p in PRESETS.values()]
    return f"Named settings, each with hyperpixel ids per backbone: {_listed(each)}."


def preset_default(option: str) -> str:
    """How the default of a preset-filled ``option`` (``exp2`` or one of
    :data:`PRESET_OPTIONS`) is shown: its value in each preset and backbone, grouped."""
    if option == "exp2":
        groups: dict[str, list[str]] = {}
        for p in PRESETS.values():
            groups.setdefault(_shown(p.exp2), []).append(p.name)
        return "the preset's: " + ", ".join(f"{v} on {'/'.join(names)}" for v, names in groups.items())
    paper = PAPER_OPTIONS[option]
    cases: dict[str, dict[str, list[str]]] = {}  # value -> presets -> backbones
    for p in PRESETS.values():
        for backbone in BACKBONES:
            value = p.options.get(backbone, {}).get(option, paper)
            if value != paper:
                cases.setdefault(_shown(value), {}).setdefault(backbone, []).append(p.name)
    parts = []
    for value, where in cases.items():
        by_presets: dict[str, list[str]] = {}
        for backbone, names in where.items():
            by_presets.setdefault("/".join(names), []).append(backbone)
        parts += [f"{value} for {_listed(backbones)} on {presets}" for presets, backbones in by_presets.items()]
    return "the preset's: " + ", ".join(parts + [f"else {_shown(paper)}"])
