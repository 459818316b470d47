"""Shared fixtures: where the real data lives, generated photo pairs, small helpers.

Real data
    A test that needs real benchmark files asks for them by dataset (``willow_root``,
    ``willow_rows``, ``pfpascal_val``, ``spair_val``, ``spair_fullres``, ``spair_sample``,
    ``pfpascal_lists``).  Each dataset is looked for in
    this order, and the first folder holding it wins:

    1. ``$SCOT_DATA`` when it is set (to anything but the empty string): then it is the
       only place looked at, so an empty folder means "no data";
    2. ``../shared`` beside the repository;
    3. the project's own ``data/`` folder, where ``scot eval --dataset pfwillow
       --download`` puts PF-WILLOW.

    Each of these may hold a dataset in the shared layout (``datasets/pfwillow-dev/
    PF-WILLOW``, ``datasets/pfpascal-val/PF-PASCAL``, ``datasets/spair-pf-val/SPair-71k``,
    ``datasets/spair-fullres6/SPair-71k``, ``datasets/formats/...``) or, for PF-WILLOW, in the HPF layout that
    ``data/`` uses (``PF-WILLOW/`` directly).  When a dataset is nowhere, the test is
    skipped with one reason starting with :data:`DATA_SKIP_PREFIX` that names the data and
    how to get it; CI fails on any such skip where the data should be present.

Generated data
    Tests that need natural images but not benchmark annotations use ``photo_willow`` /
    ``photo_rows``: five variants of the sample photo that matplotlib ships (cropped,
    rescaled, mirrored, squashed, grey), laid out as a PF-WILLOW folder whose keypoints
    follow exactly from the known crops and scales.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from scot.datasets.pfwillow import COLUMNS
from scot.errors import ScotError
from scot.demo import KEYPOINTS, sample_photo

REPO = Path(__file__).resolve().parents[1]

DATA_SKIP_PREFIX = "needs data: "
"""Every skip for missing real data starts with this; CI greps for it."""


# ---------------------------------------------------------------------------------------
# Real data: one lookup, per dataset.


@dataclass(frozen=True)
class RealData:
    """One real dataset the tests use and how to recognise and obtain it.

    Attributes:
        what: what the skip reason says is missing.
        layouts: the dataset's folder, relative to a data root, in every layout it comes in.
        marker: a file inside that folder that must exist.
        how: how to get it, for the skip reason.
    """

    what: str
    layouts: tuple[str, ...]
    marker: str
    how: str


_SHARED_HOW = "set SCOT_DATA to a folder holding {folder}, or put the shared data folder at ../shared"

REAL_DATA: dict[str, RealData] = {
    "pfwillow": RealData(
        what="PF-WILLOW pairs",
        layouts=("datasets/pfwillow-dev/PF-WILLOW", "PF-WILLOW"),
        marker="test_pairs.csv",
        how=_SHARED_HOW.format(folder="datasets/pfwillow-dev/PF-WILLOW")
        + ", or run `scot eval --dataset pfwillow --download`",
    ),
    "spair-sample": RealData(
        what="the SPair-71k annotation sample",
        layouts=("datasets/formats/spair-71k-sample",),
        marker="PairAnnotation/test/000001-2008_002719-2008_004100:aeroplane.json",
        how=_SHARED_HOW.format(folder="datasets/formats/spair-71k-sample"),
    ),
    "pfpascal-val": RealData(
        what="the PF-PASCAL validation pairs with their images",
        layouts=("datasets/pfpascal-val/PF-PASCAL",),
        marker="val_pairs.csv",
        how=_SHARED_HOW.format(folder="datasets/pfpascal-val/PF-PASCAL"),
    ),
    "spair-val": RealData(
        what="the SPair-71k validation pairs on PF-PASCAL's images",
        layouts=("datasets/spair-pf-val/SPair-71k",),
        marker="Layout/large/val.txt",
        how=_SHARED_HOW.format(folder="datasets/spair-pf-val/SPair-71k"),
    ),
    "spair-fullres": RealData(
        what="the six full-resolution SPair-71k test pairs",
        layouts=("datasets/spair-fullres6/SPair-71k",),
        marker="Layout/large/test.txt",
        how=_SHARED_HOW.format(folder="datasets/spair-fullres6/SPair-71k"),
    ),
    "pfpascal-lists": RealData(
        what="the PF-PASCAL NCNet pair lists",
        layouts=("datasets/formats/pf-pascal-pairlists",),
        marker="test_pairs_ncnet.csv",
        how=_SHARED_HOW.format(folder="datasets/formats/pf-pascal-pairlists"),
    ),
}


def data_roots() -> list[Path]:
    """The folders searched for real data, in order: ``$SCOT_DATA`` alone when set, else ``../shared`` then ``data/``."""
    env = os.environ.get("SCOT_DATA", "")
    if env:
        return [Path(env)]
    return [REPO.parent / "shared", REPO / "data"]


def find_data(key: str) -> Optional[Path]:
    """The folder of real dataset ``key`` (a key of :data:`REAL_DATA`), or None if it is nowhere."""
    spec = REAL_DATA[key]
    for root in data_roots():
        for layout in spec.layouts:
            folder = root / layout
            if (folder / spec.marker).is_file():
                return folder
    return None


def require_data(key: str) -> Path:
    """The folder of real dataset ``key``; skips the test with a ``needs data:`` reason when it is missing."""
    folder = find_data(key)
    if folder is None:
        spec = REAL_DATA[key]
        where = ", ".join(str(r) for r in data_roots())
        pytest.skip(f"{DATA_SKIP_PREFIX}{spec.what} (not in {where}): {spec.how}")
    return folder


def _read_willow_rows(root: Path) -> list[dict]:
    """The rows of ``root/test_pairs.csv`` as dicts with image paths and (10, 2) keypoints."""
    rows = []
    with open(root / "test_pairs.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            src = root / Path(*Path(row["imageA"]).parts[1:])
            trg = root / Path(*Path(row["imageB"]).parts[1:])
            skp = torch.tensor([[float(row[f"XA{i}"]), float(row[f"YA{i}"])] for i in range(1, 11)])
            tkp = torch.tensor([[float(row[f"XB{i}"]), float(row[f"YB{i}"])] for i in range(1, 11)])
            rows.append({"src": src, "trg": trg, "src_kps": skp, "trg_kps": tkp, "cls": Path(row["imageA"]).parts[1]})
    return rows


DEV_IMAGES_PER_CLASS = 5


def pfwillow_dev_view(root: Path, scratch: Path) -> Path:
    """``root`` if it holds the 200-pair development subset, else that subset derived from it.

    The shared development subset keeps five images per class (the even-indexed ones in
    name order) and every ordered pair among them, sorted by path.  A full PF-WILLOW (as
    downloaded into ``data/``: ten images per class, 900 pairs) is narrowed to the same
    pairs in ``scratch/PF-WILLOW`` (its CSV rows, links to its class folders), so the
    tests see the same 200 pairs whichever copy they find.
    """
    with open(root / "test_pairs.csv", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        lines = [row for row in reader if row]
    images: dict[str, set[str]] = {}
    for row in lines:
        for path in row[:2]:
            parts = Path(path).parts
            images.setdefault(parts[1], set()).add(path)
    if all(len(names) == DEV_IMAGES_PER_CLASS for names in images.values()):
        return root
    kept = {category: sorted(names)[::2] for category, names in images.items()}
    keep = {path for names in kept.values() for path in names}
    rows = sorted((row for row in lines if row[0] in keep and row[1] in keep), key=lambda r: (r[0], r[1]))
    expected = sum(len(names) * (len(names) - 1) for names in kept.values())  # every ordered pair
    if len(rows) != expected:
        pytest.fail(f"PF-WILLOW at {root}: {len(rows)} pairs among the even-indexed images of each class, expected {expected}")
    view = scratch / "PF-WILLOW"
    view.mkdir(parents=True)
    for category in images:
        (view / category).symlink_to((root / category).resolve(), target_is_directory=True)
    with open(view / "test_pairs.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return view


@pytest.fixture(scope="session")
def willow_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The PF-WILLOW development subset (200 pairs, five images per class): the folder holding test_pairs.csv."""
    return pfwillow_dev_view(require_data("pfwillow"), tmp_path_factory.mktemp("pfwillow-dev"))


@pytest.fixture(scope="session")
def willow_rows(willow_root: Path) -> list[dict]:
    """The PF-WILLOW development pairs as dicts with image paths and (10, 2) keypoints."""
    return _read_willow_rows(willow_root)


@pytest.fixture(scope="session")
def spair_sample() -> Path:
    """The real SPair-71k annotation sample (one pair, no images) in the archive's layout."""
    return require_data("spair-sample")


@pytest.fixture(scope="session")
def pfpascal_val() -> Path:
    """The shared PF-PASCAL validation split (308 pairs, their images and .mat annotations): the PF-PASCAL folder."""
    return require_data("pfpascal-val")


@pytest.fixture(scope="session")
def spair_val() -> Path:
    """The shared SPair-71k validation subset (356 pairs on PF-PASCAL's 300-px images): the SPair-71k folder."""
    return require_data("spair-val")


@pytest.fixture(scope="session")
def spair_fullres() -> Path:
    """The six full-resolution SPair-71k test pairs with their real annotations: the SPair-71k folder."""
    return require_data("spair-fullres")


@pytest.fixture(scope="session")
def pfpascal_lists() -> Path:
    """The folder of the real PF-PASCAL pair lists in the NCNet csv format."""
    return require_data("pfpascal-lists")


# ---------------------------------------------------------------------------------------
# Generated data: variants of matplotlib's sample photo with exact keypoints.


@dataclass(frozen=True)
class PhotoVariant:
    """A cropped, resized and otherwise altered copy of the sample photo.

    Attributes:
        name: file stem.
        box: (left, top, right, bottom) kept from the photo; holds every keypoint.
        size: (width, height) it is resized to (the two scales may differ).
        mirror: flipped left to right after resizing.
        alter: a last change of colour that moves no pixel, or None.
    """

    name: str
    box: tuple[int, int, int, int]
    size: tuple[int, int]
    mirror: bool = False
    alter: Optional[Callable[[Image.Image], Image.Image]] = None

    def point(self, x: float, y: float) -> tuple[float, float]:
        """Where the photo's point (x, y) lands in this variant."""
        left, top, right, bottom = self.box
        u = (x - left) * self.size[0] / (right - left)
        v = (y - top) * self.size[1] / (bottom - top)
        return (self.size[0] - u if self.mirror else u), v

    def render(self, photo: Image.Image) -> Image.Image:
        img = photo.crop(self.box).resize(self.size, Image.Resampling.BICUBIC)
        if self.mirror:
            img = ImageOps.mirror(img)
        return self.alter(img) if self.alter else img


PHOTO_CATEGORY = "duck(S)"  # the loader knows PF-WILLOW's classes only; the generated pairs are filed under one
PHOTO_VARIANTS = (
    PhotoVariant("photo", (0, 0, 512, 600), (512, 600)),
    PhotoVariant("zoomed", (90, 20, 450, 520), (432, 600), alter=lambda im: ImageEnhance.Brightness(im).enhance(1.12)),
    PhotoVariant("small_mirrored", (100, 30, 420, 540), (192, 306), mirror=True),
    PhotoVariant("squashed", (60, 0, 512, 560), (400, 300)),
    PhotoVariant("grey", (110, 40, 410, 530), (300, 490), alter=lambda im: ImageOps.grayscale(im).convert("RGB")),
)


def write_photo_willow(datapath: Path) -> Path:
    """Write ``datapath/PF-WILLOW``: the photo variants and all 20 ordered pairs, in the HPF layout."""
    root = datapath / "PF-WILLOW"
    (root / PHOTO_CATEGORY).mkdir(parents=True)
    with Image.open(sample_photo()) as im:
        photo = im.convert("RGB")
    for variant in PHOTO_VARIANTS:
        variant.render(photo).save(root / PHOTO_CATEGORY / f"{variant.name}.png")
    with open(root / "test_pairs.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for a in PHOTO_VARIANTS:
            for b in PHOTO_VARIANTS:
                if a is b:
                    continue
                ka = [a.point(x, y) for x, y in KEYPOINTS]
                kb = [b.point(x, y) for x, y in KEYPOINTS]
                writer.writerow([f"PF-dataset/{PHOTO_CATEGORY}/{a.name}.png", f"PF-dataset/{PHOTO_CATEGORY}/{b.name}.png"]
                                + [round(p[0], 4) for p in ka] + [round(p[1], 4) for p in ka]
                                + [round(p[0], 4) for p in kb] + [round(p[1], 4) for p in kb])
    return root


@pytest.fixture(scope="session")
def photo_willow(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated PF-WILLOW folder (20 pairs of sample-photo variants, exact keypoints) holding test_pairs.csv."""
    return write_photo_willow(tmp_path_factory.mktemp("photo-data"))


@pytest.fixture(scope="session")
def photo_rows(photo_willow: Path) -> list[dict]:
    """The generated pairs as dicts like ``willow_rows``; consecutive rows differ in image sizes."""
    return _read_willow_rows(photo_willow)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def one_line_error(res, *fragments: str) -> None:
    """A CLI run failed with exit 2 and one line on stderr holding every fragment."""
    assert res.exit_code == 2, (res.exit_code, res.output)
    err = res.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for f in fragments:
        assert f in err, (f, err)


def raises_one_line(call: Callable[[], Any], *patterns: str) -> ScotError:
    """Run ``call``; it must raise a one-line ScotError matching every regex in ``patterns``."""
    with pytest.raises(ScotError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message, message
    for pattern in patterns:
        assert re.search(pattern, message), (pattern, message)
    return info.value
