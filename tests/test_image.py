"""Image loading: formats, orientation, bad files, and the reference resize."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from scot.errors import ScotError
from scot.image import image_size, load_image, reduction_factor
from scot.resize import resize_longest_side, resized_size


def rgb_array(h=40, w=60):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_rgb_png_roundtrip(tmp_path):
    arr = rgb_array()
    Image.fromarray(arr).save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert img.tensor.shape == (3, 40, 60) and img.size == (60, 40)
    torch.testing.assert_close(img.tensor, torch.from_numpy(arr).permute(2, 0, 1).float() / 255)


def test_grayscale_and_palette_become_rgb(tmp_path):
    gray = rgb_array()[:, :, 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    t = load_image(tmp_path / "g.png").tensor
    assert t.shape == (3, 40, 60)
    torch.testing.assert_close(t[0], torch.from_numpy(gray).float() / 255)
    torch.testing.assert_close(t[0], t[2])

    pal = Image.fromarray(rgb_array()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(tmp_path / "p.png")
    t = load_image(tmp_path / "p.png").tensor
    expected = torch.from_numpy(np.array(pal.convert("RGB"))).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(t, expected)


def test_rgba_is_composited_over_white(tmp_path):
    arr = np.zeros((40, 60, 4), dtype=np.uint8)
    arr[..., 0] = 200  # red where opaque
    arr[:, :30, 3] = 255  # left half opaque, right half fully transparent
    Image.fromarray(arr, mode="RGBA").save(tmp_path / "a.png")
    t = load_image(tmp_path / "a.png").tensor
    torch.testing.assert_close(t[:, 0, 0], torch.tensor([200 / 255, 0.0, 0.0]))
    torch.testing.assert_close(t[:, 0, 59], torch.tensor([1.0, 1.0, 1.0]))


def test_16bit_grayscale_is_scaled(tmp_path):
    arr = (np.linspace(0, 65535, 40 * 60).reshape(40, 60)).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "d.png")
    t = load_image(tmp_path / "d.png").tensor
    assert t.shape == (3, 40, 60)
    assert float(t.max()) == pytest.approx(1.0, abs=1e-4) and float(t.min()) == 0.0
    assert float(t[0, 20, 30]) == pytest.approx(arr[20, 30] / 65535, abs=1e-4)


def test_exif_orientation_is_applied(tmp_path):
    arr = rgb_array(40, 60)
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / "r.jpg", exif=exif, quality=95)
    t = load_image(tmp_path / "r.jpg").tensor
    assert t.shape == (3, 60, 40)  # displayed portrait
    # the displayed top-left pixel is the stored bottom-left one
    stored = torch.from_numpy(np.array(Image.open(tmp_path / "r.jpg").convert("RGB"))).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(t[:, 0, 0], stored[:, -1, 0], atol=1e-6, rtol=0)


def test_bad_files_fail_with_one_line_naming_the_file(tmp_path):
    with pytest.raises(ScotError, match=r"nope\.png: does not exist"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ScotError, match="is a directory"):
        load_image(tmp_path)
    (tmp_path / "text.png").write_text("hello, not an image")
    with pytest.raises(ScotError, match=r"text\.png: not an image file"):
        load_image(tmp_path / "text.png")
    Image.fromarray(rgb_array(200, 200)).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(ScotError, match=r"cut\.jpg: image is truncated or corrupt") as info:
        load_image(tmp_path / "cut.jpg")
    assert "\n" not in str(info.value)


def test_tiny_images_are_rejected(tmp_path):
    Image.fromarray(rgb_array(20, 300)).save(tmp_path / "thin.png")
    with pytest.raises(ScotError, match=r"thin\.png: image is 300x20 px; both sides must be at least 32 px"):
        load_image(tmp_path / "thin.png")


def test_resize_matches_reference_rule():
    # float32 ratio computed as the reference writes it (int / tensor), int() truncation,
    # bilinear align_corners=False, up or down; 490, 291 and 62 are sides where int / tensor
    # and a float32 tensor / tensor division truncate to different sizes
    for (w, h) in [(500, 333), (333, 500), (150, 100), (1000, 999), (300, 225), (4000, 3000), (300, 490), (291, 200), (62, 41)]:
        nw, nh = resized_size(w, h, 300)
        ratio = 300 / torch.tensor(float(max(w, h)))
        assert (nw, nh) == (int(torch.tensor(float(w)) * ratio), int(torch.tensor(float(h)) * ratio))
    img = torch.rand(3, 333, 500)
    out, ratio = resize_longest_side(img, 300)
    assert out.shape == (3, 199, 300) and ratio == pytest.approx(0.6)
    torch.testing.assert_close(out, F.interpolate(img[None], size=(199, 300), mode="bilinear", align_corners=False)[0])
    small, ratio = resize_longest_side(torch.rand(3, 100, 150), 300)
    assert small.shape == (3, 200, 300) and ratio == pytest.approx(2.0)


def test_huge_image_is_resized(tmp_path):
    Image.fromarray(np.zeros((3000, 4000, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    img = load_image(tmp_path / "big.png")
    out, ratio = resize_longest_side(img.tensor, 300)
    assert out.shape == (3, 225, 300) and ratio == pytest.approx(0.075)


def test_arrays_and_tensors_are_accepted():
    arr = rgb_array()
    a = load_image(arr).tensor
    b = load_image(torch.from_numpy(arr).permute(2, 0, 1).float() / 255).tensor
    torch.testing.assert_close(a, b)
    with pytest.raises(ScotError, match="expected"):
        load_image(np.zeros((40, 60, 5), dtype=np.uint8))


def smooth_array(h: int, w: int) -> np.ndarray:
    """A smooth colour image (JPEG-friendly, so decoded values stay close to it)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    arr = np.stack([x / w * 255, y / h * 255, (np.sin(x / 37) * np.cos(y / 53) + 1) * 127], axis=2)
    return arr.astype(np.uint8)


def test_max_side_leaves_images_below_four_times_it_untouched(tmp_path):
    Image.fromarray(smooth_array(600, 1199)).save(tmp_path / "a.jpg", quality=92)
    plain = load_image(tmp_path / "a.jpg")
    limited = load_image(tmp_path / "a.jpg", max_side=300)
    assert limited.scale == 1.0 and limited.size == plain.size == (1199, 600) and limited.decoded_size == (1199, 600)
    assert torch.equal(limited.tensor, plain.tensor)
    out, ratio = limited.resized(300)
    ref, ref_ratio = resize_longest_side(plain.tensor, 300)
    assert torch.equal(out, ref) and ratio == ref_ratio


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_max_side_decodes_large_images_reduced(tmp_path, fmt):
    arr = smooth_array(1800, 2400)
    Image.fromarray(arr).save(tmp_path / f"big.{fmt}", **({"quality": 95} if fmt == "jpg" else {}))
    full = load_image(tmp_path / f"big.{fmt}")
    small = load_image(tmp_path / f"big.{fmt}", max_side=300)
    assert small.size == full.size == (2400, 1800)
    assert small.scale == pytest.approx(1 / 8) and small.decoded_size == (300, 225)
    assert reduction_factor(2400, 1800, 300) == 8 and reduction_factor(1199, 600, 300) == 1
    # each decoded pixel is the mean of its 8 x 8 block of the full decode
    pooled = F.avg_pool2d(full.tensor[None], 8)[0]
    assert float((small.tensor - pooled).abs().mean()) < 0.01
    out, ratio = small.resized(300)
    assert out.shape == (3, 225, 300)
    assert ratio == pytest.approx(resize_longest_side(full.tensor, 300)[1])  # original -> resized pixels


def test_max_side_never_goes_below_it(tmp_path):
    Image.fromarray(smooth_array(500, 1900)).save(tmp_path / "odd.jpg", quality=90)
    img = load_image(tmp_path / "odd.jpg", max_side=450)
    assert reduction_factor(1900, 500, 450) == 4
    assert img.scale == pytest.approx(1 / 4) and img.decoded_size == (475, 125) and max(img.decoded_size) >= 450
    img = load_image(tmp_path / "odd.jpg", max_side=250)  # factor 7: JPEG draft 4, then no further integer step
    assert max(img.decoded_size) >= 250 and img.decoded_size == (475, 125)
    Image.fromarray(smooth_array(500, 1900)).save(tmp_path / "odd.png")
    img = load_image(tmp_path / "odd.png", max_side=250)  # PNG: one box-filter reduction by 7
    assert img.scale == pytest.approx(1 / 7) and img.decoded_size == (272, 72)


def test_max_side_keeps_exif_orientation_and_original_size(tmp_path):
    im = Image.fromarray(smooth_array(1600, 2400))
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(tmp_path / "r.jpg", exif=exif, quality=92)
    full = load_image(tmp_path / "r.jpg")
    small = load_image(tmp_path / "r.jpg", max_side=300)
    assert full.size == small.size == image_size(tmp_path / "r.jpg") == (1600, 2400)
    assert small.decoded_size == (200, 300) and small.scale == pytest.approx(1 / 8)
    pooled = F.avg_pool2d(full.tensor[None], 8)[0]
    assert float((small.tensor - pooled).abs().mean()) < 0.01


def test_max_side_converts_palette_alpha_and_16bit_before_reducing(tmp_path):
    pal = Image.fromarray(smooth_array(1300, 1300)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    pal.save(tmp_path / "p.png")
    small = load_image(tmp_path / "p.png", max_side=300)
    expected = F.avg_pool2d(load_image(tmp_path / "p.png").tensor[None], 4)[0]  # colours averaged, not indices
    assert small.decoded_size == (325, 325) and float((small.tensor - expected).abs().max()) < 1.5 / 255

    rgba = np.zeros((1300, 1300, 4), dtype=np.uint8)
    rgba[..., 0], rgba[:, :650, 3] = 200, 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    t = load_image(tmp_path / "a.png", max_side=300).tensor
    torch.testing.assert_close(t[:, 0, 0], torch.tensor([200 / 255, 0.0, 0.0]))
    torch.testing.assert_close(t[:, 0, -1], torch.tensor([1.0, 1.0, 1.0]))

    deep = np.full((1300, 1300), 1000, dtype=np.uint16)  # a dark 16-bit image stays dark
    Image.fromarray(deep).save(tmp_path / "d.png")
    t = load_image(tmp_path / "d.png", max_side=300).tensor
    assert t.shape == (3, 325, 325) and float(t.max()) == pytest.approx(1000 / 65535, abs=1e-6)


def test_max_side_applies_to_pil_images_but_not_arrays():
    arr = smooth_array(1300, 1300)
    from_pil = load_image(Image.fromarray(arr), max_side=300)
    from_array = load_image(arr, max_side=300)
    assert from_pil.size == from_array.size == (1300, 1300)
    assert from_pil.scale == pytest.approx(1 / 4) and from_pil.decoded_size == (325, 325)
    assert from_array.scale == 1.0 and from_array.decoded_size == (1300, 1300)
    with pytest.raises(ScotError, match=r"^max_side: must be a whole number of pixels >= 1") as info:
        load_image(arr, max_side=0)
    assert info.value.option == "max_side"


def test_pillow_warning_range_is_accepted_and_its_error_range_refused(tmp_path, monkeypatch):
    # Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that; scaled down here.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    Image.fromarray(smooth_array(1000, 1500)).save(tmp_path / "warn.jpg")
    assert load_image(tmp_path / "warn.jpg").size == (1500, 1000)
    Image.fromarray(smooth_array(1500, 1500)).save(tmp_path / "bomb.jpg")
    with pytest.raises(ScotError, match=r"bomb\.jpg: image is too large to decode safely") as info:
        load_image(tmp_path / "bomb.jpg")
    assert "\n" not in str(info.value)


HUGE_LOAD = """
import resource, sys
from scot.image import load_image
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
img = load_image(sys.argv[1], max_side=300)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(img.size, img.decoded_size, img.scale, (after - before) // 1024)
"""


def test_108_megapixel_jpeg_loads_reduced_in_little_memory(tmp_path):
    im = Image.new("RGB", (12000, 9000), (90, 140, 200))
    ImageDraw.Draw(im).ellipse((3000, 2000, 9000, 7000), fill=(250, 200, 40))
    im.save(tmp_path / "huge.jpg", quality=85)
    del im
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", HUGE_LOAD, str(tmp_path / "huge.jpg")], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    described, grown_mib = out.stdout.strip().rsplit(" ", 1)
    assert described == "(12000, 9000) (300, 225) 0.025"
    grown_mib = int(grown_mib)
    assert grown_mib < 150, f"loading grew the process by {grown_mib} MiB"


def test_running_out_of_memory_is_one_line(tmp_path, monkeypatch):
    import scot.image

    Image.fromarray(rgb_array()).save(tmp_path / "a.png")

    def exhausted(pixels, divisor):
        raise MemoryError

    monkeypatch.setattr(scot.image, "_unit_float", exhausted)
    with pytest.raises(ScotError, match=r"a\.png: not enough memory to convert the 60x40 px image \(pass max_side") as info:
        load_image(tmp_path / "a.png")
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------------------
# float (and 32-bit integer) pixels: one range rule for files, PIL images, arrays and tensors


def _float_plane(value_at_corner: float, base: float = 0.5) -> np.ndarray:
    plane = np.full((40, 60), base, np.float32)
    plane[3, 4] = value_at_corner
    return plane


def _float_sources(plane: np.ndarray, tmp_path: Path) -> dict:
    """The same float values as a TIFF file (mode F), a PIL image, an (H, W, 3) array and a (3, H, W) tensor."""
    Image.fromarray(plane).save(tmp_path / "f.tiff")
    rgb = np.repeat(plane[:, :, None], 3, axis=2)
    return {"file": tmp_path / "f.tiff", "pil": Image.fromarray(plane), "array": rgb,
            "tensor": torch.from_numpy(rgb).permute(2, 0, 1).contiguous()}


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan], ids=["inf", "minus-inf", "nan"])
@pytest.mark.parametrize("kind", ["file", "pil", "array", "tensor"])
def test_a_non_finite_pixel_is_an_error_naming_the_image(tmp_path, value, kind):
    """One inf pixel used to divide a float TIFF by 65535 (matched as black); NaN reached the backbone."""
    source = _float_sources(_float_plane(value), tmp_path)[kind]
    with pytest.raises(ScotError, match=r"the image holds NaN or infinite values") as info:
        load_image(source, name="photo.tiff" if kind != "file" else None, max_side=300)
    assert "f.tiff" in str(info.value) or "photo.tiff" in str(info.value)
    assert "\n" not in str(info.value)


def test_a_non_finite_pixel_is_found_in_a_reduced_decode(tmp_path):
    big = np.full((1300, 1300), 0.25, np.float32)
    big[650, 651] = np.nan
    Image.fromarray(big).save(tmp_path / "big.tiff")
    with pytest.raises(ScotError, match=r"big\.tiff: the image holds NaN or infinite values"):
        load_image(tmp_path / "big.tiff", max_side=300)


@pytest.mark.parametrize("kind", ["file", "pil", "array", "tensor"])
@pytest.mark.parametrize("value, expected", [
    (100000.0, r"pixel values reach 100000, beyond 65535 \(the 16-bit range\)"),
    (-0.5, r"pixel values go down to -0\.5; an image holds no negative values"),
], ids=["above-16-bit", "negative"])
def test_float_values_out_of_every_range_are_an_error(tmp_path, kind, value, expected):
    """Values above 65535 used to be clipped to white (files) or passed on above 1 (arrays); negative ones clipped."""
    source = _float_sources(_float_plane(value), tmp_path)[kind]
    with pytest.raises(ScotError, match=expected) as info:
        load_image(source, name="photo" if kind != "file" else None)
    assert "\n" not in str(info.value) and ("f.tiff" in str(info.value) or "photo" in str(info.value))


@pytest.mark.parametrize("kind", ["file", "pil", "array", "tensor"])
@pytest.mark.parametrize("high, divisor", [(0.9, 1.0), (1.0, 1.0), (200.0, 255.0), (255.0, 255.0), (40000.0, 65535.0)])
def test_float_values_are_scaled_by_the_smallest_range_holding_them(tmp_path, kind, high, divisor):
    """[0, 1] is kept, [0, 255] divided by 255, [0, 65535] by 65535: the image's largest value decides."""
    plane = _float_plane(high, base=0.0)
    plane[10, 10] = high / 4
    t = load_image(_float_sources(plane, tmp_path)[kind]).tensor
    assert t.shape == (3, 40, 60) and t.dtype == torch.float32
    torch.testing.assert_close(t, torch.from_numpy(plane / divisor).float().expand(3, -1, -1))


def test_32_bit_integer_image_beyond_16_bits_is_an_error(tmp_path):
    arr = np.full((40, 60), 1000, np.int32)
    arr[0, 0] = 70000
    Image.fromarray(arr).save(tmp_path / "i.tiff")
    with pytest.raises(ScotError, match=r"i\.tiff: pixel values reach 70000, beyond 65535"):
        load_image(tmp_path / "i.tiff")
    arr[0, 0] = 65535
    Image.fromarray(arr).save(tmp_path / "ok.tiff")
    t = load_image(tmp_path / "ok.tiff").tensor
    assert float(t.max()) == 1.0 and float(t[0, 1, 1]) == pytest.approx(1000 / 65535)
