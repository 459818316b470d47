"""``scot match`` over many pairs: every input checked up front, then each pair matched
and written, a failing pair recorded while the rest go on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ScotError
from ..io import read_keypoints
from .labels import LabelMask, read_mask
from .names import Extras, Outputs, plan_outputs
from .write import VIEWER_TOPK, write_match


@dataclass
class Job:
    """One pair to match: the images, the keypoints file, and the line of ``--pairs`` it came from."""

    source: str
    target: str
    keypoints: str | None = None
    line: int | None = None
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


def match_jobs(model: Any, jobs: list[Job], folder: Path, *, numbered: bool = False, top_k: int = 100,
               foreground: bool = True, picture: bool = True, overwrite: bool = False, skip_existing: bool = False,
               extras: Extras | None = None, on_done: Any = None) -> tuple[list[Outputs], list[Failure], list[Job]]:
    """Match every job and write its outputs; a failing job is recorded and the rest go on.

    ``on_done(job, outputs_failure_or_None)`` is called after each job (None: skipped, as
    ``skip_existing`` allows).  Returns the outputs written, the failures and the jobs skipped.
    """
    taken: set[Path] = set()
    written, failed, skipped = [], [], []
    for k, job in enumerate(jobs):
        try:
            ex = extras or Extras()
            outputs = plan_outputs(folder, job.source, job.target, prefix=f"{k:04d}_" if numbered else "",
                                   picture=picture, overwrite=overwrite, skip_existing=skip_existing, taken=taken,
                                   extras=ex)
            if outputs is None:
                skipped.append(job)
                done: Any = None
            else:
                result = model(job.source, job.target, keypoints=job.points, keep_plan=False,
                               topk=VIEWER_TOPK if ex.html else 0)
                written.append(write_match(model, result, job.source, job.target, outputs, top_k=top_k,
                                           foreground=foreground, mask=job.labels))
                done = written[-1]
        except ScotError as exc:
            if not numbered:
                raise
            failed.append(Failure(job, exc))
            done = failed[-1]
        if on_done is not None:
            on_done(job, done)
    return written, failed, skipped
