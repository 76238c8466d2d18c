"""Screenshot of the viewer in a headless browser, for the docs (docs/viewer.png).

    python scripts/viewer_screenshot.py    # runs/toybox -> docs/viewer.png (courtyard, 45°, final | normal)
    python scripts/viewer_screenshot.py --run RUN --envmap sunset --rotation 60 --split "" --out shot.png

Starts ``invrender view`` in this process on a free port, opens it in Debian's chromium (driven by
playwright; never a playwright-downloaded browser), sets the panel's lighting / display controls,
waits for the full frame and writes a screenshot of the whole page (render and panel) atomically.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--disable-quic"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "toybox")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "viewer.png")
    ap.add_argument("--envmap", default="courtyard", help="environment by name (learned, or a dataset map)")
    ap.add_argument("--rotation", type=float, default=45.0, help="degrees about +Z")
    ap.add_argument("--exposure", type=float, default=0.0, help="EV")
    ap.add_argument("--buffer", default="final (PRD blend)", help="Buffer dropdown label")
    ap.add_argument("--split", default="normal", help="Right buffer dropdown label for the split view ('': no split)")
    ap.add_argument("--resolution", type=int, default=768)
    ap.add_argument("--size", default="1280x800", help="browser viewport WxH")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args(argv)

    from playwright.sync_api import sync_playwright

    from invrender.checkpoint import atomic_write_bytes
    from invrender.viewer.app import ViewerApp, ViewerConfig

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = args.run.resolve()
    if run.is_relative_to(Path.cwd()):
        run = run.relative_to(Path.cwd())  # the panel shows the save folder: keep machine paths out of the docs
    app = ViewerApp(ViewerConfig(run=run, port=port, resolution=args.resolution, envmap=args.envmap))
    w, h = (int(v) for v in args.size.split("x"))
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": w, "height": h})
            page.goto(app.url)
            _wait(lambda: app.frames, 120, "the first frame")
            # the "software WebGL" notice is about this headless browser, not the viewer
            page.add_style_tag(content=".mantine-Notification-root {display: none !important}")
            # panel handles: the browser's controls follow the server's values
            app.gui_rotation.value = args.rotation
            app.gui_exposure.value = args.exposure
            app.gui_buffer.value = args.buffer
            if args.split:
                app.gui_split_buffer.value = args.split
                app.gui_split.value = True
            want = dict(rotation_deg=args.rotation, intensity=2.0 ** args.exposure, split=bool(args.split))
            app.update(**want)

            def ready():
                f = list(app.frames.values())[-1]
                return (not f["coarse"] and all(getattr(f["state"], k) == v for k, v in want.items())) or None

            _wait(ready, 120, "the full frame")
            time.sleep(1.5)  # the browser decodes and draws the JPEG
            atomic_write_bytes(args.out, page.screenshot())
            browser.close()
    finally:
        app.stop()
    print(f"wrote {args.out}")
    return 0


def _wait(pred, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise SystemExit(f"viewer_screenshot: timed out waiting for {what}")


if __name__ == "__main__":
    sys.exit(main())
