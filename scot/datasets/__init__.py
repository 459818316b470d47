"""Benchmark loaders (PF-WILLOW, PF-PASCAL, SPair-71k) and their download.

``load_dataset(name, datapath)`` reads the HPF/SCOT archive layout under ``datapath``
(which holds ``PF-WILLOW/``, ``PF-PASCAL/`` and ``SPair-71k/``) and returns a
:class:`Dataset` of :class:`Pair` records with keypoints in original pixels.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ScotError
from .base import Dataset, DatasetMissingError, Pair
from .download import SOURCES, download_dataset
from .pfpascal import load_pfpascal
from .pfwillow import load_pfwillow
from .spair import load_spair

LOADERS = {"pfwillow": load_pfwillow, "pfpascal": load_pfpascal, "spair": load_spair}
DATASET_NAMES = tuple(LOADERS)

__all__ = ["Dataset", "DatasetMissingError", "Pair", "load_dataset", "download_dataset", "SOURCES", "DATASET_NAMES"]


def load_dataset(
    name: str,
    datapath: str | Path = "data",
    split: str = "test",
    pair_list: str | Path | None = None,
    check_images: bool = True,
) -> Dataset:
    """Load benchmark ``name`` (pfwillow, pfpascal or spair) from ``datapath``.

    ``pair_list`` replaces the split's pair file (e.g. an NCNet-style PF-PASCAL list).
    With ``check_images`` every referenced image must exist.
    """
    if name not in LOADERS:
        raise ScotError(f"--dataset: unknown dataset '{name}' (choose from {', '.join(LOADERS)})")
    datapath = Path(datapath)
    if datapath.exists() and not datapath.is_dir():
        raise ScotError(f"--datapath: {datapath} is not a directory")
    if pair_list is not None and not Path(pair_list).is_file():
        raise ScotError(f"--pair-list: {pair_list} does not exist or is not a file")
    return LOADERS[name](datapath, split, Path(pair_list) if pair_list else None, check_images)
