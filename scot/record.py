"""The JSON record of a matched pair: one builder for ``scot match`` and the API.

:func:`match_record` is the record ``scot match`` writes as ``<src>__<trg>.json`` and
:meth:`scot.MatchResult.to_dict` returns: scot version, model, both images, every match
(most confident first, original pixels), transferred keypoints and timings.  It is strict
JSON: a result holding a non-finite value is refused, so no NaN or Infinity can appear.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from .errors import ScotError
from .version import __version__


class Matched(Protocol):
    """What the record reads of a match (:class:`scot.MatchResult`): ``src`` and ``trg`` are
    the images' :class:`~scot.hyperpixels.Hyperpixels`."""

    src: Any
    trg: Any
    best_confidence: torch.Tensor
    keypoints: torch.Tensor | None
    transferred: torch.Tensor | None
    config: Any
    timings: dict[str, float]
    flipped: bool

    def foreground(self) -> torch.Tensor: ...

    def matches(self) -> torch.Tensor: ...


class Described(Protocol):
    """What the record reads of a model (:class:`scot.SCOT`)."""

    def describe(self) -> dict[str, Any]: ...


def _rounded(values: torch.Tensor) -> list[list[float]]:
    return [[round(float(x), 3) for x in row] for row in values.tolist()]


def match_record(result: Matched, model: Described | None = None, source: str | None = None,
                 target: str | None = None, drawn: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record of a matched pair, ready for ``json.dumps(..., allow_nan=False)``.

    Args:
        result: the match.
        model: the model that matched it, for ``backbone``, ``weights`` and ``device``
            (:meth:`scot.SCOT.describe`); without it they come from the result's
            configuration (``weights`` and ``device`` null).
        source, target: the image paths, recorded as given (null when not given).
        drawn: how the picture was drawn (``top_k``, ``foreground_only``), or None.

    Returns:
        ``scot_version``, ``backbone``, ``weights``, ``device``, ``config``, ``source`` and
        ``target`` (name, path, original and resized size, hyperpixel count), ``matches``
        (one per source hyperpixel: source and target x, y rounded to 1e-3 px, confidence,
        foreground), ``flipped`` (the source's mirror was matched and kept, ``flip='auto'``;
        every coordinate is in the source's own frame either way), ``keypoints`` (index,
        source, target; null without keypoints),
        ``drawn`` and ``timings`` (seconds).

    Raises:
        ScotError: a value of the result is not finite.
    """
    check = [result.best_confidence] + ([result.transferred] if result.transferred is not None else [])
    if not all(bool(torch.isfinite(t).all()) for t in check):
        pair = f"{source} to {target}" if source is not None and target is not None else "the pair"
        raise ScotError(f"matching {pair} gave non-finite values; no output was written "
                        "(check --eps, --exp2 and the weights)")
    order = torch.argsort(result.best_confidence.float(), descending=True, stable=True)
    on_object = result.foreground()[order].tolist()
    rows = result.matches()
    if model is not None:
        described = model.describe()
    else:
        config = result.config
        described = {"backbone": config.backbone if config is not None else None, "weights": None, "device": None,
                     "config": config.to_dict() if config is not None else None}
    record: dict[str, Any] = {"scot_version": __version__, **described}
    for side, h, path in (("source", result.src, source), ("target", result.trg, target)):
        record[side] = {"name": h.name, "path": None if path is None else str(path), "width": h.original_size[0],
                        "height": h.original_size[1], "resized": list(h.size), "hyperpixels": h.n}
    record["matches"] = [
        {"source": [round(r[0], 3), round(r[1], 3)], "target": [round(r[2], 3), round(r[3], 3)],
         "confidence": r[4], "foreground": f}
        for r, f in zip(rows.tolist(), on_object)
    ]
    record["flipped"] = result.flipped
    record["keypoints"] = None
    if result.keypoints is not None and result.transferred is not None:
        pairs = zip(_rounded(result.keypoints), _rounded(result.transferred))
        record["keypoints"] = [{"index": k, "source": s, "target": t} for k, (s, t) in enumerate(pairs)]
    record["drawn"] = drawn
    record["timings"] = {k: round(v, 4) for k, v in result.timings.items()}
    return record
