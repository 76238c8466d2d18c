"""The viewer's viser wiring: a panel of controls bound to one :class:`ViewerState`, and per
browser tab a render thread that streams server-side frames as the scene's background image
(as nerfstudio / nerfview do).

While the camera moves, each new pose gets a *coarse* frame (``coarse_scale`` of the resolution,
lower JPEG quality) so the view follows the mouse; once no camera message has arrived for
``settle`` seconds the full frame replaces it. A panel change renders the full frame at once
(light changes only reshade the cached G-buffer, see :mod:`invrender.viewer.render`). Frames
are never queued: a thread always renders the newest state and pose, dropping the ones it skipped.

Safety: the server listens on 127.0.0.1 unless ``--host`` says otherwise. Uploaded maps are
limited in size (checked on the announced size before the bytes are accepted where viser allows,
and again on arrival) and validated (:func:`invrender.viewer.render.read_envmap_upload`); a rejected
file, like any rendering error, becomes a message in the panel and the server carries on.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from invrender.viewer.render import (
    BUFFERS,
    COLORMAPS,
    LEARNED,
    UploadError,
    ViewerCamera,
    ViewerContext,
    ViewerError,
    ViewerState,
    camera_from_viser,
    check_upload_size,
    encode_png,
    render_frame,
    save_png,
    viser_pose,
)


@dataclass
class ViewerConfig:
    """Interactive relighting viewer: renders on this machine and streams frames to a browser."""

    run: Path
    """Run folder written by ``invrender train``."""
    port: int = 8080
    """Port of the web page (http://HOST:PORT)."""
    host: str = "127.0.0.1"
    """Address to listen on. The default serves this machine only; ``0.0.0.0`` exposes the viewer,
    uploads included, to the network."""
    resolution: int = 512
    """Longer side of a full frame, pixels (changeable in the panel)."""
    coarse_scale: float = 0.5
    """Resolution factor of the frames sent while the camera moves."""
    jpeg_quality: int = 90
    """JPEG quality of full frames."""
    coarse_jpeg_quality: int = 60
    """JPEG quality of coarse frames."""
    settle: float = 0.25
    """Seconds without camera motion before the full frame is sent."""
    envmaps: Path | None = None
    """Folder of .hdr / .exr maps to offer (default: the run's dataset's envmaps/)."""
    envmap: str | None = None
    """Environment to start with, by name (``learned``, or a map of that folder, e.g. ``sunset``);
    default: the learned one."""
    save_dir: Path | None = None
    """Where "Save PNG" writes (default: RUN/snapshots; changeable in the panel)."""
    max_upload_mb: float = 64.0
    """Largest environment map accepted by upload, MB."""
    backend: Literal["auto", "native", "torch", "gsplat"] = "auto"
    """Gaussian rasterizer backend."""
    threads: int | None = None
    """CPU threads for rendering (default: torch's). On a machine busy with other jobs, 1 avoids
    threads waiting on each other for a core, which can cost more than the second thread gains."""


def import_viser():
    """viser, or an ImportError that says which extra brings it."""
    try:
        import viser  # noqa: PLC0415
    except ImportError as e:
        raise ImportError(
            "the viewer needs viser: pip install 'invrender[viewer]' (or pip install viser)"
        ) from e
    return viser


def _pretty(name: str) -> str:
    return {"final": "final (PRD blend)", "pbr": "PBR only", "radiance": "radiance only"}.get(name, name)


_BUFFER_LABELS = {_pretty(b): b for b in BUFFERS}


class _ClientLoop(threading.Thread):
    """Renders one browser tab's frames (see the module docstring for coarse / full)."""

    def __init__(self, app: ViewerApp, client):
        super().__init__(daemon=True, name=f"invrender-viewer-client-{client.client_id}")
        self.app, self.client = app, client
        self._wake = threading.Event()
        self._mutex = threading.Lock()
        self._version = 0  # bumped by every change (camera or panel)
        self._camera_time = 0.0  # monotonic time of the last camera message
        self._rendered = -1  # version of the frame on screen
        self._coarse_on_screen = False
        self._stop = False
        client.camera.on_update(lambda _cam: self.changed(camera=True))

    def changed(self, camera: bool = False) -> None:
        with self._mutex:
            self._version += 1
            if camera:
                self._camera_time = time.monotonic()
        self._wake.set()

    def stop(self) -> None:
        self._stop = True
        self._wake.set()

    def run(self) -> None:
        settle = self.app.cfg.settle
        while not self._stop:
            self._wake.wait(timeout=settle / 2)
            self._wake.clear()
            with self._mutex:
                version, cam_time = self._version, self._camera_time
            moving = time.monotonic() - cam_time < settle
            if version != self._rendered:
                self._frame(coarse=moving)
                self._rendered, self._coarse_on_screen = version, moving
            elif self._coarse_on_screen and not moving:
                self._frame(coarse=False)
                self._coarse_on_screen = False

    def camera(self) -> ViewerCamera:
        cam = self.client.camera
        return camera_from_viser(cam.wxyz, cam.position, cam.fov, cam.aspect)

    def _frame(self, coarse: bool) -> None:
        app = self.app
        try:
            state, camera = app.snapshot(), self.camera()
            img = render_frame(app.ctx, state, camera, coarse=coarse)
            cfg = app.cfg
            self.client.scene.set_background_image(
                img, format="jpeg", jpeg_quality=cfg.coarse_jpeg_quality if coarse else cfg.jpeg_quality)
            stats = dict(app.ctx.stats)
            app.frame_sent(self.client.client_id, img, coarse, state, camera)
            w, h = stats.get("size", img.shape[1::-1])
            app.set_info(f"{w}×{h}{' coarse' if coarse else ''} in {stats.get('seconds', 0.0) * 1000:.0f} ms")
        except ViewerError as e:
            app.set_status(f"⚠ {e}")
        except Exception as e:  # noqa: BLE001 - one bad frame must not end the tab's render loop
            app.set_status(f"⚠ rendering failed: {type(e).__name__}: {e}")


class ViewerApp:
    """A running viewer: the viser server, its panel and one render thread per connected tab."""

    def __init__(self, cfg: ViewerConfig, ctx: ViewerContext | None = None):
        self.cfg = cfg
        # the run is loaded before viser and the port, so a bad --run fails first, in one line
        self.ctx = ctx or ViewerContext.from_run_dir(
            cfg.run, envmaps_dir=cfg.envmaps, raster_backend=cfg.backend,
            max_upload_bytes=int(cfg.max_upload_mb * 2**20))
        viser = import_viser()
        names = self.ctx.envmap_names()
        if cfg.envmap is not None and cfg.envmap not in names:
            raise ValueError(f"environment {cfg.envmap!r} is not available (choose one of {', '.join(names)})")
        self.state = ViewerState(envmap=cfg.envmap or (names[0] if names else LEARNED), resolution=cfg.resolution,
                                 coarse_scale=cfg.coarse_scale, tonemapping=self.ctx.run.tonemapping)
        self.state.validate()
        self._lock = threading.Lock()
        self._clients: dict[int, _ClientLoop] = {}
        self.frames: dict[int, dict] = {}
        """Per client id, the last frame sent: ``image``, ``coarse``, ``state``, ``camera``, ``count``."""
        self.frame_event = threading.Condition()
        self.server = viser.ViserServer(host=cfg.host, port=cfg.port, label="invrender", verbose=False)
        self.server.scene.set_up_direction("+z")  # DESIGN.md: world Z up
        self._initial_camera()
        self._build_gui()
        self._guard_upload_size()
        self.server.on_client_connect(self._connect)
        self.server.on_client_disconnect(self._disconnect)

    @property
    def url(self) -> str:
        host = self.server.get_host()
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.server.get_port()}"

    # -- state ---------------------------------------------------------------------------------

    def snapshot(self) -> ViewerState:
        with self._lock:
            return dataclasses.replace(self.state)

    def update(self, **changes) -> None:
        """Change the shared state and redraw every tab (GUI callbacks, scripts)."""
        with self._lock:
            self.state = dataclasses.replace(self.state, **changes)
        for loop in list(self._clients.values()):
            loop.changed()

    def set_status(self, text: str) -> None:
        self._status.content = text

    def set_info(self, text: str) -> None:
        self._info.content = f"<small>{text}</small>"

    def frame_sent(self, client_id: int, image, coarse: bool, state: ViewerState, camera: ViewerCamera) -> None:
        with self.frame_event:
            count = self.frames.get(client_id, {}).get("count", 0) + 1
            self.frames[client_id] = {"image": image, "coarse": coarse, "state": state, "camera": camera,
                                      "count": count}
            self.frame_event.notify_all()

    # -- clients -------------------------------------------------------------------------------

    def _initial_camera(self) -> None:
        if self.ctx.views is None:
            return
        pose = viser_pose(self.ctx.training_camera(0))
        ic = self.server.initial_camera
        ic.position, ic.look_at, ic.up = tuple(pose["position"]), tuple(pose["look_at"]), (0.0, 0.0, 1.0)
        ic.fov = pose["fov"]

    def _connect(self, client) -> None:
        loop = _ClientLoop(self, client)
        self._clients[client.client_id] = loop
        loop.start()
        loop.changed()

    def _disconnect(self, client) -> None:
        loop = self._clients.pop(client.client_id, None)
        if loop is not None:
            loop.stop()

    def snap(self, client, index: int) -> None:
        """Move ``client``'s camera to training view ``index`` (pose and vertical field of view)."""
        pose = viser_pose(self.ctx.training_camera(index))
        cam = client.camera
        with client.atomic():
            cam.up_direction = (0.0, 0.0, 1.0)
            cam.position = pose["position"]
            cam.look_at = pose["look_at"]
            cam.fov = pose["fov"]

    def stop(self) -> None:
        for loop in list(self._clients.values()):
            loop.stop()
        self.server.stop()

    # -- panel ---------------------------------------------------------------------------------

    def _build_gui(self) -> None:
        gui, ctx, st = self.server.gui, self.ctx, self.state
        gui.configure_theme(control_width="medium", show_share_button=False)
        self._status = gui.add_markdown("")
        self._info = gui.add_markdown("")
        lit_hint = None if ctx.has_light else "a radiance-only run (no physically based part): nothing to relight"

        with gui.add_folder("Lighting"):
            names = ctx.envmap_names() or [LEARNED]
            self.gui_envmap = gui.add_dropdown("Environment", names, initial_value=st.envmap,
                                               disabled=not ctx.has_light, hint=lit_hint)
            self.gui_upload = gui.add_upload_button(
                "Upload .hdr / .exr", mime_type=".hdr,.exr", disabled=not ctx.has_light,
                hint=f"equirectangular, Z up, at most {self.cfg.max_upload_mb:g} MB")
            self.gui_rotation = gui.add_slider("Rotation (°)", min=-180.0, max=180.0, step=1.0, initial_value=0.0,
                                               disabled=not ctx.has_light,
                                               hint="about the up axis (+Z), counter-clockwise seen from above")
            self.gui_exposure = gui.add_slider("Exposure (EV)", min=-4.0, max=4.0, step=0.1, initial_value=0.0,
                                               disabled=not ctx.has_light, hint="light intensity 2^EV")
            self.gui_tonemap = gui.add_dropdown("Tone mapping", ("srgb", "aces"),
                                                initial_value=st.tonemapping or "srgb")
        with gui.add_folder("Display"):
            self.gui_buffer = gui.add_dropdown("Buffer", tuple(_BUFFER_LABELS), initial_value=_pretty(st.buffer))
            self.gui_colormap = gui.add_dropdown(
                "Colormap", COLORMAPS, initial_value=st.colormap,
                hint="for the scalar buffers: roughness, metallic, depth, progress, visibility")
            self.gui_split = gui.add_checkbox("Split view", initial_value=st.split,
                                              hint="left: Buffer, right: Right buffer")
            self.gui_split_buffer = gui.add_dropdown("Right buffer", tuple(_BUFFER_LABELS),
                                                     initial_value=_pretty(st.split_buffer))
            opts = ctx.backend_options()
            usable = [name for name, ok, _ in opts if ok]
            why = "; ".join(msg for _, ok, msg in opts if not ok)
            self.gui_backend = gui.add_dropdown(
                "Backend", tuple(name for name, _, _ in opts), initial_value="Gaussian", disabled=len(usable) < 2,
                hint=why or ("Gaussian splats or the trained mesh" if len(opts) > 1
                             else "no trained mesh in this run (RUN/mesh/textured_mesh.pt)"))
            if why:
                self.set_status(f"⚠ {why}")
            self.gui_resolution = gui.add_slider("Resolution", min=128, max=1024, step=32,
                                                 initial_value=min(max(st.resolution, 128), 1024),
                                                 hint="longer side of a full frame, pixels")
            self.gui_background = gui.add_dropdown("Background", ("run", "white", "black"), initial_value="run")
        with gui.add_folder("Camera"):
            n_views = len(ctx.views) if ctx.views is not None else 0
            self.gui_view = gui.add_slider("Training view", min=0, max=max(n_views - 1, 1), step=1, initial_value=0,
                                           disabled=n_views == 0)
            self.gui_snap = gui.add_button("Snap to training camera", disabled=n_views == 0,
                                           hint=None if n_views else "the run's dataset was not found")
        with gui.add_folder("Save"):
            # served to other machines, the folder is fixed: a page must not pick where the server writes
            self._local = self.cfg.host in ("127.0.0.1", "localhost", "::1")
            self._save_dir = Path(self.cfg.save_dir or Path(self.cfg.run) / "snapshots")
            self.gui_save_dir = gui.add_text("Folder", initial_value=str(self._save_dir), disabled=not self._local,
                                             hint=None if self._local else "set by --save-dir")
            self.gui_save = gui.add_button("Save PNG", hint="the current view at full resolution, into Folder")
            self.gui_download = gui.add_button("Download PNG", hint="the current view, to this browser")

        self.gui_envmap.on_update(lambda _: self.update(envmap=self.gui_envmap.value))
        self.gui_rotation.on_update(lambda _: self.update(rotation_deg=float(self.gui_rotation.value)))
        self.gui_exposure.on_update(lambda _: self.update(intensity=float(2.0 ** self.gui_exposure.value)))
        self.gui_tonemap.on_update(lambda _: self.update(tonemapping=self.gui_tonemap.value))
        self.gui_buffer.on_update(lambda _: self.update(buffer=_BUFFER_LABELS[self.gui_buffer.value]))
        self.gui_colormap.on_update(lambda _: self.update(colormap=self.gui_colormap.value))
        self.gui_split.on_update(lambda _: self.update(split=bool(self.gui_split.value)))
        self.gui_split_buffer.on_update(lambda _: self.update(split_buffer=_BUFFER_LABELS[self.gui_split_buffer.value]))
        self.gui_resolution.on_update(lambda _: self.update(resolution=int(self.gui_resolution.value)))
        self.gui_background.on_update(lambda _: self.update(background=self.gui_background.value))
        self.gui_backend.on_update(self._on_backend)
        self.gui_upload.on_upload(self._on_upload)
        self.gui_snap.on_click(self._on_snap)
        self.gui_save.on_click(lambda e: self._on_save(e, download=False))
        self.gui_download.on_click(lambda e: self._on_save(e, download=True))

    def _on_backend(self, _event) -> None:
        choice = self.gui_backend.value
        status = {name: (ok, msg) for name, ok, msg in self.ctx.backend_options()}
        ok, msg = status.get(choice, (False, f"unknown backend {choice}"))
        if not ok:
            self.set_status(f"⚠ {msg}")
            self.gui_backend.value = "Gaussian"
            return
        self.set_status("")
        self.update(backend=choice)

    def _on_upload(self, event) -> None:
        f = event.target.value
        try:
            key = self.ctx.add_upload(f.name, f.content)
        except UploadError as e:
            self.set_status(f"⚠ upload rejected: {e}")
            return
        self.gui_envmap.options = self.ctx.envmap_names()
        self.gui_envmap.value = key  # its on_update switches the light
        self.update(envmap=key)
        self.set_status(f"loaded {key[len('upload: '):]}")

    def _guard_upload_size(self) -> None:
        """Drop an over-size upload as soon as the browser announces it, before its bytes are
        buffered. This reaches into viser's upload bookkeeping (private in viser 1.x); where that
        is not there, the size is checked when the file has arrived instead."""
        gui = self.server.gui
        try:
            from viser import _messages  # noqa: PLC0415

            states = gui._current_file_upload_states
            iface = gui._websock_interface
            msg_cls = _messages.FileTransferStartUpload
        except (ImportError, AttributeError):
            return

        def on_start(_client_id, message) -> None:
            try:
                check_upload_size(message.filename, message.size_bytes, self.ctx.max_upload_bytes)
            except UploadError as e:
                states.pop(message.transfer_uuid, None)  # the parts that follow are then ignored
                self.set_status(f"⚠ upload rejected: {e}")

        iface.register_handler(msg_cls, on_start)

    def _on_snap(self, event) -> None:
        if event.client is None:
            return
        try:
            self.snap(event.client, int(self.gui_view.value))
        except ViewerError as e:
            self.set_status(f"⚠ {e}")

    def _on_save(self, event, download: bool) -> None:
        client = event.client
        loop = self._clients.get(client.client_id) if client is not None else None
        if loop is None:
            return
        try:
            state = self.snapshot()
            img = render_frame(self.ctx, state, loop.camera())
            if download:
                client.send_file_download(f"{state.buffer}.png", encode_png(img), save_immediately=True)
                self.set_status("sent the PNG to the browser")
            else:
                folder = Path(self.gui_save_dir.value).expanduser() if self._local else self._save_dir
                path = save_png(img, folder, stem=state.buffer)
                self.set_status(f"saved {path}")
        except (ViewerError, OSError) as e:
            self.set_status(f"⚠ could not save: {e}")


def run_viewer(cfg: ViewerConfig, block: bool = True) -> ViewerApp:
    """Start the viewer; with ``block``, serve until Ctrl-C."""
    if cfg.threads is not None:
        if cfg.threads < 1:
            raise ValueError(f"threads must be >= 1, got {cfg.threads}")
        import torch  # noqa: PLC0415

        torch.set_num_threads(cfg.threads)
    app = ViewerApp(cfg)
    print(f"invrender viewer: {app.url}  (run {cfg.run}; Ctrl-C to stop)", flush=True)
    if block:
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            app.stop()
    return app
