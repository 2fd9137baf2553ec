"""``qkv explore``: the JSON API on tiny runs of every kind (text, translation, ViT, Swin, a
model without attention), its limits and errors, and the page itself driven in headless
Chromium: what it draws is the API's numbers.

Screenshots go to a temporary folder, and also to $QKV_SCREENSHOTS when it is set."""
import base64
import http.client
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from playwright.sync_api import sync_playwright

import qkv
from qkv import data
from qkv.analysis import text_maps
from qkv.explore import Explorer, make_server
from qkv.explore.api import window_cells
from qkv.train import train

from .conftest import CHAR_CONFIG, FIXTURES, TINY

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


# -- runs and servers --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(data_root, tmp_path_factory):
    """A tiny trained GPT (char) and Transformer (translation) run, and untrained ViT, Swin
    and ResNet model directories."""
    from .test_translation import CONFIG as MT_CONFIG, TINY as MT_TINY

    root = tmp_path_factory.mktemp("explore")
    train(CHAR_CONFIG, [*TINY, "train.max_steps=2", f"out_dir={root / 'gpt'}"], progress=False)
    data.get("bible-en-de", source=FIXTURES / "bible" / "bible.db", log=lambda *a: None)
    train(MT_CONFIG, [*MT_TINY, "train.max_steps=1", f"out_dir={root / 'mt'}"], progress=False)
    torch.manual_seed(0)
    qkv.save_model(qkv.models.build("vit-28-tiny", class_names=FASHION), root / "vit")
    qkv.save_model(qkv.models.build("swin-28-tiny", class_names=FASHION), root / "swin")
    qkv.save_model(qkv.models.build("resnet-28-small"), root / "resnet")
    return root


@contextmanager
def serving(path):
    server = make_server(Explorer(path), "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def servers(runs):
    """One server per run, for the whole module."""
    with serving(runs / "gpt") as gpt, serving(runs / "mt") as mt, serving(runs / "vit") as vit, \
            serving(runs / "swin") as swin, serving(runs / "resnet") as resnet:
        yield {"gpt": gpt, "mt": mt, "vit": vit, "swin": swin, "resnet": resnet}


def request(base: str, method: str, path: str, body: bytes | dict | None = None, content_type="application/json",
            headers: dict | None = None):
    """(status, JSON answer); the path is sent exactly as given (no normalisation)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    payload = json.dumps(body).encode() if isinstance(body, dict) else body
    conn.request(method, path, body=payload, headers={"Content-Type": content_type, **(headers or {})})
    response = conn.getresponse()
    raw = response.read()
    conn.close()
    kind = response.getheader("Content-Type", "")
    return response.status, json.loads(raw) if kind.startswith("application/json") else raw


def png_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def boot_image() -> np.ndarray:
    """A 56x56 grey picture with structure (a bright block on a gradient)."""
    y, x = np.mgrid[0:56, 0:56]
    image = (x * 2).astype(np.uint8)
    image[20:44, 8:40] = 240
    return image


def huge_png_header(width=40_000, height=40_000) -> bytes:
    """A PNG that claims width x height pixels but holds almost no data: refused unread."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# -- the API ---------------------------------------------------------------------------------

def test_info_says_what_each_run_can_show(servers):
    modes = {name: request(base, "GET", "/api/info")[1] for name, base in servers.items()}
    assert {name: info["mode"] for name, info in modes.items()} == \
        {"gpt": "text", "mt": "translation", "vit": "image", "swin": "image", "resnet": "none"}
    gpt = modes["gpt"]
    assert gpt["layers"] == ["transformer.h.0.attn", "transformer.h.1.attn"] and gpt["heads"] == [2, 2]
    assert gpt["max_tokens"] == 32 and gpt["causal"]  # the model's context (block_size=32) is below 200
    assert modes["mt"]["kinds"]["cross"] == ["decoder.layers.0.crossattention"]
    assert modes["vit"]["image"]["kind"] == "vit" and modes["vit"]["image"]["grid"] == [4, 4]
    assert modes["swin"]["grids"] == [[7, 7], [7, 7], [4, 4], [4, 4]] and modes["swin"]["heads"] == [2, 2, 4, 4]
    assert "no attention" in modes["resnet"]["reason"] and "convolutional" in modes["resnet"]["reason"]


def test_text_is_the_analysis_maps_of_one_layer(servers, runs):
    status, out = request(servers["gpt"], "POST", "/api/text", {"text": "ROMEO: hi", "layer": 0})
    assert status == 200 and out["layer"] == 0 and out["layer_name"] == "transformer.h.0.attn"
    weights = np.array(out["weights"])
    assert weights.shape == (2, 9, 9) and out["queries"] == ["R", "O", "M", "E", "O", ":", "\u2423", "h", "i"]
    model, tokenizer = qkv.load(runs / "gpt")
    want = text_maps(model, tokenizer, "ROMEO: hi").layers[0][0].numpy()
    np.testing.assert_allclose(weights, want, atol=1e-5)
    assert np.allclose(np.triu(weights, 1), 0) and np.allclose(weights.sum(-1), 1, atol=1e-4)
    assert request(servers["gpt"], "POST", "/api/text", {"text": "ROMEO"})[1]["layer"] == 1  # default: the last


def test_bad_requests_get_clear_errors(servers):
    gpt = servers["gpt"]
    cases = [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (json.dumps({"text": "x" * 33}).encode(), "33 tokens long; at most 32"),
        (json.dumps({"text": "hi", "layer": 5}).encode(), "layer 5 is out of range"),
        (json.dumps({"text": "hi", "layer": "0"}).encode(), "'layer' must be an integer"),
        (json.dumps({"text": "   "}).encode(), "type some text"),
        (json.dumps({"text": "ROMEO ✓"}).encode(), "never saw"),
        (json.dumps({"text": "x" * 6000}).encode(), "at most 5,000"),
    ]
    for body, message in cases:
        status, out = request(gpt, "POST", "/api/text", body)
        assert status == 400 and message in out["error"], (body[:40], out)
    status, out = request(gpt, "POST", "/api/text", b"x" * (65 * 1024))
    assert status == 413 and "at most 65,536" in out["error"]
    status, out = request(gpt, "POST", "/api/image", {"image": base64.b64encode(png_bytes(boot_image())).decode()})
    assert status == 400 and "takes a sentence (POST /api/text)" in out["error"]
    assert request(gpt, "GET", "/api/text")[0] == 405
    assert request(gpt, "GET", "/api/positions")[0] == 400  # not a ViT


def test_unknown_paths_and_traversal_are_404(servers):
    base = servers["gpt"]
    for path in ("/nothing", "/api/nothing", "/static/../../etc/passwd", "/static/%2e%2e/%2e%2e/etc/passwd",
                 "/static/../api.py", "/static/", "/static/explore.js/../../server.py", "//etc/passwd"):
        status, out = request(base, "GET", path)
        assert status == 404 and "error" in out, path
    assert request(base, "POST", "/nothing", {})[0] == 404
    status, page = request(base, "GET", "/")
    assert status == 200 and b"<canvas id=\"matrix\"" in page
    status, script = request(base, "GET", "/static/explore.js")
    assert status == 200 and b"/api/text" in script
    assert not re.search(rb"https?://|//[a-z]", script + page)  # nothing is fetched from elsewhere


def test_translation_greedy_output_and_its_cross_attention(servers):
    status, out = request(servers["mt"], "POST", "/api/translate", {"src": "In the beginning"})
    assert status == 200 and out["kind"] == "cross" and isinstance(out["translation"], str)
    weights = np.array(out["weights"])
    assert weights.shape == (2, len(out["queries"]), len(out["keys"])) and np.allclose(weights.sum(-1), 1, atol=1e-4)
    assert out["keys"][-1] != out["keys"][0]  # the source tokens and its end token
    again = request(servers["mt"], "POST", "/api/translate",
                    {"src": "In the beginning", "tgt": out["translation"], "kind": "encoder", "layer": 0})[1]
    assert again["translation"] == out["translation"] and again["queries"] == again["keys"] == out["keys"]
    status, bad = request(servers["mt"], "POST", "/api/translate", {"src": "word " * 300})
    assert status == 400 and "at most 200" in bad["error"]
    status, bad = request(servers["mt"], "POST", "/api/translate", {"src": "x", "kind": "self"})
    assert status == 400 and "kind must be one of" in bad["error"]


def test_vit_image_rollout_and_positions(servers, runs):
    from qkv.analysis import attention_rollout, image_maps
    from qkv.data.images import to_pixels

    image = png_bytes(boot_image())
    status, out = request(servers["vit"], "POST", "/api/image?layer=1&discard_ratio=0.5", image, "image/png")
    assert status == 200 and out["grid"] == [4, 4] and out["layer"] == 1 and out["discard_ratio"] == 0.5
    assert np.array(out["weights"]).shape == (4, 17, 17) and out["queries"][0] == "[CLS]"
    assert [name for name, _ in out["prediction"]][0] in FASHION and (out["width"], out["height"]) == (56, 56)
    model = qkv.load(runs / "vit").model
    pixels = to_pixels(np.array(Image.fromarray(boot_image()).resize((28, 28), Image.Resampling.BICUBIC))[None],
                       *model.config.mean_std)
    want = attention_rollout(image_maps(model, pixels), "mean", 0.5)[0, 0, 1:].reshape(4, 4)
    np.testing.assert_allclose(np.array(out["rollout"]), want.numpy(), atol=1e-5)
    same = request(servers["vit"], "POST", "/api/image",
                   {"image": "data:image/png;base64," + base64.b64encode(image).decode(), "layer": 1,
                    "discard_ratio": 0.5})[1]
    assert same["rollout"] == out["rollout"]  # JSON with base64 and the raw file give the same
    status, pos = request(servers["vit"], "GET", "/api/positions")
    sim = np.array(pos["similarity"])
    assert status == 200 and sim.shape == (4, 4, 4, 4) and np.allclose(sim[1, 2, 1, 2], 1)


def test_images_that_are_refused(servers):
    vit = servers["vit"]
    status, out = request(vit, "POST", "/api/image", huge_png_header(), "image/png")
    assert status == 400 and "1,600,000,000 pixels" in out["error"] and "at most 4,000,000" in out["error"]
    status, out = request(vit, "POST", "/api/image", huge_png_header(3000, 2000), "image/png")
    assert status == 400 and "3000x2000 = 6,000,000 pixels" in out["error"]
    status, out = request(vit, "POST", "/api/image", b"GIF89a not really", "image/gif")
    assert status == 400 and "not an image" in out["error"]
    status, out = request(vit, "POST", "/api/image", {"image": "%%%"})
    assert status == 400 and "base64" in out["error"]
    status, out = request(vit, "POST", "/api/image", b"", "image/png")
    assert status == 400 and "empty" in out["error"]
    status, out = request(vit, "POST", "/api/image", b"x", "image/png", headers={"Content-Length": str(17 * 2**20)})
    assert status == 413
    status, out = request(vit, "POST", "/api/image?head_fusion=median", png_bytes(boot_image()), "image/png")
    assert status == 400 and "head_fusion" in out["error"]
    status, out = request(servers["resnet"], "POST", "/api/image", png_bytes(boot_image()), "image/png")
    assert status == 400 and "no attention" in out["error"]


def test_swin_windows_land_on_the_right_cells(servers, runs):
    status, out = request(servers["swin"], "POST", "/api/image?layer=1", png_bytes(boot_image()), "image/png")
    assert status == 200 and out["kind"] == "swin" and out["grid"] == [7, 7] and out["shift"] == 2
    cells, windows = np.array(out["cells"]), np.array(out["windows"])  # (windows, 16), (heads, windows, 16, 16)
    assert windows.shape == (2, 4, 16, 16) and sorted(cells[cells >= 0].tolist()) == list(range(49))
    # the shifted windows join cells of the far edges: the mask keeps them apart, so their weight is 0
    rows, cols = cells // 7, cells % 7
    apart = (np.abs(rows[:, :, None] - rows[:, None, :]) >= 4) | (np.abs(cols[:, :, None] - cols[:, None, :]) >= 4)
    apart &= (cells[:, :, None] >= 0) & (cells[:, None, :] >= 0)
    assert apart.sum() > 0 and np.allclose(windows[:, apart], 0)
    assert not np.allclose(windows[:, ~apart & (cells[:, :, None] >= 0) & (cells[:, None, :] >= 0)], 0)
    assert window_cells((4, 4), 4, 2).tolist() == [list(range(16))]  # one window: no shift
    last = request(servers["swin"], "POST", "/api/image", png_bytes(boot_image()), "image/png")[1]
    assert last["grid"] == [4, 4] and last["span"] == 8 and np.array(last["windows"]).shape == (4, 1, 16, 16)


def test_qkv_explore_command_serves_the_page(runs):
    proc = subprocess.Popen([sys.executable, "-m", "qkv", "explore", str(runs / "gpt"), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        lines = []
        while not any("open http" in line for line in lines):
            line = proc.stdout.readline()
            assert line, f"qkv explore ended: {proc.stderr.read()[-2000:]}"
            lines.append(line)
        url = re.search(r"open (http://127\.0\.0\.1:\d+)/", "".join(lines))[1]
        status, info = request(url, "GET", "/api/info")
        assert status == 200 and info["mode"] == "text" and "gpt model" in lines[0]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# -- the page, in a real browser ---------------------------------------------------------------

def _chromium() -> str | None:
    for candidate in (os.environ.get("QKV_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@pytest.fixture(scope="module")
def browser():
    executable = _chromium()
    assert executable is not None, "no Chromium: scripts/setup.sh test installs it (apt-get install chromium), or set QKV_CHROMIUM"
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    """Where screenshots go: a temporary folder, copied to $QKV_SCREENSHOTS when set."""
    folder = tmp_path_factory.mktemp("screenshots")
    yield folder
    target = os.environ.get("QKV_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for png in folder.glob("*.png"):
            shutil.copy(png, Path(target) / png.name)


@contextmanager
def page_of(browser, base):
    page = browser.new_page(viewport={"width": 1280, "height": 900}, bypass_csp=True)  # lets wait_for_function eval
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(base + "/")
    page.wait_for_function("document.body.dataset.renders !== '0' && document.body.dataset.busy === '0'")
    yield page
    assert not errors, errors
    page.close()


def wait_render(page, action):
    """Do ``action`` and wait until the page has drawn what came back."""
    before = int(page.evaluate("document.body.dataset.renders"))
    action()
    page.wait_for_function(f"Number(document.body.dataset.renders) > {before} && document.body.dataset.busy === '0'")


def assert_colours(page, selector: str, points, values, lo, hi, lut: str):
    """Each (x, y) point (CSS pixels) of the canvas shows the entry of the page's colour map
    ``lut`` for its value on lo..hi (one step of the 256 either way, for rounding)."""
    got = np.array(page.evaluate("""([selector, points]) => {
        const c = document.querySelector(selector), ctx = c.getContext('2d'), dpr = window.devicePixelRatio;
        const at = ([x, y]) => ctx.getImageData(Math.floor(x * dpr), Math.floor(y * dpr), 1, 1).data;
        return points.map((p) => Array.from(at(p)));
    }""", [selector, [list(map(float, p)) for p in points]]))
    table = np.array(page.evaluate(f"qkvExplore.{lut}"))
    for point, v, pixel in zip(points, values, got):
        k = int(np.clip(np.round((v - lo) / (hi - lo) * 255), 0, 255))
        near = table[max(0, k - 1):k + 2]
        assert pixel[3] == 255 and (np.abs(near - pixel[:3]).max(axis=1) <= 2).any(), (point, v, pixel, table[k])


def test_page_draws_the_text_maps_and_highlights_the_hovered_row(browser, servers, shots):
    base = servers["gpt"]
    with page_of(browser, base) as page:
        page.fill("#text", "ROMEO: is it you")
        wait_render(page, lambda: page.click("#text-go"))
        wait_render(page, lambda: page.select_option("#layer", "0"))
        wait_render(page, lambda: page.select_option("#head", "1"))
        want = np.array(request(base, "POST", "/api/text", {"text": "ROMEO: is it you", "layer": 0})[1]["weights"][1])
        geo = page.evaluate("Object.assign({}, document.getElementById('matrix').dataset)")
        left, top, cw, ch = (float(geo[k]) for k in ("left", "top", "cw", "ch"))
        assert (int(geo["rows"]), int(geo["cols"])) == want.shape == (16, 16)
        assert float(geo["vmax"]) == pytest.approx(want.max(), abs=1e-6)
        points = [(left + (j + 0.5) * cw, top + (i + 0.5) * ch) for i in range(16) for j in range(16)]
        assert_colours(page, "#matrix", points, want.flatten(), 0, want.max(), "VIRIDIS")
        assert "Layer 0 (transformer.h.0.attn), head 1" in page.inner_text("#matrix-title")
        assert page.locator("#matrix-legend canvas").count() == 1

        box = page.locator("#matrix").bounding_box()
        page.mouse.move(box["x"] + left + 2.5 * cw, box["y"] + top + 5.5 * ch)  # row 5, column 2
        page.wait_for_function("document.getElementById('row-highlight').dataset.row === '5'")
        hl = page.locator("#row-highlight").bounding_box()
        assert hl["y"] <= box["y"] + top + 5 * ch and hl["y"] + hl["height"] >= box["y"] + top + 6 * ch
        assert hl["height"] < ch + 8
        weights = page.eval_on_selector_all("#attends .tok", "els => els.map(e => Number(e.dataset.weight))")
        np.testing.assert_allclose(weights, want[5], atol=1e-6)
        assert page.inner_text("#query-token").startswith("“:”")
        assert f"{want[5, 2]:.3f}" in page.inner_text("#cell-info")
        assert page.locator("#heads figure").count() == 2
        page.screenshot(path=str(shots / "text-gpt.png"), full_page=True)

        wait_render(page, lambda: (page.fill("#text", "ROMEO " * 10), page.click("#text-go")))
        error = page.locator("#error")
        assert error.is_visible() and "60 tokens long; at most 32" in error.inner_text()
        assert "stale" in page.get_attribute("#text-view", "class")  # the maps shown are not this text's
        page.screenshot(path=str(shots / "text-too-long.png"), full_page=True)


def test_page_shows_a_translation_and_its_alignment(browser, servers, shots):
    base = servers["mt"]
    with page_of(browser, base) as page:
        page.fill("#src", "And God said")
        wait_render(page, lambda: page.click("#translate-go"))
        want = request(base, "POST", "/api/translate", {"src": "And God said", "layer": 0})[1]
        assert page.inner_text("#translation") == (want["translation"] or "(empty)")
        wait_render(page, lambda: page.select_option("#head", "1"))
        matrix = np.array(want["weights"][1])
        geo = page.evaluate("Object.assign({}, document.getElementById('matrix').dataset)")
        left, top, cw, ch = (float(geo[k]) for k in ("left", "top", "cw", "ch"))
        rows, cols = matrix.shape
        assert (int(geo["rows"]), int(geo["cols"])) == (rows, cols)
        points = [(left + (j + 0.5) * cw, top + (i + 0.5) * ch) for i in range(rows) for j in range(cols)]
        assert_colours(page, "#matrix", points, matrix.flatten(), 0, matrix.max(), "VIRIDIS")
        assert "target tokens" in page.inner_text("#matrix-caption")
        wait_render(page, lambda: page.select_option("#kind", "encoder"))
        assert page.evaluate("qkvExplore.state.data.kind") == "encoder"
        wait_render(page, lambda: page.select_option("#kind", "cross"))
        page.screenshot(path=str(shots / "translation.png"), full_page=True)


def test_page_shows_a_vit_rollout_over_the_uploaded_image(browser, servers, shots, tmp_path):
    base = servers["vit"]
    file = tmp_path / "boot.png"
    file.write_bytes(png_bytes(boot_image()))
    with page_of(browser, base) as page:
        wait_render(page, lambda: page.set_input_files("#image-file", str(file)))
        want = request(base, "POST", "/api/image", file.read_bytes(), "image/png")[1]
        rollout = np.array(want["rollout"])
        geo = page.evaluate("Object.assign({}, document.getElementById('rollout').dataset)")
        px = float(geo["px"])
        points = [((c + 0.5) * px, (r + 0.5) * px) for r in range(4) for c in range(4)]
        assert_colours(page, "#rollout", points, rollout.flatten(), rollout.min(), rollout.max(), "INFERNO")
        assert page.locator("#rollout-legend canvas").count() == 1
        assert page.locator("#positions-panel").is_visible()
        sim = np.array(request(base, "GET", "/api/positions")[1]["similarity"])
        geo = page.evaluate("Object.assign({}, document.getElementById('positions').dataset)")
        g, cell, gap = (float(geo[k]) for k in ("grid", "cell", "gap"))
        x0, y0 = 24 + 2 * (g * cell + gap), 24 + 1 * (g * cell + gap)  # patch (1, 2)'s small grid
        grid = [(x0 + (j + 0.5) * cell, y0 + (i + 0.5) * cell) for i in range(4) for j in range(4)]
        assert_colours(page, "#positions", grid, sim[1, 2].flatten(), -1, 1, "VIRIDIS")
        assert page.locator("#image-heads figure").count() == 4
        assert page.inner_text("#prediction").count("%") == 5

        marks = page.locator("#head-map-marks").bounding_box()
        page.mouse.move(marks["x"] + 2.5 * px, marks["y"] + 1.5 * px)  # patch (2, 3): token 1 + 1*4 + 2 = 7
        page.wait_for_function("document.getElementById('head-map').dataset.query === '7'")
        head = page.evaluate("qkvExplore.state.head")
        row = np.array(want["weights"][head][7][1:])
        assert_colours(page, "#head-map", points, row, row.min(), row.max(), "INFERNO")
        assert "what patch 2,3 attends to" in page.inner_text("#head-map-title")
        page.screenshot(path=str(shots / "image-vit.png"), full_page=True)


def test_page_for_swin_and_for_a_model_without_attention(browser, servers, shots, tmp_path):
    file = tmp_path / "boot.png"
    file.write_bytes(png_bytes(boot_image()))
    with page_of(browser, servers["swin"]) as page:
        wait_render(page, lambda: page.set_input_files("#image-file", str(file)))
        assert "No rollout for a Swin" in page.inner_text("#rollout-note")
        assert "windows of 4×4" in page.inner_text("#image-size")
        assert page.locator("#image-heads figure").count() == 4
        page.screenshot(path=str(shots / "image-swin.png"), full_page=True)
    with page_of(browser, servers["resnet"]) as page:
        assert page.locator("#none").is_visible() and "no attention" in page.inner_text("#none")
        assert page.locator("#controls").is_hidden()


# -- object detectors (DETR, Deformable DETR) -----------------------------------------------------

SHRUNK = dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=8)


def scene() -> np.ndarray:
    """A 96x96 grey canvas with a few bright and dark shapes."""
    y, x = np.mgrid[0:96, 0:96]
    image = np.full((96, 96), 40, np.uint8)
    image[10:40, 12:34] = 230
    image[((y - 64) ** 2 + (x - 62) ** 2) < 18 ** 2] = 180
    image[60:88, 8:20] = 120
    return image


@pytest.fixture(scope="module")
def detectors(tmp_path_factory):
    """Untrained tiny DETR and Deformable DETR model folders, each served."""
    root = tmp_path_factory.mktemp("detectors")
    torch.manual_seed(0)
    qkv.save_model(qkv.models.build("detr-96-small", **SHRUNK), root / "detr")
    qkv.save_model(qkv.models.build("deformable-detr-96-small", **SHRUNK), root / "deformable")
    with serving(root / "detr") as detr, serving(root / "deformable") as deformable:
        yield {"detr": (detr, root / "detr"), "deformable": (deformable, root / "deformable")}


def test_detectors_answer_what_query_looks_gives(detectors):
    from qkv.analysis.look import query_looks

    image = scene()
    for name, (base, path) in detectors.items():
        info = request(base, "GET", "/api/info")[1]
        assert info["mode"] == "detection" and info["role"] == "object_detector" and info["image"]["size"] == 96
        assert info["image"]["kind"] == name and info["image"]["labels"] == [str(d) for d in range(10)]
        assert info["layers"] == ["decoder.layers.0." + ("crossattention" if name == "detr" else "encoder_attn")]
        status, out = request(base, "POST", "/api/image?threshold=0", png_bytes(image), "image/png")
        assert status == 200 and out["kind"] == "detection" and out["read"] == [96, 96] and out["threshold"] == 0
        model = qkv.load(path).model
        found, looks = query_looks(model, image, 0.0)
        dets = out["detections"]
        assert len(dets) == len(found["scores"]) == (8 if name == "detr" else 80)  # 8 queries; top 100 of 8 x 10
        np.testing.assert_allclose([d["score"] for d in dets], found["scores"].numpy(), atol=1e-5)
        np.testing.assert_allclose([d["box"] for d in dets], found["boxes"].numpy(), atol=1e-5)
        assert [d["label"] for d in dets] == found["labels"].tolist()
        assert [d["query"] for d in dets] == found["queries"].tolist()
        assert [d["name"] for d in dets] == [str(label) for label in found["labels"].tolist()]
        if name == "detr":
            assert out["grid"] == [6, 6]
            np.testing.assert_allclose(np.array(out["maps"]), looks["maps"].numpy(), atol=1e-5)
        else:
            assert out["sampling"] == {"levels": 3, "heads": 4, "points": 4}
            np.testing.assert_allclose(np.array(out["points"]), np.stack(looks["points"]), atol=1e-5)
            np.testing.assert_allclose(np.array(out["weights"]), np.stack(looks["weights"]), atol=1e-5)
        # the default threshold, 0.5 (nothing, untrained), and JSON with base64 as for image runs
        body = {"image": "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()}
        status, half = request(base, "POST", "/api/image", body)
        assert status == 200 and half["threshold"] == 0.5
        assert len(half["detections"]) == int((found["scores"] >= 0.5).sum())
        status, again = request(base, "POST", "/api/image", {**body, "threshold": 0})
        assert again["detections"] == dets


def test_detector_images_are_read_at_their_size_and_refused_as_for_image_runs(detectors):
    base = detectors["detr"][0]
    wide = np.tile(scene(), (1, 2))                                # 192x96: shrunk to 96 px on its longer side
    status, out = request(base, "POST", "/api/image?threshold=0", png_bytes(wide), "image/png")
    assert status == 200 and (out["width"], out["height"]) == (192, 96) and out["read"] == [96, 48]
    assert out["grid"] == [3, 6] and np.array(out["maps"]).shape == (8, 3, 6)
    small = scene()[:64, :80]                                      # smaller than 96: read as it is
    assert request(base, "POST", "/api/image?threshold=0", png_bytes(small), "image/png")[1]["read"] == [80, 64]
    cases = [(png_bytes(scene()[:8, :8]), "image/png", "", "too small"),
             (png_bytes(scene()), "image/png", "?threshold=1.5", "threshold must be a score in [0, 1]"),
             (png_bytes(scene()), "image/png", "?threshold=high", "?threshold=high is not a number"),
             (huge_png_header(3000, 2000), "image/png", "", "6,000,000 pixels"),
             (b"GIF89a not really", "image/gif", "", "not an image")]
    for body, kind, query, message in cases:
        status, out = request(base, "POST", "/api/image" + query, body, kind)
        assert status == 400 and message in out["error"], (query, out)
    status, out = request(base, "POST", "/api/image", {"image": "x", "threshold": True})
    assert status == 400
    status, out = request(base, "POST", "/api/image", b"x", "image/png", headers={"Content-Length": str(17 * 2**20)})
    assert status == 413
    status, out = request(base, "POST", "/api/text", {"text": "hi"})
    assert status == 400 and out["error"].endswith("it takes an image (POST /api/image)")


def _detect_page(page, file):
    """Upload ``file``: nothing scores 0.5 (untrained), so lower the threshold to 0."""
    wait_render(page, lambda: page.set_input_files("#image-file", str(file)))
    assert page.input_value("#threshold-value") == "0.5" and page.locator("#detections tbody tr").count() == 0
    assert "lower the threshold" in page.inner_text("#detections-note")
    wait_render(page, lambda: page.fill("#threshold-value", "0"))
    assert page.input_value("#threshold") == "0"


def test_page_shows_detr_boxes_and_the_chosen_querys_attention(browser, detectors, shots, tmp_path):
    base = detectors["detr"][0]
    file = tmp_path / "scene.png"
    file.write_bytes(png_bytes(scene()))
    want = request(base, "POST", "/api/image?threshold=0", file.read_bytes(), "image/png")[1]
    with page_of(browser, base) as page:
        assert page.locator("#threshold-box").is_visible() and page.locator("#layer-box").is_hidden()
        _detect_page(page, file)
        assert page.locator("#detections tbody tr").count() == 8
        assert page.get_attribute("#detect-boxes", "data-boxes") == "8"
        wait_render(page, lambda: page.click("#detections tbody tr:nth-child(3)"))
        assert page.evaluate("qkvExplore.state.selected") == 2
        assert "chosen" in page.get_attribute("#detections tbody tr:nth-child(3)", "class")
        det, grid = want["detections"][2], np.array(want["maps"][2])
        assert f"What query {det['query']} looked at" in page.inner_text("#look-title")
        geo = page.evaluate("Object.assign({}, document.getElementById('look-map').dataset)")
        pw, ph = float(geo["pw"]), float(geo["ph"])
        assert (int(geo["rows"]), int(geo["cols"])) == grid.shape == (6, 6) and pw == ph == 400 / 6
        points = [((c + 0.5) * pw, (r + 0.5) * ph) for r in range(6) for c in range(6)]
        assert_colours(page, "#look-map", points, grid.flatten(), grid.min(), grid.max(), "INFERNO")
        # a click on the image picks the smallest box around it
        x0, y0, x1, y1 = want["detections"][5]["box"]
        x, y = (x0 + x1) / 2, (y0 + y1) / 2
        edges = np.array([d["box"] for d in want["detections"]]) - [x, y, x, y]
        assert np.abs(edges).min() * 400 > 2  # no edge within 2 px of the click: the same boxes hold it at any rounding
        inside = [i for i, d in enumerate(want["detections"])
                  if d["box"][0] <= x <= d["box"][2] and d["box"][1] <= y <= d["box"][3]]
        pick = min(inside, key=lambda i: ((lambda b: (b[2] - b[0]) * (b[3] - b[1]))(want["detections"][i]["box"]), i))
        page.locator("#detect-boxes").scroll_into_view_if_needed()
        box = page.locator("#detect-boxes").bounding_box()
        if pick != 2:
            wait_render(page, lambda: page.mouse.click(box["x"] + x * 400, box["y"] + y * 400))
        assert page.evaluate("qkvExplore.state.selected") == pick
        page.screenshot(path=str(shots / "detect-detr.png"), full_page=True)
        wait_render(page, lambda: page.fill("#threshold-value", "0.9"))  # the slider filters here, no new request
        assert page.locator("#detections tbody tr").count() == 0 and page.evaluate("qkvExplore.state.selected") is None
        tiny = tmp_path / "tiny.png"
        tiny.write_bytes(png_bytes(scene()[:8, :8]))
        wait_render(page, lambda: page.set_input_files("#image-file", str(tiny)))
        assert page.locator("#error").is_visible() and "too small" in page.inner_text("#error")
        assert "stale" in page.get_attribute("#detect-view", "class")


def test_page_draws_the_sampling_points_of_a_deformable_detr_query(browser, detectors, shots, tmp_path):
    base = detectors["deformable"][0]
    file = tmp_path / "scene.png"
    file.write_bytes(png_bytes(scene()))
    want = request(base, "POST", "/api/image?threshold=0", file.read_bytes(), "image/png")[1]
    with page_of(browser, base) as page:
        _detect_page(page, file)
        assert page.locator("#detections tbody tr").count() == 80 and page.locator("#look-map").is_hidden()
        wait_render(page, lambda: page.click("#detections tbody tr:nth-child(2)"))
        assert page.evaluate("qkvExplore.state.selected") == 1
        xy, weights = np.array(want["points"][1]), np.array(want["weights"][1])
        inside = ((xy >= 0) & (xy <= 1)).all(1)
        marks = page.evaluate("Object.assign({}, document.getElementById('look-marks').dataset)")
        assert int(marks["points"]) == inside.sum() > 0 and len(weights) == 3 * 4 * 4
        # the heaviest point inside the image is drawn last, on top: its centre has its colour
        last = int(marks["last"])
        order = [k for k in np.lexsort((np.arange(len(weights)), weights)) if inside[k]]
        assert last == order[-1]
        assert_colours(page, "#look-marks", [xy[last] * 400], [weights[last]], 0, weights.max(), "INFERNO")
        assert "3 levels × 4 heads × 4 points" in page.inner_text("#look-caption")
        page.screenshot(path=str(shots / "detect-deformable.png"), full_page=True)
