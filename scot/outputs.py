"""What ``scot match`` writes for a matched pair, and where.

One place owns the match record (the JSON: models, sizes, every match, keypoints,
timings) and the file names, so that:

* names are unique for different inputs: ``<src>__<trg>`` from the two file stems, and
  when that name already holds the result of *other* files (``a.jpg`` and ``a.png``
  against one target), ``<src>__<trg>-2``, ``-3``, ...;
* a result of the same inputs is never replaced silently (``overwrite`` allows it);
* an output folder that cannot be written is reported before any work;
* nothing is written unless the whole result is finite, and the JSON is strict
  (no NaN or Infinity can appear in it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from .errors import ScotError
from .io import atomic_write_bytes, atomic_write_json, check_file, name_max, open_regular_file, read_keypoints

RECORD = ".json"


VIEWER_TOPK = 16  # targets per source hyperpixel kept for the viewer's heat map
VIEWER_SIDE = 640  # the viewer embeds the images at about this size (JPEG)
WARP_SIDE = 1600  # the warp pictures are drawn at most this large


@dataclass(frozen=True)
class Extras:
    """Which dense outputs to write besides the record and the picture."""

    flow: str | None = None  # a path, or a template with {name}; .npz or .npy
    warp: bool = False
    mask: str | None = None  # a source mask image
    html: bool = False

    def check(self, several: bool) -> None:
        if self.flow is not None:
            if Path(self.flow).suffix.lower() not in (".npz", ".npy"):
                raise ScotError(f"{self.flow} must end in .npz or .npy", option="flow")
            if several and "{name}" not in self.flow:
                raise ScotError("with several pairs, give a template holding {name}, e.g. flows/{name}.npz", option="flow")
        if self.mask is not None and several:
            raise ScotError("a source mask applies to one pair; give SRC TRG", option="mask")


@dataclass(frozen=True)
class Outputs:
    """The files of one matched pair (all but the record are optional)."""

    record: Path
    picture: Path | None
    flow: Path | None = None
    warp: Path | None = None
    checkerboard: Path | None = None
    mask: Path | None = None
    mask_view: Path | None = None
    html: Path | None = None

    def files(self) -> list[Path]:
        return [p for p in (self.picture, self.record, self.flow, self.warp, self.checkerboard, self.mask,
                            self.mask_view, self.html) if p is not None]


def _same_inputs(record: Path, src: str, trg: str) -> bool:
    try:
        doc = json.loads(record.read_text())
        return (Path(doc["source"]["path"]).resolve() == Path(src).resolve()
                and Path(doc["target"]["path"]).resolve() == Path(trg).resolve())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def plan_outputs(folder: Path, src: str, trg: str, *, prefix: str = "", picture: bool = True,
                 overwrite: bool = False, skip_existing: bool = False, taken: set[Path] | None = None,
                 extras: Extras | None = None) -> Outputs | None:
    """The files for matching ``src`` to ``trg`` in ``folder``.

    Args:
        folder: a writable folder (:func:`check_folder`).
        src, trg: the two image paths (their stems name the files).
        prefix: prepended to the name (``--pairs`` numbers its rows).
        picture: also plan the PNG.
        overwrite: replace an earlier result of the same inputs instead of refusing.
        skip_existing: return None when the folder already holds a result of the same
            inputs (the record is written last, so a result is complete once it exists).
        taken: names already planned in this run (other rows of ``--pairs``).

    Raises:
        ScotError: the name holds a result of the same inputs and ``overwrite`` is off, or
            the file name is longer than the filesystem allows.
    """
    stem = f"{prefix}{Path(src).stem or 'image'}__{Path(trg).stem or 'image'}"
    taken = taken if taken is not None else set()
    limit = name_max(folder)
    longest = f"{stem}-9999.warp-check.png"
    if len(longest.encode()) > limit:
        raise ScotError(f"output names like {stem[:40]}... are longer than the {limit} bytes the filesystem allows; "
                        "rename the images", option="output")
    for k in range(1, 10_000):
        name = stem if k == 1 else f"{stem}-{k}"
        record = folder / f"{name}{RECORD}"
        if record in taken:
            continue
        if record.exists() and not _same_inputs(record, src, trg):
            continue  # another pair's result: find a free name
        if record.exists() and skip_existing:
            return None
        if record.exists() and not overwrite:
            raise ScotError(f"{record} already holds the result of these images; pass --overwrite to replace it "
                            "or choose another output folder", option="output")
        taken.add(record)
        ex = extras or Extras()
        flow = None if ex.flow is None else _flow_file(Path(ex.flow.replace("{name}", name)), overwrite, taken)
        return Outputs(record, folder / f"{name}.png" if picture else None, flow,
                       folder / f"{name}.warp.png" if ex.warp else None,
                       folder / f"{name}.warp-check.png" if ex.warp else None,
                       folder / f"{name}.mask.png" if ex.mask else None,
                       folder / f"{name}.mask-view.png" if ex.mask else None,
                       folder / f"{name}.html" if ex.html else None)
    raise ScotError(f"{folder}: no free output name for {stem}", option="output")


def _flow_file(path: Path, overwrite: bool, taken: set[Path]) -> Path:
    """``--flow``'s file for one pair.  It is named by the user, outside the output folder,
    so the record's same-inputs rule cannot vouch for it: any existing file needs ``overwrite``."""
    if path in taken:
        raise ScotError(f"{path} would hold the flow of two pairs; put {{name}} in the --flow template", option="flow")
    check_file(path, option="flow", overwrite=overwrite)
    taken.add(path)
    return path


def _rounded(values: torch.Tensor) -> list:
    return [[round(float(x), 3) for x in row] for row in values.tolist()]


def match_record(model: Any, result: Any, src_path: str, trg_path: str, drawn: dict[str, Any] | None) -> dict[str, Any]:
    """The JSON record of a matched pair: scot version, model, images, matches, keypoints, timings.

    Raises:
        ScotError: a value of the result is not finite (nothing is written then).
    """
    import scot

    check = [result.best_confidence] + ([result.transferred] if result.transferred is not None else [])
    if not all(bool(torch.isfinite(t).all()) for t in check):
        raise ScotError(f"matching {src_path} to {trg_path} gave non-finite values; no output was written "
                        "(check --eps, --exp2 and the weights)")
    order = torch.argsort(result.best_confidence.float(), descending=True, stable=True)
    on_object = result.foreground()[order].tolist()
    rows = result.matches()
    record: dict[str, Any] = {"scot_version": scot.__version__, **model.describe()}
    for side, h, path in (("source", result.src, src_path), ("target", result.trg, trg_path)):
        record[side] = {"name": h.name, "path": str(path), "width": h.original_size[0], "height": h.original_size[1],
                        "resized": list(h.size), "hyperpixels": h.n}
    record["matches"] = [
        {"source": [round(r[0], 3), round(r[1], 3)], "target": [round(r[2], 3), round(r[3], 3)],
         "confidence": r[4], "foreground": f}
        for r, f in zip(rows.tolist(), on_object)
    ]
    record["keypoints"] = None
    if result.keypoints is not None and result.transferred is not None:
        record["keypoints"] = [{"index": k, "source": s, "target": t}
                               for k, (s, t) in enumerate(zip(_rounded(result.keypoints), _rounded(result.transferred)))]
    record["drawn"] = drawn
    record["timings"] = {k: round(v, 4) for k, v in result.timings.items()}
    return record


def write_match(model: Any, result: Any, src_path: str, trg_path: str, outputs: Outputs, *, top_k: int = 100,
                foreground: bool = True, mask: LabelMask | None = None) -> Outputs:
    """Write the record and every planned output: the picture of the ``top_k`` most confident
    matches, the dense flow, the warp, the moved ``mask`` (:func:`read_mask`) and the viewer."""
    drawn = {"top_k": top_k, "foreground_only": foreground} if outputs.picture is not None else None
    record = match_record(model, result, src_path, trg_path, drawn)
    labels = mask if outputs.mask is not None else None
    if outputs.picture is not None:
        from .viz2d import draw_match_result

        draw_match_result(result, src_path, trg_path, outputs.picture, top_k=top_k, foreground=foreground,
                          subtitle_prefix=model.backbone.name, cam=model.config.cam)
    if outputs.flow or outputs.warp or outputs.mask:
        _write_dense(result, src_path, trg_path, outputs, labels)
    if outputs.html is not None:
        _write_viewer(result, src_path, trg_path, outputs.html)
    record["outputs"] = {k: str(v) for k, v in (("flow", outputs.flow), ("warp", outputs.warp),
                                                 ("checkerboard", outputs.checkerboard), ("mask", outputs.mask),
                                                 ("mask_view", outputs.mask_view),
                                                 ("html", outputs.html)) if v is not None}
    atomic_write_json(outputs.record, record)
    return outputs


@dataclass(frozen=True)
class LabelMask:
    """A source label mask: (H, W) integer ``labels`` and, for a palette image, its ``palette``
    (written again with the moved mask, so that labels keep their colours)."""

    labels: torch.Tensor
    palette: list[int] | None = None


def read_mask(path: str, size: tuple[int, int]) -> LabelMask:
    """Read a binary, grey, 16-bit or palette label mask of an image of ``size`` (W, H).

    Raises:
        ScotError: naming ``--mask``: unreadable, a colour image, or not ``size``.
    """
    import numpy as np
    from PIL import Image

    with open_regular_file(path, "mask") as fh:
        try:
            img = Image.open(fh)
            img.load()
        except Exception:
            raise ScotError(f"{path} is not an image file that can be read", option="mask") from None
    if img.mode in ("RGB", "RGBA"):
        rgb = np.asarray(img.convert("RGB"))
        if not ((rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])).all():
            raise ScotError(f"{path} is a colour image; give a binary, grey or palette label mask", option="mask")
        arr = rgb[..., 0]
    elif img.mode in ("1", "L", "P", "I", "I;16"):
        arr = np.asarray(img)
    else:
        arr = np.asarray(img.convert("L"))
    if (arr.shape[1], arr.shape[0]) != tuple(size):
        raise ScotError(f"{path} is {arr.shape[1]}x{arr.shape[0]} pixels but the source image is {size[0]}x{size[1]}",
                        option="mask")
    return LabelMask(torch.from_numpy(arr.astype(np.int64)), img.getpalette() if img.mode == "P" else None)


def _write_dense(result: Any, src_path: str, trg_path: str, outputs: Outputs, labels: LabelMask | None) -> None:
    import io as _io

    import numpy as np

    from .dense import checkerboard, flow_inside, transfer_mask, warp_image
    from .image import load_image
    from .viz2d import save_image

    flow, confidence = result.flow()
    if outputs.flow is not None:
        buf = _io.BytesIO()
        if outputs.flow.suffix.lower() == ".npz":
            np.savez_compressed(buf, flow=flow.numpy(), confidence=confidence.numpy())
        else:
            np.save(buf, torch.cat([flow, confidence.unsqueeze(-1)], -1).numpy())
        atomic_write_bytes(outputs.flow, buf.getvalue())
    pictures: dict[str, Any] = {}

    def picture(path: str) -> Any:
        """The image decoded for the pictures (reduced to about WARP_SIDE), once per file."""
        if path not in pictures:
            pictures[path] = load_image(path, max_side=WARP_SIDE)
        return pictures[path]

    if outputs.warp is not None and outputs.checkerboard is not None:
        # the pictures are a visual check: at most WARP_SIDE pixels, from reduced decodes
        step = max(1, -(-max(result.src.original_size) // WARP_SIDE))
        small = flow[::step, ::step]
        target, source = picture(trg_path), picture(src_path)
        warped = warp_image(target.tensor, small * target.scale)
        src_small = torch.nn.functional.interpolate(source.tensor[None], warped.shape[-2:], mode="bilinear",
                                                    align_corners=False)[0]
        save_image(warped, outputs.warp)
        save_image(checkerboard(src_small, warped, mask=flow_inside(small, target.size)), outputs.checkerboard)
    if outputs.mask is not None and labels is not None:
        from .viz2d import label_overlay, side_by_side

        moved = transfer_mask(labels.labels, flow, result.trg.original_size)
        save_image(moved, outputs.mask, labels=True, palette=labels.palette)
        if outputs.mask_view is not None:  # drawn on the reduced decodes, labels sampled onto them
            src_pic, trg_pic = picture(src_path).tensor, picture(trg_path).tensor
            side_by_side(label_overlay(src_pic, _nearest(labels.labels, src_pic.shape[-2:])),
                         label_overlay(trg_pic, _nearest(moved, trg_pic.shape[-2:])), outputs.mask_view)


def _nearest(labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(H, W) ``labels`` sampled at the cell centres of an (h, w) grid over the same image:
    nearest neighbour, so label values are kept (the identity when the sizes agree)."""
    h, w = int(size[0]), int(size[1])
    rows = ((torch.arange(h) + 0.5) * labels.shape[0] / h).long().clamp_max(labels.shape[0] - 1)
    cols = ((torch.arange(w) + 0.5) * labels.shape[1] / w).long().clamp_max(labels.shape[1] - 1)
    return labels[rows][:, cols]


def _write_viewer(result: Any, src_path: str, trg_path: str, path: Path) -> None:
    from .viewer import write_viewer
    from .viz2d import encoded_image

    if result.topk_index is None:
        raise ValueError("the viewer needs the top-k matches: match with topk > 0")
    write_viewer(path, encoded_image(src_path, VIEWER_SIDE), encoded_image(trg_path, VIEWER_SIDE),
                 result.src.original_size, result.trg.original_size, result.src.centres / result.src.ratio,
                 result.trg.centres / result.trg.ratio, result.topk_index, result.topk_confidence, result.src.grid,
                 result.keypoints, result.transferred, title=f"{Path(src_path).name} -> {Path(trg_path).name}")


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
    from .image import check_image, image_size

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
