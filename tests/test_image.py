"""Image loading: formats, orientation, bad files, and the reference resize."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from scot.errors import ScotError
from scot.image import load_image, resize_longest_side, resized_size


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
    with pytest.raises(ScotError, match=r"nope\.png: file does not exist"):
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
