"""The viewer end to end in a real headless browser: Debian's chromium driven by playwright opens
the page, the first server-side frame arrives, the environment's rotation is typed into the
panel, and the streamed picture changes.

Skipped (saying why) where chromium, playwright or viser is missing; CI installs all three
(.ci/run, the [dev] extra). Never uses a playwright-downloaded browser."""

from __future__ import annotations

import io
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# swiftshader: WebGL without a GPU (headless chromium >= 137 needs the unsafe flag for it)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--disable-quic"]

if not Path(CHROMIUM).exists():
    pytest.skip("chromium is not installed (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the [dev] extra)")
pytest.importorskip("viser", reason="viser is not installed (the [viewer] extra)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, step: float = 0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value is not None:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def last_frame(app, full_with=None):
    """The newest frame any tab received, if it is a full one (and its state matches ``full_with``)."""
    with app.frame_event:
        frames = list(app.frames.values())
    if not frames or frames[-1]["coarse"]:
        return None
    f = frames[-1]
    return f if full_with is None or full_with(f["state"]) else None


def render_region(page) -> np.ndarray:
    """The page as RGB, left of the control panel and below the notifications: where only the
    streamed background image is drawn."""
    from PIL import Image

    panel = page.get_by_text("Lighting").first.bounding_box()
    img = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB"))
    x1 = int(panel["x"]) - 20 if panel else img.shape[1] // 2
    return img[180:, : max(x1, 50)].astype(np.float64)


def test_rotation_typed_in_the_page_changes_the_streamed_frame(tiny_prd_run, tmp_path):
    from invrender.viewer.app import ViewerApp, ViewerConfig

    app = ViewerApp(ViewerConfig(run=tiny_prd_run, port=free_port(), resolution=128, envmap="sunset",
                                 save_dir=tmp_path / "shots", max_upload_mb=0.01))
    assert app.server.get_host() == "127.0.0.1"
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 700})
            page.goto(app.url)
            first = wait_for(lambda: last_frame(app), 90, "the first full frame")
            assert first["image"].shape[1] == 128 and first["state"].envmap == "sunset"
            # the browser drew it: the render region is not the blank canvas any more
            def drawn():
                region = render_region(page)
                return region if region.std() > 5 else None

            before = wait_for(drawn, 30, "the frame on the page")

            rotation = page.locator("xpath=//label[contains(., 'Rotation')]/ancestor::*"
                                    "[.//input[@type='text']][1]//input[@type='text']").first
            rotation.fill("120")
            rotation.press("Enter")
            after_frame = wait_for(lambda: last_frame(app, lambda s: s.rotation_deg == 120.0), 60,
                                   "a full frame with the new rotation")
            assert np.abs(after_frame["image"].astype(float) - first["image"].astype(float)).mean() > 0.5

            def changed():
                diff = float(np.abs(render_region(page) - before).mean())
                return diff if diff > 0.5 else None

            diff = wait_for(changed, 30, "the page to show the rotated light")
            page.screenshot(path=str(tmp_path / "viewer.png"))

            # uploads: a non-image and an over-size file are refused in the panel; the server carries on
            upload = page.locator("input[type=file]").first
            upload.set_input_files(files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}])
            sync_api.expect(page.get_by_text("upload rejected: notes.txt")).to_be_visible(timeout=30_000)
            big = b"#?RADIANCE\n" + bytes(20_000)  # over this server's 0.01 MB limit
            upload.set_input_files(files=[{"name": "big.hdr", "mimeType": "image/vnd.radiance", "buffer": big}])
            sync_api.expect(page.get_by_text("over the upload limit")).to_be_visible(timeout=30_000)

            # snap to training camera 5: the browser's camera comes back as that training pose
            view = page.locator("xpath=//label[contains(., 'Training view')]/ancestor::*"
                                "[.//input[@type='text']][1]//input[@type='text']").first
            view.fill("5")
            view.press("Enter")
            page.get_by_role("button", name="Snap to training camera").click()
            target = app.ctx.training_camera(5).viewmat
            client = next(iter(app._clients.values()))

            def snapped():
                vm = client.camera().viewmat
                return True if np.abs(vm - target).max() < 1e-3 else None

            wait_for(snapped, 30, "the camera to snap to training view 5")

            def frame_at_view_5():
                f = last_frame(app)
                return True if f is not None and np.abs(f["camera"].viewmat - target).max() < 1e-3 else None

            wait_for(frame_at_view_5, 30, "a full frame from training view 5")
            browser.close()
        assert diff > 0.5
    finally:
        app.stop()
