"""Where ``scot match`` writes a matched pair: the files of one result and their names.

* names are unique for different inputs: ``<src>__<trg>`` from the two file stems, and
  when that name already holds the result of *other* files (``a.jpg`` and ``a.png``
  against one target), ``<src>__<trg>-2``, ``-3``, ...;
* a result of the same inputs is never replaced silently (``overwrite`` allows it);
* a name is claimed before it is used (:mod:`~scot.outputs.claims`), so two processes
  never both write, and report, one result;
* a name too long for the filesystem, or a ``--flow`` file that exists, is reported
  before any work.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ScotError
from ..writing import WriteError, check_file, name_max
from .claims import Claim, Holder, try_claim

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
    claims: tuple[Claim, ...] = field(default=(), compare=False, repr=False)
    """The claims this process holds on the files (:func:`plan_outputs`), until :meth:`release`."""

    def files(self) -> list[Path]:
        return [p for p in (self.picture, self.record, self.flow, self.warp, self.checkerboard, self.mask,
                            self.mask_view, self.html) if p is not None]

    def release(self) -> None:
        """Give up the claims on the files (after writing them, or instead)."""
        for claim in self.claims:
            claim.release()


@dataclass(frozen=True)
class Skipped:
    """A pair that ``skip_existing`` leaves alone: ``record`` holds its result, or ``holder``
    (another process) is writing it."""

    record: Path
    holder: Holder | None = None


def _same_inputs(record: Path, src: str, trg: str) -> bool:
    try:
        doc = json.loads(record.read_text())
        return (Path(doc["source"]["path"]).resolve() == Path(src).resolve()
                and Path(doc["target"]["path"]).resolve() == Path(trg).resolve())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _inputs(src: str, trg: str) -> dict[str, str]:
    """The inputs a claim records: both images' resolved paths."""
    return {"source": str(Path(src).resolve()), "target": str(Path(trg).resolve())}


def _stem(src: str, trg: str, prefix: str) -> str:
    return f"{prefix}{Path(src).stem or 'image'}__{Path(trg).stem or 'image'}"


def _names(folder: Path, stem: str) -> Iterator[tuple[str, Path]]:
    """The names a result may take, in order, with their records: ``stem``, ``stem-2``, ..."""
    for k in range(1, 10_000):
        name = stem if k == 1 else f"{stem}-{k}"
        yield name, folder / f"{name}{RECORD}"


def existing_result(folder: Path, src: str, trg: str, prefix: str = "") -> Path | None:
    """The record in ``folder`` of an earlier result of ``src`` to ``trg``, or None: the one
    :func:`plan_outputs` would find (names are tried in order up to the first free one)."""
    for _, record in _names(folder, _stem(src, trg, prefix)):
        if not record.exists():
            return None
        if _same_inputs(record, src, trg):
            return record
    return None


def plan_outputs(folder: Path, src: str, trg: str, *, prefix: str = "", picture: bool = True,
                 overwrite: bool = False, skip_existing: bool = False, taken: set[Path] | None = None,
                 extras: Extras | None = None) -> Outputs | Skipped:
    """Claim the files for matching ``src`` to ``trg`` in ``folder``.

    The name is claimed (:mod:`~scot.outputs.claims`) before it is checked, so that of
    several processes planning one result, one writes it and the others are told; the
    caller writes the result (:func:`~scot.outputs.write_match`, which releases the claims)
    or calls :meth:`Outputs.release`.

    Args:
        folder: a writable folder (:func:`check_folder`).
        src, trg: the two image paths (their stems name the files).
        prefix: prepended to the name (``--pairs`` numbers its rows).
        picture: also plan the PNG.
        overwrite: replace an earlier result of the same inputs instead of refusing.
        skip_existing: return :class:`Skipped` when the folder already holds a result of
            the same inputs (the record is written last, so a result is complete once it
            exists), or another process is writing one.
        taken: names already planned in this run (other rows of ``--pairs``).

    Raises:
        ScotError: the name holds a result of the same inputs and ``overwrite`` is off,
            another process is writing the same result (without ``skip_existing``), or
            the file name is longer than the filesystem allows.
    """
    stem = _stem(src, trg, prefix)
    taken = taken if taken is not None else set()
    limit = name_max(folder)
    longest = f"..{stem}-9999.warp-check.png.part.12345678.tmp"  # a part's temporary file (write.Unit)
    if len(longest.encode()) > limit:
        raise ScotError(f"output names like {stem[:40]}... are longer than the {limit} bytes the filesystem allows; "
                        "rename the images", option="output")
    inputs = _inputs(src, trg)
    for name, record in _names(folder, stem):
        if record in taken or (record.exists() and not _same_inputs(record, src, trg)):
            continue  # another pair's result: find a free name
        got = try_claim(record, inputs)
        if isinstance(got, Holder):
            if got.inputs and got.inputs != inputs:
                continue  # another process writes another pair's result under this name
            if skip_existing:
                return Skipped(record, got)
            raise ScotError(f"{record} is being written for these images by {got.describe()}; wait for it to "
                            "finish, or choose another output folder", option="output")
        try:
            if record.exists():  # again, now that the name is ours: it may have been written meanwhile
                if not _same_inputs(record, src, trg):
                    got.release()
                    continue
                if skip_existing:
                    got.release()
                    return Skipped(record)
                if not overwrite:
                    raise ScotError(f"{record} already holds the result of these images; pass --overwrite to "
                                    "replace it or choose another output folder", option="output")
            taken.add(record)
            ex = extras or Extras()
            claims = [got]
            flow = None
            if ex.flow is not None:
                flow = _flow_file(Path(ex.flow.replace("{name}", name)), overwrite, taken, inputs, claims)
            return Outputs(record, folder / f"{name}.png" if picture else None, flow,
                           folder / f"{name}.warp.png" if ex.warp else None,
                           folder / f"{name}.warp-check.png" if ex.warp else None,
                           folder / f"{name}.mask.png" if ex.mask else None,
                           folder / f"{name}.mask-view.png" if ex.mask else None,
                           folder / f"{name}.html" if ex.html else None, tuple(claims))
        except BaseException:
            got.release()
            raise
    raise ScotError(f"{folder}: no free output name for {stem}", option="output")


def _flow_file(path: Path, overwrite: bool, taken: set[Path], inputs: dict[str, str], claims: list[Claim]) -> Path:
    """``--flow``'s file for one pair, claimed (appended to ``claims``).  It is named by the
    user, outside the output folder, so the record's same-inputs rule cannot vouch for it:
    any existing file needs ``overwrite``."""
    if path in taken:
        raise ScotError(f"{path} would hold the flow of two pairs; put {{name}} in the --flow template", option="flow")
    check_file(path, option="flow", overwrite=overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(path.parent, exc, option="flow") from None
    got = try_claim(path, inputs)
    if isinstance(got, Holder):
        raise ScotError(f"{path} is being written by {got.describe()}; wait for it to finish, or give another "
                        "--flow file", option="flow")
    claims.append(got)
    check_file(path, option="flow", overwrite=overwrite)  # again, now that the file is ours
    taken.add(path)
    return path
