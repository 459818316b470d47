"""What every benchmark loader produces: a list of annotated image pairs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ScotError


class DatasetMissingError(ScotError):
    """The benchmark's files are not where they should be."""


@dataclass
class Pair:
    """One annotated pair; keypoints (K, 2) and boxes in original image pixels."""

    index: int
    pair_id: str
    category: str
    src: Path
    trg: Path
    src_kps: torch.Tensor
    trg_kps: torch.Tensor
    src_bbox: tuple[float, float, float, float] | None = None
    trg_bbox: tuple[float, float, float, float] | None = None
    flags: dict[str, int] = field(default_factory=dict)
    flip: bool = False  # PF-PASCAL training pairs: both images mirrored horizontally

    @property
    def src_key(self) -> tuple[str, bool]:
        return str(self.src), self.flip

    @property
    def trg_key(self) -> tuple[str, bool]:
        return str(self.trg), self.flip


@dataclass
class Dataset:
    name: str
    root: Path
    split: str
    pairs: list[Pair]
    categories: list[str]
    default_thres: str  # "img" or "bbox"
    source_file: Path | None = None

    def __len__(self) -> int:
        return len(self.pairs)

    def select(self, category: str | None = None, limit: int | None = None, sample: int | None = None) -> "Dataset":
        """A subset: only ``category`` (if given), then ``sample`` pairs spread evenly over
        the list (so every class is represented), then the first ``limit`` pairs."""
        pairs = self.pairs
        if category is not None:
            if category not in self.categories:
                raise ScotError(f"--category: '{category}' is not a {self.name} category (one of {', '.join(self.categories)})")
            pairs = [p for p in pairs if p.category == category]
        if sample is not None:
            if sample < 1:
                raise ScotError(f"--sample: must be at least 1, got {sample}")
            if sample < len(pairs):
                pairs = [pairs[(i * len(pairs)) // sample] for i in range(sample)]
        if limit is not None:
            if limit < 1:
                raise ScotError(f"--limit: must be at least 1, got {limit}")
            pairs = pairs[:limit]
        return dataclasses.replace(self, pairs=pairs)

    def image_keys(self) -> list[tuple[str, bool]]:
        seen: dict[tuple[str, bool], None] = {}
        for p in self.pairs:
            seen.setdefault(p.src_key)
            seen.setdefault(p.trg_key)
        return list(seen)


def require_files(paths: list[Path], what: str) -> None:
    """Fail with the first missing file named."""
    for p in paths:
        if not p.is_file():
            raise ScotError(f"{what}: image {p} is missing")


def check_keypoint_counts(src: torch.Tensor, trg: torch.Tensor, where: str) -> None:
    if src.shape != trg.shape:
        raise ScotError(f"{where}: {len(src)} source keypoints but {len(trg)} target keypoints")
    if src.numel() == 0:
        raise ScotError(f"{where}: the pair has no keypoints")
