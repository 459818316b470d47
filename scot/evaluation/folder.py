"""The run folder of ``scot eval``: which folder, whether this run may write it, and which
of its scores still hold.

* :func:`resolve_run_folder` picks the folder (``-o``, the newest unfinished run with
  ``--resume``, or a new one); :func:`shared_run_folder` makes rank 0's choice everyone's,
  and sends a launch that torchrun restarted back to the folder it started.
* :func:`claim_run_folder` (rank 0, or the one process) checks and records the run's
  identity (``run.json``); under torchrun it also writes ``launch.json`` with a token
  that every rank reads back (:func:`check_shared`), which proves that all ranks write
  one folder.  On ``--resume`` it drops the scores of pairs whose inputs changed since
  they were scored (:class:`~.scoring.PairInputs`), so that they are scored again.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

from ..distributed.world import World
from ..errors import ScotError
from ..writing import atomic_write_json
from .journal import drop_records, journal_files
from .scoring import PairInputs

RUN_FILE = "run.json"
LAUNCH_FILE = "launch.json"


def check_resumable(output_dir: Path) -> None:
    """Fail unless ``output_dir``, given with ``--resume``, exists (there is a run to resume)."""
    if not output_dir.exists():
        raise ScotError(f"{output_dir} does not exist, so there is no run to resume there (leave out --resume to "
                        f"start a new run)", option="resume")


def resolve_run_folder(output_dir: Path | None, results: Path, dataset: str, backbone: str, resume: bool) -> Path:
    """The run folder: ``output_dir``, with ``resume`` the newest unfinished run under
    ``results``, else a new ``results/<dataset>-<backbone>-<time>``.

    Raises:
        ScotError: with ``resume``, ``output_dir`` does not exist, or no run under
            ``results`` is unfinished.
    """
    if output_dir is not None:
        if resume:
            check_resumable(output_dir)
        return output_dir
    if resume:
        found = find_resumable(results, dataset, backbone)
        if found is None:
            raise ScotError(f"no unfinished {dataset} run with {backbone} in {results}", option="resume")
        return found
    return results / f"{dataset}-{backbone}-{time.strftime('%Y%m%d-%H%M%S')}"


def find_resumable(results_root: Path, dataset: str, backbone: str) -> Path | None:
    """The newest run directory of ``dataset``/``backbone`` that is not complete."""
    if not results_root.is_dir():
        return None
    candidates = sorted(results_root.glob(f"{dataset}-{backbone}-*"), key=lambda p: p.name, reverse=True)
    for cand in candidates:
        summary = cand / "summary.json"
        if journal_files(cand):
            try:
                if json.loads(summary.read_text()).get("status") == "complete":
                    continue
            except (OSError, ValueError):
                pass
            return cand
    return None


def find_launched(results_root: Path, dataset: str, backbone: str, run_id: str) -> Path | None:
    """The newest run folder of ``dataset``/``backbone`` under ``results_root`` that the
    launch ``run_id`` (torchrun's rendezvous id) started, or None."""
    if not run_id or not results_root.is_dir():
        return None
    for cand in sorted(results_root.glob(f"{dataset}-{backbone}-*"), key=lambda p: p.name, reverse=True):
        try:
            if json.loads((cand / LAUNCH_FILE).read_text()).get("run_id") == run_id:
                return cand
        except (OSError, ValueError, AttributeError):
            continue
    return None


def shared_run_folder(world: World, output_dir: Path | None, results: Path, dataset: str, backbone: str,
                      resume: bool) -> tuple[Path, bool]:
    """The run folder, chosen by rank 0 and the same on every rank, and whether to resume.

    As :func:`resolve_run_folder`; in a launch that torchrun restarted the run resumes,
    and without ``output_dir`` in the folder that this launch started (found by its
    ``launch.json``), else in a new one.
    """
    restarted = world.launch.restart_count > 0

    def choose() -> str:
        if restarted and output_dir is None:
            found = find_launched(results, dataset, backbone, world.launch.run_id)
            return str(found or resolve_run_folder(None, results, dataset, backbone, False))
        return str(resolve_run_folder(output_dir, results, dataset, backbone, resume))

    return Path(world.decide("run folder", choose)), resume or restarted


def claim_run_folder(run_dir: Path, identity: dict[str, Any], resume: bool, inputs: PairInputs,
                     world: World) -> dict[str, Any]:
    """Check that ``run_dir`` may hold this run and record it; rank 0 (or the one process) only.

    Records the identity in ``run.json``; under torchrun writes ``launch.json`` with a new
    token.  With ``resume``, removes from the journals the scores of pairs whose inputs
    (``inputs``) differ from those they were scored with, or were not recorded, or that
    are not pairs of this run: the run scores them again.

    Returns:
        ``{"token": the token or None, "notice": a line saying which scores were dropped, or None}``.

    Raises:
        ScotError: with ``resume``, the folder was run with other settings; without it,
            the folder already holds scored pairs (of any process).
    """
    run_file = run_dir / RUN_FILE
    if resume and run_file.is_file():
        previous = json.loads(run_file.read_text())
        if previous != identity:
            diff = sorted(k for k in identity if previous.get(k) != identity.get(k))
            raise ScotError(f"{run_dir} was run with different settings ({', '.join(diff)} differ)", option="resume")
    elif journal_files(run_dir) and not resume:
        raise ScotError(f"{run_dir} already holds results; resume it or choose another folder", option="output_dir")
    atomic_write_json(run_file, identity)
    notice = None
    if resume:
        def stale(rec: dict) -> bool:
            digest = inputs.digest(rec["index"])
            return digest is None or rec.get("inputs") != digest

        dropped = drop_records(run_dir, stale)
        changed = {rec["index"] for rec in dropped if "inputs" in rec}
        unrecorded = {rec["index"] for rec in dropped if "inputs" not in rec} - changed
        parts = [f"{len(found)} {'pair' if len(found) == 1 else 'pairs'} {why}" for found, why in (
            (changed, "whose annotations or images changed since they were scored"),
            (unrecorded, "scored by an older scot, which did not record their inputs")) if found]
        if parts:
            notice = f"resuming {run_dir}: scoring again {' and '.join(parts)}"
    token = None
    if world.launch.run_id:  # started by torchrun: prove that every rank writes this folder
        token = secrets.token_hex(8)
        atomic_write_json(run_dir / LAUNCH_FILE, {"world_size": world.world_size, "run_id": world.launch.run_id,
                                                  "restart_count": world.launch.restart_count, "token": token})
    return {"token": token, "notice": notice}


def check_shared(run_dir: Path, token: str | None) -> None:
    """Fail unless ``run_dir`` holds the ``launch.json`` with ``token`` that rank 0 has just written."""
    if token is None:
        return
    try:
        seen = json.loads((run_dir / LAUNCH_FILE).read_text()).get("token")
    except (OSError, ValueError, AttributeError):
        seen = None
    if seen != token:
        raise ScotError(f"{run_dir} is not the folder rank 0 writes to; every rank needs the same run folder "
                        f"(a shared file system when the ranks are on several nodes)", option="output_dir")
