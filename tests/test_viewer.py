"""The self-contained HTML viewer: no outside references, exact round trip of its data, and its behaviour in Chromium."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scot.viewer import PLACEHOLDER, read_viewer, template_text, write_viewer

CHROMIUM = Path("/usr/bin/chromium")
SIZE = (300, 225)  # (W, H) of both images
GRID = (57, 75)  # jump 4 over 300 x 225
K = 16


def png_bytes(seed: int) -> bytes:
    """A 300 x 225 RGB picture with gradients, stripes and noise (so it compresses like a photo)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE[1], 0:SIZE[0]]
    img = np.stack([xx / SIZE[0], yy / SIZE[1], 0.5 + 0.5 * np.sin(xx / 9.0 + yy / 13.0 + seed)], axis=2)
    img = np.clip(img + rng.normal(0, 0.06, img.shape), 0, 1)
    buf = io.BytesIO()
    Image.fromarray((img * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def grid_points(h: int, w: int, jump: float = 4.0) -> np.ndarray:
    yy, xx = np.meshgrid(np.arange(h) * jump, np.arange(w) * jump, indexing="ij")
    return np.stack((xx.reshape(-1), yy.reshape(-1)), axis=1).astype(np.float32)


def synthetic_topk(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) top-k of a plausible N x M confidence: a peak around a smooth mapping, plus noise."""
    rng = np.random.default_rng(seed)
    h, w = GRID
    sy, sx = np.mgrid[0:h, 0:w]
    ty = np.clip(np.rint(sy * 0.9 + 3 + rng.normal(0, 1, (h, w))), 0, h - 1).reshape(-1, 1)
    tx = np.clip(np.rint(sx * 1.1 - 4 + rng.normal(0, 1, (h, w))), 0, w - 1).reshape(-1, 1)
    gy, gx = np.mgrid[0:h, 0:w]
    d2 = (gy.reshape(1, -1) - ty) ** 2 + (gx.reshape(1, -1) - tx) ** 2
    conf = np.exp(-d2 / 4.5) * rng.uniform(0.2, 1.0, (h * w, 1)) + rng.uniform(0, 0.05, d2.shape)
    index = np.argpartition(-conf, K, axis=1)[:, :K]  # unsorted on purpose: the writer sorts
    return index, np.take_along_axis(conf, index, 1)


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> dict:
    """A written viewer page for the synthetic pair and what went into it."""
    path = tmp_path_factory.mktemp("viewer") / "pair.html"
    index, conf = synthetic_topk()
    pts = grid_points(*GRID)
    kps_src = np.array([[40.5, 60.25], [150.0, 100.0], [np.nan, np.nan], [280.0, 200.0]])
    kps_trg = kps_src * 0.95 + 4
    size = write_viewer(path, png_bytes(1), png_bytes(2), SIZE, SIZE, pts, pts + 0.5, index, conf, GRID,
                        keypoints_src=kps_src, keypoints_trg=kps_trg, title="cars </script><b>x</b> & co")
    return {"path": path, "size": size, "index": index, "conf": conf, "src": pts, "trg": pts + 0.5}


def test_page_references_nothing_outside(page):
    html = page["path"].read_text(encoding="utf-8")
    for needle in ("http://", "https://", "<script src", "<link", "@import", "<iframe", "<embed", "<object"):
        assert needle not in html.lower(), needle
    assert all(m.group(1).startswith("data:") for m in re.finditer(r"url\(\s*['\"]?([^'\")]*)", html))
    assert not re.search(r"\b(src|href)\s*=\s*[\"'](?!data:)", html)
    assert "default-src 'none'" in html  # the page also forbids requests itself
    assert html.count("</script>") == 2  # the title's "</script>" is escaped inside the JSON


def test_embedded_data_round_trips(page):
    data = read_viewer(page["path"])
    dec = data["decoded"]
    assert data["title"] == "cars </script><b>x</b> & co"
    assert data["n"] == GRID[0] * GRID[1] and data["m"] == GRID[0] * GRID[1] and data["k"] == K
    assert data["points"]["src"]["kind"] == "grid" and data["points"]["trg"]["kind"] == "grid"
    np.testing.assert_array_equal(dec["src_points"], page["src"])
    np.testing.assert_array_equal(dec["trg_points"], page["trg"])
    # rows come back sorted by decreasing confidence, each the same set of targets
    order = np.argsort(-page["conf"], axis=1, kind="stable")
    np.testing.assert_array_equal(dec["topk_index"], np.take_along_axis(page["index"], order, 1))
    expected_q = np.take_along_axis(page["conf"], order, 1) / page["conf"].max() * 255
    assert np.abs(dec["topk_quantised"] - expected_q).max() <= 0.5 + 1e-9
    top1 = page["conf"].max(1)
    assert sorted(dec["order"].tolist()) == list(range(data["n"]))
    assert np.all(np.diff(top1[dec["order"]]) <= 0)
    assert data["keypoints"]["src"][2] is None and data["keypoints"]["trg"][1] == [146.5, 99.0]


def blob_length(html: str) -> int:
    return len(re.search(r'"blob":"([^"]*)"', html).group(1))


def test_file_is_small(page, tmp_path):
    # 300 x 225 pair, k = 16: two PNGs, the packed matches and the page itself
    html = page["path"].read_text(encoding="utf-8")
    images = sum(len(m) for m in re.findall(r"data:image/png;base64,[A-Za-z0-9+/=]*", html))
    assert page["size"] == page["path"].stat().st_size
    n_entries = GRID[0] * GRID[1] * K
    assert page["size"] - images < 150_000 and blob_length(html) < 2.0 * n_entries
    write_viewer(tmp_path / "raw.html", png_bytes(1), png_bytes(2), SIZE, SIZE, page["src"], page["trg"],
                 page["index"], page["conf"], GRID, compress=False)
    raw = blob_length((tmp_path / "raw.html").read_text(encoding="utf-8"))
    assert blob_length(html) < 0.5 * raw  # deflate of offsets and confidence drops pays


def test_large_target_sets_use_full_indices(tmp_path):
    rng = np.random.default_rng(3)
    m = 40_000  # beyond int16 offsets
    trg = rng.uniform(0, 1000, (m, 2)).astype(np.float32)
    src = grid_points(4, 5)
    index = rng.integers(0, m, (20, 3))
    conf = rng.uniform(0, 2, (20, 3))
    write_viewer(tmp_path / "big.html", png_bytes(1), png_bytes(2), SIZE, (1000, 1000), src, trg, index, conf, (4, 5),
                 compress=False)
    data = read_viewer(tmp_path / "big.html")
    assert "index" in data["arrays"] and data["points"]["trg"]["kind"] == "list"
    np.testing.assert_array_equal(data["decoded"]["trg_points"], trg)
    order = np.argsort(-conf, axis=1, kind="stable")
    np.testing.assert_array_equal(data["decoded"]["topk_index"], np.take_along_axis(index, order, 1))


def test_rejects_inconsistent_inputs(page, tmp_path):
    pts, index, conf = page["src"], page["index"], page["conf"]
    with pytest.raises(ValueError, match="grid"):
        write_viewer(tmp_path / "x.html", png_bytes(1), png_bytes(2), SIZE, SIZE, pts, pts, index, conf, (56, 75))
    with pytest.raises(ValueError, match="index"):
        write_viewer(tmp_path / "x.html", png_bytes(1), png_bytes(2), SIZE, SIZE, pts, pts[:100], index, conf, GRID)
    with pytest.raises(ValueError, match="PNG"):
        write_viewer(tmp_path / "x.html", b"GIF89a", png_bytes(2), SIZE, SIZE, pts, pts, index, conf, GRID)
    assert not (tmp_path / "x.html").exists()


def test_template_is_a_package_file():
    text = template_text()
    assert text.count(PLACEHOLDER) == 1 and "<canvas" in text
    assert (Path(__file__).resolve().parents[1] / "scot" / "viewer" / "template.html").is_file()


BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_viewer_in_chromium(page, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    data = read_viewer(page["path"])
    dec = data["decoded"]
    url = page["path"].resolve().as_uri()
    requests: list[str] = []
    blocked: list[str] = []
    errors: list[str] = []
    started = time.perf_counter()

    def route(r):
        if r.request.url == url or r.request.url.startswith("data:"):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    with sync_api.sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=BROWSER_ARGS,
            viewport={"width": 1280, "height": 800}, device_scale_factor=1)
        try:
            ctx.route("**/*", route)
            tab = ctx.new_page()
            tab.on("request", lambda req: requests.append(req.url))
            tab.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            tab.on("pageerror", lambda exc: errors.append(str(exc)))
            tab.goto(url)
            tab.wait_for_function("window.scotViewer && (window.scotViewer.ready || window.scotViewer.error)", timeout=10_000)
            assert tab.evaluate("window.scotViewer.error") is None
            viewer = "window.scotViewer"

            # hover hyperpixel i, slightly off its centre: the marker is its top-1 target
            h, w = GRID
            i = 20 * w + 31
            sx, sy = dec["src_points"][i]
            cx, cy = tab.evaluate(f"{viewer}.clientPoint('src', {sx + 0.8}, {sy - 0.6})")
            tab.mouse.move(cx, cy)
            assert tab.evaluate(f"{viewer}.hover.index") == i
            marker = np.array(tab.evaluate(f"{viewer}.marker"))
            np.testing.assert_allclose(marker, dec["trg_points"][dec["topk_index"][i, 0]], atol=1e-6)
            stage = tab.locator("#stage")
            assert float(stage.get_attribute("data-marker-x")) == pytest.approx(marker[0], abs=1e-6)
            assert stage.get_attribute("data-hover-index") == str(i)
            heat = tab.evaluate(f"{viewer}.heat")
            assert [c["index"] for c in heat] == dec["topk_index"][i].tolist()
            q = dec["topk_quantised"][i].astype(float)
            np.testing.assert_allclose([c["weight"] for c in heat], q / q[0], atol=1e-9)

            # another hyperpixel moves the marker to its own top-1
            j = 40 * w + 60
            cx, cy = tab.evaluate(f"{viewer}.clientPoint('src', {dec['src_points'][j][0]}, {dec['src_points'][j][1]})")
            tab.mouse.move(cx, cy)
            np.testing.assert_allclose(tab.evaluate(f"{viewer}.marker"), dec["trg_points"][dec["topk_index"][j, 0]], atol=1e-6)

            # slider: the 100 most confident matches
            tab.eval_on_selector("#lines", "el => { el.value = '100'; el.dispatchEvent(new Event('input')); }")
            assert tab.evaluate(f"{viewer}.drawnLines") == 100 and stage.get_attribute("data-lines") == "100"
            assert tab.locator("#lines-value").inner_text() == "100"

            # pins: two distinct colours, click again to unpin, button clears
            tab.mouse.click(*tab.evaluate(f"{viewer}.clientPoint('src', {sx}, {sy})"))
            tab.mouse.click(*tab.evaluate(f"{viewer}.clientPoint('src', {dec['src_points'][j][0]}, {dec['src_points'][j][1]})"))
            pins = tab.evaluate(f"{viewer}.pins")
            assert [p["index"] for p in pins] == [i, j] and pins[0]["colour"] != pins[1]["colour"]
            np.testing.assert_allclose(pins[1]["target"], dec["trg_points"][dec["topk_index"][j, 0]], atol=1e-6)
            tab.mouse.click(*tab.evaluate(f"{viewer}.clientPoint('src', {sx}, {sy})"))
            assert [p["index"] for p in tab.evaluate(f"{viewer}.pins")] == [j]
            tab.mouse.click(*tab.evaluate(f"{viewer}.clientPoint('src', {dec['src_points'][i][0]}, {dec['src_points'][i][1]})"))
            tab.mouse.move(*tab.evaluate(f"{viewer}.clientPoint('src', {sx}, {sy})"))
            shot = tmp_path / "viewer.png"
            tab.screenshot(path=str(shot), full_page=True)
            tab.click("#clear")
            assert tab.evaluate(f"{viewer}.pins.length") == 0 and stage.get_attribute("data-pins") == "0"
        finally:
            ctx.close()
    elapsed = time.perf_counter() - started
    assert not errors, errors
    assert not blocked, blocked
    assert {u for u in requests if not u.startswith("data:")} == {url}
    raw = shot.read_bytes()
    assert raw.startswith(b"\x89PNG\r\n\x1a\n") and len(raw) > 10_000
    with Image.open(shot) as im:
        assert im.size[0] >= 600 and im.size[1] >= 200
        # the pinned, hovered page is not blank: many distinct colours
        assert len(np.unique(np.asarray(im.convert("RGB").resize((160, 60))).reshape(-1, 3), axis=0)) > 500
    assert elapsed < 20.0, elapsed
