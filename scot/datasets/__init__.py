"""Benchmark loaders (PF-WILLOW, PF-PASCAL, SPair-71k), their download, and your own pairs.

``load_dataset(name, datapath)`` reads the HPF/SCOT archive layout under ``datapath``
(which holds ``PF-WILLOW/``, ``PF-PASCAL/`` and ``SPair-71k/``) and returns a
:class:`Dataset` of :class:`Pair` records with keypoints in original pixels;
``load_dataset("custom", pair_list=FILE)`` reads a JSON or JSON Lines file of annotated
pairs (:mod:`.custom`) into the same records.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import ScotError
from .base import Dataset, DatasetMissingError, Pair
from .custom import load_custom
from .download import SOURCES, download_dataset
from .pfpascal import load_pfpascal
from .pfwillow import load_pfwillow
from .spair import load_spair

LOADERS = {"pfwillow": load_pfwillow, "pfpascal": load_pfpascal, "spair": load_spair, "custom": load_custom}
DATASET_NAMES = tuple(LOADERS)

__all__ = ["Dataset", "DatasetMissingError", "Pair", "load_dataset", "open_dataset", "download_dataset", "SOURCES",
           "DATASET_NAMES"]


def load_dataset(
    name: str,
    datapath: str | Path = "data",
    split: str = "test",
    pair_list: str | Path | None = None,
    check_images: bool = True,
) -> Dataset:
    """Load a benchmark's pairs, validating every annotation file it reads.

    Args:
        name: ``pfwillow``, ``pfpascal``, ``spair`` or ``custom``.
        datapath: the folder holding ``PF-WILLOW/``, ``PF-PASCAL/`` and ``SPair-71k/`` (not
            used by ``custom``).
        split: the benchmark's split (``test``; PF-PASCAL and SPair-71k also ``val``, ``trn``).
        pair_list: a file replacing the split's pair file (e.g. an NCNet-style PF-PASCAL list);
            for ``custom``, the pair file itself (:mod:`.custom`).
        check_images: require every referenced image to exist.

    Returns:
        :class:`Dataset` of :class:`Pair` records, keypoints in original pixels.
    """
    if name not in LOADERS:
        raise ScotError(f"unknown dataset '{name}' (choose from {', '.join(LOADERS)})", option="name")
    datapath = Path(datapath)
    if datapath.exists() and not datapath.is_dir():
        raise ScotError(f"{datapath} is not a directory", option="datapath")
    if pair_list is not None and not Path(pair_list).is_file():
        raise ScotError(f"{pair_list} does not exist or is not a regular file", option="pair_list")
    return LOADERS[name](datapath, split, Path(pair_list) if pair_list else None, check_images)


def open_dataset(
    name: str,
    datapath: str | Path = "data",
    split: str = "test",
    pair_list: str | Path | None = None,
    *,
    download: bool = False,
    ask: Callable[[str], bool] | None = None,
    progress: Callable[[int, int | None], None] | None = None,
) -> Dataset:
    """:func:`load_dataset`, downloading the benchmark into ``datapath`` when it is missing.

    Args:
        download: fetch a missing benchmark without asking.
        ask: ``ask(question) -> bool`` may allow the download when ``download`` is off.
        progress: ``progress(bytes_so_far, total_or_None)`` during a download.
    """
    try:
        return load_dataset(name, datapath, split, pair_list)
    except DatasetMissingError as exc:
        src = SOURCES[name]
        if not download and not (ask is not None and ask(f"{exc}. Download {src.folder} ({src.approx_size}) into "
                                                         f"{datapath}?")):
            raise ScotError(f"{exc}; or allow the download (--download, download=True) of {src.folder} "
                            f"({src.approx_size}) from {src.urls[0]}") from None
    download_dataset(name, datapath, progress=progress)
    return load_dataset(name, datapath, split, pair_list)
