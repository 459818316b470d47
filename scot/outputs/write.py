"""Writing one matched pair: the picture, the dense outputs, the viewer and the record (last).

A result is written as a unit (:class:`Unit`): all of it or nothing.  Nothing is written
unless the whole result is finite (:func:`scot.record.match_record` checks it); each file
is first written in full beside its place, the record last, and only then are they moved
into place, the record after the others.  If a write fails (a full disk, a read-only
folder) or the run is interrupted, the files written so far are removed, so a result that
has a record is complete and a rerun finds nothing in its way.  The record is strict JSON
(no NaN or Infinity).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..record import match_record
from ..writing import WriteError, atomic_write_bytes, atomic_write_json, write_error
from .labels import LabelMask
from .names import Outputs


class Unit:
    """The files of one result, written all together or not at all.

    Each file is written to a hidden file beside its place (``.<name>.part``, see
    :meth:`part`); :meth:`commit` moves them into place in the order they were written, so
    the record, written last, appears last; :meth:`discard` removes what was written.
    Errors name the file the user asked for, not the hidden one.
    """

    def __init__(self) -> None:
        self.parts: list[tuple[Path, Path]] = []  # (hidden, final)

    @contextmanager
    def part(self, final: Path) -> Iterator[Path]:
        """The hidden path to write ``final``'s content to; an error writing it names ``final``.

        Only the holder of the result's claim writes these names, so what a killed writer
        left under them (the part, and the temporary file of its atomic write) is removed."""
        hidden = final.parent / f".{final.name}.part"
        for stale in final.parent.glob(f".{glob.escape(hidden.name)}.*.tmp"):
            _remove(stale)
        self.parts.append((hidden, final))
        try:
            yield hidden
        except (OSError, WriteError) as exc:
            raise write_error(final, exc) from None

    def commit(self) -> None:
        """Move every part into place, the last written last; on failure remove them all."""
        moved: list[Path] = []
        for hidden, final in self.parts:
            try:
                os.replace(hidden, final)
            except OSError as exc:
                for path in moved:
                    _remove(path)
                self.discard()
                raise write_error(final, exc) from None
            moved.append(final)
        self.parts = []

    def discard(self) -> None:
        """Remove every part written and not yet moved into place."""
        for hidden, _ in self.parts:
            _remove(hidden)
        self.parts = []


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass

VIEWER_TOPK = 16  # targets per source hyperpixel kept for the viewer's heat map
VIEWER_SIDE = 640  # the viewer embeds the images at about this size (JPEG)
WARP_SIDE = 1600  # the warp pictures are drawn at most this large


def write_match(model: Any, result: Any, src_path: str, trg_path: str, outputs: Outputs, *, top_k: int = 100,
                foreground: bool = True, mask: LabelMask | None = None) -> Outputs:
    """Write every planned output as a unit (:class:`Unit`): the picture of the ``top_k`` most
    confident matches, the dense flow, the warp, the moved ``mask`` (:func:`read_mask`), the
    viewer and the record, last.  The claims of ``outputs`` are released, written or not.

    Raises:
        WriteError: a file could not be written (a full disk, a read-only folder), naming it;
            nothing of the result is left.
    """
    try:
        drawn = {"top_k": top_k, "foreground_only": foreground} if outputs.picture is not None else None
        record = match_record(result, model, src_path, trg_path, drawn)
        labels = mask if outputs.mask is not None else None
        unit = Unit()
        try:
            if outputs.picture is not None:
                from ..viz2d import draw_match_result

                with unit.part(outputs.picture) as path:
                    draw_match_result(result, src_path, trg_path, path, top_k=top_k, foreground=foreground,
                                      subtitle_prefix=model.backbone.name, cam=model.config.cam)
            if outputs.flow or outputs.warp or outputs.mask:
                _write_dense(result, src_path, trg_path, outputs, labels, unit)
            if outputs.html is not None:
                with unit.part(outputs.html) as path:
                    _write_viewer(result, src_path, trg_path, path)
            record["outputs"] = {k: str(v) for k, v in (("flow", outputs.flow), ("warp", outputs.warp),
                                                         ("checkerboard", outputs.checkerboard),
                                                         ("mask", outputs.mask), ("mask_view", outputs.mask_view),
                                                         ("html", outputs.html)) if v is not None}
            with unit.part(outputs.record) as path:
                atomic_write_json(path, record)
            unit.commit()
        except BaseException:
            unit.discard()
            raise
    finally:
        outputs.release()
    return outputs


def _write_dense(result: Any, src_path: str, trg_path: str, outputs: Outputs, labels: LabelMask | None,
                 unit: Unit) -> None:
    import io as _io

    import numpy as np

    from ..dense import checkerboard, flow_inside, transfer_mask, warp_image
    from ..image import load_picture
    from ..viz2d import save_image

    flow, confidence = result.flow()
    if outputs.flow is not None:
        buf = _io.BytesIO()
        if outputs.flow.suffix.lower() == ".npz":
            np.savez_compressed(buf, flow=flow.numpy(), confidence=confidence.numpy())
        else:
            np.save(buf, torch.cat([flow, confidence.unsqueeze(-1)], -1).numpy())
        with unit.part(outputs.flow) as path:
            atomic_write_bytes(path, buf.getvalue())
    pictures: dict[str, Any] = {}

    def picture(path: str) -> Any:
        """The image decoded for the pictures (reduced to about WARP_SIDE), once per file."""
        if path not in pictures:
            pictures[path] = load_picture(path, WARP_SIDE)
        return pictures[path]

    if outputs.warp is not None and outputs.checkerboard is not None:
        # the pictures are a visual check: at most WARP_SIDE pixels, from reduced decodes
        step = max(1, -(-max(result.src.original_size) // WARP_SIDE))
        small = flow[::step, ::step]
        target, source = picture(trg_path), picture(src_path)
        warped = warp_image(target.tensor, small * target.scale)
        src_small = torch.nn.functional.interpolate(source.tensor[None], warped.shape[-2:], mode="bilinear",
                                                    align_corners=False)[0]
        with unit.part(outputs.warp) as path:
            save_image(warped, path)
        with unit.part(outputs.checkerboard) as path:
            save_image(checkerboard(src_small, warped, mask=flow_inside(small, target.size)), path)
    if outputs.mask is not None and labels is not None:
        from ..viz2d import label_overlay, side_by_side

        moved = transfer_mask(labels.labels, flow, result.trg.original_size)
        with unit.part(outputs.mask) as path:
            save_image(moved, path, labels=True, palette=labels.palette)
        if outputs.mask_view is not None:  # drawn on the reduced decodes, labels sampled onto them
            src_pic, trg_pic = picture(src_path).tensor, picture(trg_path).tensor
            with unit.part(outputs.mask_view) as path:
                side_by_side(label_overlay(src_pic, _nearest(labels.labels, src_pic.shape[-2:])),
                             label_overlay(trg_pic, _nearest(moved, trg_pic.shape[-2:])), path)


def _nearest(labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(H, W) ``labels`` sampled at the cell centres of an (h, w) grid over the same image:
    nearest neighbour, so label values are kept (the identity when the sizes agree)."""
    h, w = int(size[0]), int(size[1])
    rows = ((torch.arange(h) + 0.5) * labels.shape[0] / h).long().clamp_max(labels.shape[0] - 1)
    cols = ((torch.arange(w) + 0.5) * labels.shape[1] / w).long().clamp_max(labels.shape[1] - 1)
    return labels[rows][:, cols]


def _write_viewer(result: Any, src_path: str, trg_path: str, path: Path) -> None:
    from ..viewer import write_viewer
    from ..viz2d import encoded_image

    if result.topk_index is None:
        raise ValueError("the viewer needs the top-k matches: match with topk > 0")
    write_viewer(path, encoded_image(src_path, VIEWER_SIDE), encoded_image(trg_path, VIEWER_SIDE),
                 result.src.original_size, result.trg.original_size, result.source_centres(),
                 result.trg.centres / result.trg.ratio, result.topk_index, result.topk_confidence, result.src.grid,
                 result.keypoints, result.transferred, title=f"{Path(src_path).name} -> {Path(trg_path).name}")
