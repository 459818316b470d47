r"""The protocol card of an evaluation run: what its PCK figures measure.

PCK figures are comparable only under one protocol: which pairs (dataset, split, how many
of those listed), which keypoints, the threshold rule and what it is measured on, and how
the per-keypoint results are averaged.  :func:`build_protocol` records all of it as the
``"protocol"`` object of ``summary.json``; :func:`protocol_line` states it in one line,
printed before every table; :func:`protocol_differences` says what keeps two runs from
being compared.

A keypoint is correct when its distance to the ground truth is at most
:math:`\alpha \cdot \text{thr}`; both are measured in the target resized so that its
longest side is ``image_side`` pixels (the threshold is computed on the original target
and scaled with it, so the image side does not change what is measured).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..datasets import Dataset
from ..errors import ScotError
from ..pck import HEADLINE_ALPHA

HEADLINE_AVERAGING = "mean over pairs"
AVERAGINGS = ("mean over pairs", "mean over keypoints")
SELECTION_KEYS = ("category", "sample", "limit")

# What a dataset's "bbox" threshold is measured on, where it is not an annotated box.
_BOX_BASIS = {"pfwillow": ("the box spanned by the target's ground-truth keypoints", "target keypoint-box side")}
_ANNOTATED_BOX = ("the target's annotated bounding box", "target box side")

COMPARED = ("dataset", "split", "threshold rule", "threshold basis", "headline averaging", "alphas")
"""The protocol fields two runs must share to be compared (the image side is a model setting)."""


def threshold_basis(dataset: str, rule: str) -> tuple[str, str]:
    """What the threshold ``thr`` of ``rule`` is on ``dataset``: (description, short label).

    Args:
        dataset: the dataset's name (``pfwillow``, ``pfpascal``, ``spair``, ``custom``).
        rule: ``img`` or ``bbox``.
    """
    if rule == "img":
        return "the longer side of the target image", "target image side"
    what, short = _BOX_BASIS.get(dataset, _ANNOTATED_BOX)
    return f"the longer side of {what}", short


def check_threshold(dataset: Dataset, rule: str) -> None:
    """Fail, naming the first pair without one, unless every pair has the target box ``bbox`` needs.

    Raises:
        ScotError: about option ``thres``, before any pair is matched.
    """
    if rule != "bbox":
        return
    for p in dataset.pairs:
        if p.trg_bbox is None:
            where = f"{dataset.source_file}: " if dataset.source_file else ""
            raise ScotError(f"bbox needs every pair's target box; {where}pair {p.index} ({p.src.name} -> {p.trg.name}) "
                            f"has none (give it, or use --thres img)", option="thres")


def _selection_reason(selection: dict[str, Any]) -> str:
    chosen = [f"{k} {selection[k]}" for k in SELECTION_KEYS if selection.get(k) is not None]
    return "not selected (" + ", ".join(chosen) + ")" if chosen else "not selected"


def build_protocol(dataset: Dataset, records: Sequence[dict], rule: str, alphas: Sequence[float], image_side: int,
                   selection: dict[str, Any], status: str) -> dict[str, Any]:
    """The ``"protocol"`` object of ``summary.json``.

    Args:
        dataset: the (selected) pairs of the run.
        records: the scored pairs' journal records (``index``, ``n_kps``).
        rule: the threshold rule, ``img`` or ``bbox``.
        alphas: the α values reported.
        image_side: the longest side, in pixels, of the frame distances are measured in.
        selection: how the pairs were chosen (``category``, ``sample``, ``limit``).
        status: the run's status (``complete``, ``running``, ``interrupted``).

    Returns:
        ``dataset``, ``split``, ``pairs`` (scored, listed), ``keypoints`` (scored, which),
        ``threshold`` (rule, measured on, frame), ``image_side``, ``averaging`` (headline,
        reported), ``alphas``, ``headline_alpha`` and ``left_out`` (count, what, why).
    """
    scored = {r["index"] for r in records}
    left_out = []
    not_selected = dataset.pairs_listed - len(dataset.pairs)
    if not_selected:
        left_out.append({"count": not_selected, "what": "pairs", "why": _selection_reason(selection)})
    if len(dataset.pairs) > len(scored):
        left_out.append({"count": len(dataset.pairs) - len(scored), "what": "pairs",
                         "why": f"not scored yet (run {status})"})
    hidden = sum(p.hidden_kps for p in dataset.pairs if p.index in scored)
    if hidden:
        left_out.append({"count": hidden, "what": "keypoints", "why": "not visible in both images (null rows)"})
    return {
        "dataset": dataset.name,
        "split": dataset.split,
        "pairs": {"scored": len(scored), "listed": dataset.pairs_listed},
        "keypoints": {"scored": sum(r["n_kps"] for r in records), "which": "those visible in both images"},
        "threshold": {"rule": rule, "measured_on": threshold_basis(dataset.name, rule)[0],
                      "frame": f"distance and threshold both in the target resized to {image_side} px (longest side)"},
        "image_side": image_side,
        "averaging": {"headline": HEADLINE_AVERAGING, "reported": list(AVERAGINGS)},
        "alphas": list(alphas),
        "headline_alpha": HEADLINE_ALPHA,
        "left_out": left_out,
    }


def alpha_text(alpha: float) -> str:
    """α as papers write it: ``.10``."""
    return f"{alpha:.2f}".lstrip("0") if alpha < 1 else f"{alpha:.2f}"


def threshold_label(protocol: dict[str, Any]) -> str:
    """``bbox: α · target box side``: the rule and what it is measured on, for titles."""
    rule = protocol["threshold"]["rule"]
    return f"{rule}: α · {threshold_basis(protocol['dataset'], rule)[1]}"


def protocol_line(protocol: dict[str, Any]) -> str:
    """The protocol in one line, as ``scot eval`` prints it before its table."""
    pairs, kps, thr = protocol["pairs"], protocol["keypoints"], protocol["threshold"]
    left = "; ".join(f"{e['count']} {e['what']} {e['why']}" for e in protocol["left_out"]) or "none"
    headline = protocol["averaging"]["headline"]
    others = [a for a in protocol["averaging"]["reported"] if a != headline]
    # "averaged over pairs": the table's own row labels ("mean over pairs") stay the only ones in the output
    return (f"protocol: {protocol['dataset']} {protocol['split']}, {pairs['scored']} of {pairs['listed']} pairs, "
            f"{kps['scored']} keypoints | correct within α · thr, thr = {thr['measured_on']} ({thr['rule']}), "
            f"at {protocol['image_side']} px | averaged {headline.replace('mean ', '')} (headline)"
            + "".join(f"; {a.replace('mean ', '')}" for a in others)
            + f" | α = {', '.join(alpha_text(a) for a in protocol['alphas'])} | left out: {left}")


def _compared(protocol: dict[str, Any]) -> dict[str, Any]:
    thr = protocol["threshold"]
    return dict(zip(COMPARED, (protocol["dataset"], protocol["split"], thr["rule"], thr["measured_on"],
                               protocol["averaging"]["headline"], [float(a) for a in protocol["alphas"]])))


def protocol_differences(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """The :data:`COMPARED` fields in which two protocols differ, as (field, a's, b's)."""
    fa, fb = _compared(a), _compared(b)
    return [(k, fa[k], fb[k]) for k in COMPARED if fa[k] != fb[k]]
