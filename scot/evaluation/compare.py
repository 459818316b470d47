r"""``scot compare``: two evaluation runs on the pairs they share, with a paired bootstrap interval.

For the pairs scored by both runs (matched by pair name), the per-class and overall PCK of
each run at every α (the headline averaging: mean over pairs) and their difference B − A
in percentage points.  The uncertainty of the overall difference comes from a paired
bootstrap: with :math:`d_i = \text{PCK}^B_i - \text{PCK}^A_i` per pair, each resample
draws, within every class c, :math:`n_c` of its pairs with replacement, and takes the
mean of the drawn :math:`d_i` over all N pairs (so the class sizes, and the overall
mean's weighting of the classes, stay those of the shared pairs).  The 95 % interval is
the 2.5 and 97.5 percentiles of the resampled means; a fixed seed makes it reproducible.
The difference is *distinguishable* when the interval excludes 0.

Runs of different datasets, splits or protocols (:func:`~.protocol.protocol_differences`)
are refused.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ScotError
from .protocol import COMPARED, alpha_text, protocol_differences

MIN_RESAMPLES = 2000
LEVEL = 0.95
_CHUNK_DRAWS = 1 << 20  # index draws per block of resamples (bounds the memory of one block)


@dataclass
class Run:
    """One run folder as :func:`compare_runs` reads it.

    Attributes:
        folder: the run folder.
        summary: its ``summary.json``.
        keys: pair name per scored pair, in ``per_pair.csv`` order.
        categories: class per scored pair.
        pck: (N, J) float64 per-pair PCK (fraction of keypoints) at the protocol's J alphas.
    """

    folder: Path
    summary: dict[str, Any]
    keys: list[str]
    categories: list[str]
    pck: np.ndarray

    @property
    def protocol(self) -> dict[str, Any]:
        return self.summary["protocol"]

    @property
    def label(self) -> str:
        return str(self.summary.get("model", {}).get("backbone", "?"))


def read_run(folder: str | Path) -> Run:
    """Read a ``scot eval`` run folder: ``summary.json`` (with its protocol) and ``per_pair.csv``.

    Raises:
        ScotError: naming the folder or file: missing, unreadable, or without a protocol.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ScotError(f"{folder} is not a run folder of scot eval (no such folder)")
    summary_path, rows_path = folder / "summary.json", folder / "per_pair.csv"
    for p in (summary_path, rows_path):
        if not p.is_file():
            raise ScotError(f"{folder} is not a run folder of scot eval ({p.name} is missing)")
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ScotError(f"{summary_path} cannot be read as JSON ({exc})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("protocol"), dict):
        raise ScotError(f"{summary_path} has no protocol record (an older scot wrote it); rewrite it with the "
                        f"run's scot eval command plus --resume -o {folder}")
    alphas = [float(a) for a in summary["protocol"]["alphas"]]
    columns = [f"pck@{a:.2f}" for a in alphas]
    ids, indices, categories, values = [], [], [], []
    try:
        with open(rows_path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in ["index", "pair_id", "category", *columns] if c not in (reader.fieldnames or [])]
            if missing:
                raise ScotError(f"{rows_path} has no column {', '.join(missing)}")
            for row in reader:
                where = f"{rows_path} line {reader.line_num}"
                ids.append(row["pair_id"])
                indices.append(row["index"])
                categories.append(row["category"])
                values.append([_fraction(row[c], where, c) for c in columns])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ScotError(f"{rows_path} cannot be read ({exc})") from None
    keys = ids if len(set(ids)) == len(ids) else [f"{i}:{n}" for i, n in zip(indices, ids)]
    pck = np.asarray(values, dtype=np.float64).reshape(len(keys), len(alphas))
    return Run(folder, summary, keys, categories, pck)


def _fraction(text: str | None, where: str, column: str) -> float:
    try:
        value = float(text or "")
    except ValueError:
        raise ScotError(f"{where}: {column} is '{text}', not a number") from None
    if not 0.0 <= value <= 1.0:
        raise ScotError(f"{where}: {column} is {value:g}, not a fraction in [0, 1]")
    return value


def paired_bootstrap(diffs: np.ndarray, groups: np.ndarray, resamples: int = 10_000, seed: int = 0,
                     level: float = LEVEL) -> np.ndarray:
    """Percentile interval of the mean of ``diffs`` under resampling within groups.

    Args:
        diffs: (N, J) per-pair differences (J statistics, e.g. one per α).
        groups: (N,) group label per pair (the class); each resample draws, in every group
            of n_g pairs, n_g of them with replacement.
        resamples: how many resamples (at least :data:`MIN_RESAMPLES`).
        seed: the random generator's seed (numpy's PCG64).
        level: the interval's coverage, e.g. 0.95.

    Returns:
        (J, 2) lower and upper ends: the (1 - level)/2 and (1 + level)/2 quantiles of the
        resampled means.
    """
    if resamples < MIN_RESAMPLES:
        raise ScotError(f"must be at least {MIN_RESAMPLES}, got {resamples}", option="resamples")
    diffs = np.asarray(diffs, dtype=np.float64)
    if diffs.ndim != 2 or len(diffs) == 0 or len(groups) != len(diffs):
        raise ValueError(f"diffs must be (N, J) with N >= 1 and groups (N,), got {diffs.shape} and {len(groups)}")
    rng = np.random.default_rng(seed)
    totals = np.zeros((resamples, diffs.shape[1]))
    labels = np.asarray(groups)
    for g in sorted(set(labels.tolist())):
        d = diffs[labels == g]
        block = max(1, _CHUNK_DRAWS // len(d))
        for start in range(0, resamples, block):
            m = min(block, resamples - start)
            totals[start:start + m] += d[rng.integers(0, len(d), size=(m, len(d)))].sum(axis=1)
    means = totals / len(diffs)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return np.stack([lo, hi], axis=1)


def _points(value: float) -> str:
    return f"{round(value, 1) + 0.0:+.1f}".replace("-", "−")  # + 0.0: a rounded -0.0 reads +0.0


def verdict(difference: float, interval: tuple[float, float], alpha: float, level: float = LEVEL) -> str:
    """``B − A = +1.4 points at α = .10, 95 % interval [−0.3, +3.1]: not distinguishable``."""
    lo, hi = interval
    if lo > 0:
        call = "distinguishable, B higher"
    elif hi < 0:
        call = "distinguishable, A higher"
    else:
        call = "not distinguishable"
    return (f"B − A = {_points(difference)} points at α = {alpha_text(alpha)}, {100 * level:.0f} % interval "
            f"[{_points(lo)}, {_points(hi)}]: {call}")


def compare_runs(a: Run, b: Run, resamples: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """Compare run B with run A on the pairs both scored.

    Returns:
        dict with ``a`` and ``b`` (folder, backbone, pairs scored), ``protocol`` (the
        compared fields), ``shared_pairs``, ``only_in_a``, ``only_in_b``, ``alphas``,
        ``averaging``, ``per_class`` and ``overall`` (class -> pairs, ``a``, ``b``,
        ``difference``: alpha -> PCK in % or points; ``overall`` also ``interval``:
        alpha -> [lo, hi] points), ``bootstrap`` (resamples, seed, level, what is
        resampled), ``notes`` and ``verdict`` (at the headline α).

    Raises:
        ScotError: the runs differ in dataset, split or protocol (naming what differs), or
            share no pair.
    """
    differ = protocol_differences(a.protocol, b.protocol)
    if differ:
        what, va, vb = differ[0]
        kind = {"dataset": "datasets", "split": "splits"}.get(what, "protocols")
        raise ScotError(f"cannot compare runs of different {kind}: {what} is {_shown(va)} in {a.folder} "
                        f"but {_shown(vb)} in {b.folder}")
    position = {k: i for i, k in enumerate(b.keys)}
    shared = [(i, position[k]) for i, k in enumerate(a.keys) if k in position]
    if not shared:
        raise ScotError(f"{a.folder} and {b.folder} share no scored pair")
    ia, ib = (np.array(x) for x in zip(*shared))
    for i, j in shared:
        if a.categories[i] != b.categories[j]:
            raise ScotError(f"pair {a.keys[i]} is class '{a.categories[i]}' in {a.folder} but '{b.categories[j]}' "
                            f"in {b.folder}")
    alphas = [float(x) for x in a.protocol["alphas"]]
    pa, pb = a.pck[ia], b.pck[ib]
    cats = np.array([a.categories[i] for i in ia])

    def row(mask: np.ndarray) -> dict[str, Any]:
        ma, mb = 100 * pa[mask].mean(0), 100 * pb[mask].mean(0)
        return {"pairs": int(mask.sum()), "a": _by_alpha(alphas, ma), "b": _by_alpha(alphas, mb),
                "difference": _by_alpha(alphas, mb - ma)}

    per_class = {c: row(cats == c) for c in sorted(set(cats.tolist()))}
    overall = row(np.ones(len(cats), dtype=bool))
    interval = 100 * paired_bootstrap(pb - pa, cats, resamples, seed)
    overall["interval"] = {f"{x:.2f}": [float(lo), float(hi)] for x, (lo, hi) in zip(alphas, interval)}
    head = float(a.protocol.get("headline_alpha", 0.10))
    if f"{head:.2f}" not in overall["difference"]:  # a run scored without the headline α: its middle one
        head = alphas[len(alphas) // 2]
    key = f"{head:.2f}"
    notes = []
    if a.protocol.get("image_side") != b.protocol.get("image_side"):
        notes.append(f"image side {a.protocol.get('image_side')} px in A, {b.protocol.get('image_side')} px in B (a "
                     f"model setting: distances and threshold are measured in the same frame either way)")
    for name, run in (("A", a), ("B", b)):
        if run.summary.get("status") != "complete":
            notes.append(f"{name} is {run.summary.get('status')}: {len(run.keys)} pairs scored so far")
    return {
        "a": {"folder": str(a.folder), "backbone": a.label, "pairs": len(a.keys)},
        "b": {"folder": str(b.folder), "backbone": b.label, "pairs": len(b.keys)},
        "protocol": {k: v for k, v in zip(COMPARED, (a.protocol["dataset"], a.protocol["split"],
                                                     a.protocol["threshold"]["rule"],
                                                     a.protocol["threshold"]["measured_on"],
                                                     a.protocol["averaging"]["headline"], alphas))},
        "shared_pairs": len(shared), "only_in_a": len(a.keys) - len(shared), "only_in_b": len(b.keys) - len(shared),
        "alphas": alphas, "averaging": a.protocol["averaging"]["headline"],
        "per_class": per_class, "overall": overall,
        "bootstrap": {"resamples": resamples, "seed": seed, "level": LEVEL, "resampled": "pairs, within each class"},
        "notes": notes,
        "verdict": verdict(overall["difference"][key], tuple(overall["interval"][key]), head),
    }


def _by_alpha(alphas: list[float], values: np.ndarray) -> dict[str, float]:
    return {f"{x:.2f}": float(v) for x, v in zip(alphas, values)}


def _shown(value: Any) -> str:
    return ", ".join(alpha_text(v) for v in value) if isinstance(value, list) else f"'{value}'"


def format_comparison(result: dict[str, Any]) -> str:
    """The comparison as ``scot compare`` prints it; the verdict is the last line."""
    a, b, alphas = result["a"], result["b"], result["alphas"]
    p = result["protocol"]
    lines = [f"A: {a['folder']} ({a['backbone']}, {a['pairs']} pairs)",
             f"B: {b['folder']} ({b['backbone']}, {b['pairs']} pairs)",
             f"{p['dataset']} {p['split']}, threshold {p['threshold rule']} ({p['threshold basis']}); "
             f"{result['shared_pairs']} shared pairs"
             + (f" ({result['only_in_a']} only in A, {result['only_in_b']} only in B, left out)"
                if result["only_in_a"] or result["only_in_b"] else "")
             + f"; PCK (%), {result['averaging']}"]
    head = f"{'class':<18}{'pairs':>6}" + "".join(f"{'A ' + alpha_text(x):>8}{'B ' + alpha_text(x):>8}{'B−A':>7}"
                                                   for x in alphas)
    lines += [head, "-" * len(head)]

    def cells(name: str, row: dict[str, Any]) -> str:
        return f"{name:<18}{row['pairs']:>6}" + "".join(
            f"{row['a'][f'{x:.2f}']:>8.1f}{row['b'][f'{x:.2f}']:>8.1f}{_points(row['difference'][f'{x:.2f}']):>7}"
            for x in alphas)

    lines += [cells(c, r) for c, r in result["per_class"].items()]
    lines += ["-" * len(head), cells("overall", result["overall"])]
    boot = result["bootstrap"]
    spans = ", ".join(f"α = {alpha_text(x)} [{_points(lo)}, {_points(hi)}]"
                      for x, (lo, hi) in zip(alphas, result["overall"]["interval"].values()))
    lines.append(f"{100 * boot['level']:.0f} % interval of B − A (paired bootstrap, {boot['resamples']} resamples of "
                 f"the pairs within each class, seed {boot['seed']}): {spans}")
    lines += [f"note: {n}" for n in result["notes"]]
    lines.append(result["verdict"])
    return "\n".join(lines)
