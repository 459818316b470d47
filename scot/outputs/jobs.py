"""``scot match`` over many pairs: every input checked up front, then each pair claimed,
matched and written, a failing pair recorded while the rest go on; a run that keeps
earlier results (``skip_existing``) first checks that they were made as this run makes them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ScotError
from ..io import read_keypoints
from ..writing import WriteError
from .labels import LabelMask, read_mask
from .names import Extras, Outputs, Skipped, plan_outputs
from .write import VIEWER_TOPK, write_match


@dataclass
class Job:
    """One pair to match: the images, the keypoints file, and the line of ``--pairs`` it came from."""

    source: str
    target: str
    keypoints: str | None = None
    line: int | None = None
    number: int | None = None  # its place in the pair list, which numbers its outputs
    points: Any = None  # the keypoints read and checked up front
    labels: LabelMask | None = None  # the source mask, read and checked up front


@dataclass
class Failure:
    """A job that could not be matched, and why."""

    job: Job
    error: ScotError


def prepare_jobs(jobs: list[Job], *, stop_on_error: bool, mask: str | None = None) -> tuple[list[Job], list[Failure]]:
    """Check both images of every job from their headers, and read every keypoint file and
    the source ``mask`` if given against the source image, before any network pass.

    With ``stop_on_error`` the first problem raises; otherwise bad rows are returned as
    failures and the good ones still run.
    """
    from ..image import check_image, image_size

    ready, failed = [], []
    for job in jobs:
        try:
            check_image(job.source)
            check_image(job.target)
            if job.keypoints is not None or mask is not None:
                size = image_size(job.source)  # (W, H) after EXIF orientation, read once
                if job.keypoints is not None:
                    job.points = read_keypoints(job.keypoints, bounds=size)
                if mask is not None:
                    job.labels = read_mask(mask, size)
            ready.append(job)
        except ScotError as exc:
            if stop_on_error:
                raise
            failed.append(Failure(job, exc))
    return ready, failed


class MixedResults(ScotError):
    """``skip_existing`` would keep a result made with other settings than this run's.

    Args:
        record: the earlier result's record.
        differences: ``(option, earlier value, this run's value)`` for every setting that
            differs, the option a :class:`~scot.SCOTConfig` field or a parameter of
            :func:`match_jobs` (``top_k``, ``plot``, ``flow``...).
    """

    def __init__(self, record: Path, differences: list[tuple[str, str, str]]) -> None:
        self.record, self.differences = record, differences
        super().__init__(self._text(str), option=differences[0][0])

    def _text(self, name: Any) -> str:
        option, before, now = self.differences[0]
        others = [name(o) for o, _, _ in self.differences[1:]]
        also = f" ({', '.join(others)} {'differs' if len(others) == 1 else 'differ'} too)" if others else ""
        return (f"{self.record} was made with {before}, this run uses {now}{also}; --skip-existing keeps only "
                "results of the same settings: finish the run with the settings it was started with, or choose "
                "another output folder, or pass --overwrite instead of --skip-existing to match every row again")

    def for_cli(self, flag_of: Any) -> str:
        return f"{flag_of(self.option)}: {self._text(flag_of)}"


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return "(" + ",".join(_shown(v) for v in value) + ")"
    return str(value)


def _settings(model: Any, top_k: int, foreground: bool, picture: bool, extras: Extras) -> dict[str, Any]:
    """What a result records of how it was made, by the parameter that sets it."""
    described = model.describe()
    config = {k: v for k, v in described["config"].items() if k != "device"}  # the device changes no result
    kinds = {"flow": extras.flow is not None, "warp": extras.warp, "html": extras.html, "mask": extras.mask is not None}
    return {"backbone": described["backbone"], "weights": described["weights"], **config,
            "plot": picture, "top_k": top_k if picture else None, "foreground": foreground if picture else None,
            **kinds}


def _recorded(doc: dict[str, Any]) -> dict[str, Any]:
    """The settings a record holds, as :func:`_settings` names them."""
    drawn = doc.get("drawn")
    outputs = doc.get("outputs") or {}
    config = {k: v for k, v in (doc.get("config") or {}).items() if k != "device"}
    return {"backbone": doc.get("backbone"), "weights": doc.get("weights"), **config,
            "plot": drawn is not None, "top_k": drawn.get("top_k") if drawn else None,
            "foreground": drawn.get("foreground_only") if drawn else None,
            **{kind: kind in outputs for kind in ("flow", "warp", "html", "mask")}}


def _same_keypoints(doc: dict[str, Any], points: Any) -> bool:
    """Whether a record's source keypoints are ``points`` (as recorded: rounded to 1e-3 px)."""
    recorded = doc.get("keypoints")
    if points is None or recorded is None:
        return points is None and recorded is None
    if len(recorded) != len(points):
        return False
    return all(abs(float(a) - float(b)) <= 1e-3 for k, p in zip(recorded, points) for a, b in zip(k["source"], p))


def check_existing(model: Any, jobs: list[Job], folder: Path, prefixes: list[str], *, top_k: int, foreground: bool,
                   picture: bool, extras: Extras) -> None:
    """Before any work of a ``skip_existing`` run: every earlier result it would keep must have
    been made with this run's settings and, for its row, the same keypoints.

    Raises:
        MixedResults: naming the record, the first setting that differs and both values.
        ScotError: a row's keypoints differ from those of its earlier result.
    """
    from .names import existing_result

    now = _settings(model, top_k, foreground, picture, extras)
    for job, prefix in zip(jobs, prefixes):
        record = existing_result(folder, job.source, job.target, prefix)
        if record is None:
            continue
        try:
            doc = json.loads(record.read_text())
            before = _recorded(doc)
        except (OSError, ValueError, AttributeError):
            continue  # not a record scot can read: plan_outputs treats it as another pair's
        # an option the earlier result does not record did not exist in the scot that made it
        differences = [(k, _shown(before[k]), _shown(v)) for k, v in now.items() if k in before and before[k] != v]
        if differences:
            raise MixedResults(record, differences)
        if not _same_keypoints(doc, job.points):
            where = f"line {job.line}: " if job.line is not None else ""
            raise ScotError(f"{where}the keypoints ({job.keypoints}) are not those of the earlier result {record}; "
                            "choose another output folder, or pass --overwrite instead of --skip-existing to match "
                            "every row again", option="pairs")


def match_jobs(model: Any, jobs: list[Job], folder: Path, *, numbered: bool = False, top_k: int = 100,
               foreground: bool = True, picture: bool = True, overwrite: bool = False, skip_existing: bool = False,
               extras: Extras | None = None, on_done: Any = None
               ) -> tuple[list[Outputs], list[Failure], list[tuple[Job, Skipped]]]:
    """Match every job and write its outputs; a failing job is recorded and the rest go on.

    With ``numbered``, result names start with the job's ``number`` (its place in the
    pair list; by default its place in ``jobs``).  Each result is claimed before it is
    matched (:func:`plan_outputs`): a result another process is writing is refused, or
    with ``skip_existing`` skipped, like one that exists.  With ``skip_existing`` every
    result that would be kept is first checked to be of this run's settings
    (:func:`check_existing`).

    ``on_done(job, outputs_failure_or_skipped)`` is called after each job.  Returns the
    outputs written, the failures and the jobs skipped (each with its :class:`Skipped`).

    Raises:
        WriteError: an output could not be written (a full disk, a read-only folder): the run
            stops, nothing of that pair is left, and the pairs written before it are kept.
        MixedResults: see :func:`check_existing`.
    """
    ex = extras or Extras()
    prefixes = [f"{job.number if job.number is not None else k:04d}_" if numbered else ""
                for k, job in enumerate(jobs)]
    if skip_existing:
        check_existing(model, jobs, folder, prefixes, top_k=top_k, foreground=foreground, picture=picture, extras=ex)
    taken: set[Path] = set()
    written: list[Outputs] = []
    failed: list[Failure] = []
    skipped: list[tuple[Job, Skipped]] = []
    for job, prefix in zip(jobs, prefixes):
        done: Any
        try:
            outputs = plan_outputs(folder, job.source, job.target, prefix=prefix, picture=picture,
                                   overwrite=overwrite, skip_existing=skip_existing, taken=taken, extras=ex)
            if isinstance(outputs, Skipped):
                skipped.append((job, outputs))
                done = outputs
            else:
                try:
                    result = model(job.source, job.target, keypoints=job.points, keep_plan=False,
                                   topk=VIEWER_TOPK if ex.html else 0)
                    written.append(write_match(model, result, job.source, job.target, outputs, top_k=top_k,
                                               foreground=foreground, mask=job.labels))
                finally:
                    outputs.release()
                done = written[-1]
        except WriteError:
            raise
        except ScotError as exc:
            if not numbered:
                raise
            failed.append(Failure(job, exc))
            done = failed[-1]
        if on_done is not None:
            on_done(job, done)
    return written, failed, skipped
