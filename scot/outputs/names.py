"""Where ``scot match`` writes a matched pair: the files of one result and their names.

* names are unique for different inputs: ``<src>__<trg>`` from the two file stems, and
  when that name already holds the result of *other* files (``a.jpg`` and ``a.png``
  against one target), ``<src>__<trg>-2``, ``-3``, ...;
* a result of the same inputs is never replaced silently (``overwrite`` allows it);
* a name too long for the filesystem, or a ``--flow`` file that exists, is reported
  before any work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ScotError
from ..io import check_file, name_max

RECORD = ".json"


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
                raise ScotError("with several pairs, give a template holding {name}, e.g. flows/{name}.npz",
                                option="flow")
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
