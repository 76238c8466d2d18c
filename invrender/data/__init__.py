"""Dataset readers: NeRF-synthetic, TensoIR, nerfstudio and COLMAP captures -> one :class:`SceneData`."""

from invrender.data.scene import DatasetError, SceneData, Views, load_scene

__all__ = ["DatasetError", "SceneData", "Views", "load_scene"]
