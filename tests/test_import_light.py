"""`import invrender` (and the compositing module) compiles and imports nothing heavy."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap


def test_import_is_light(tmp_path):
    code = textwrap.dedent(
        """
        import json, os, sys
        import invrender, invrender.splat.composite
        heavy = [m for m in ("gsplat", "mitsuba", "diffusers", "nvdiffrast", "viser")
                 if m in sys.modules]
        native = [m for m in sys.modules if m.startswith("invrender_raster")]
        cache = os.environ["INVRENDER_CACHE"]
        built = [f for _, _, fs in os.walk(cache) for f in fs]
        print(json.dumps({"heavy": heavy, "native": native, "built": built}))
        """
    )
    env = {"INVRENDER_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    import os

    env = {**os.environ, **env}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res == {"heavy": [], "native": [], "built": []}
