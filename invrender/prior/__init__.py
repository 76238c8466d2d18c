"""Optional StableMaterial diffusion prior on materials (MaterialFusion, Litman et al. 2024).

``invrender train --prior.path DIR_OR_ID`` adds ``weight * loss`` from
:class:`invrender.prior.guidance.MaterialPrior` to the distillation stages: the rendered albedo
and ORM maps of the training view are pulled toward what StableMaterial predicts from that
view's photo. Any renderer uses it through ``MaterialPrior.loss(albedo, orm, alpha, photo)``.

Modules: :mod:`.config` (the dataclass; imports nothing heavy), :mod:`.stablematerial`
(loading, config checks, the frozen networks), :mod:`.guidance` (SDS and MaterialFusion's
denoise loss, the Gaussian adapter), :mod:`.tiny` (a random model of the same shape for tests).
diffusers and transformers (``pip install -e ".[prior]"``) are imported only by the last three.
"""

from invrender.prior.config import PriorConfig

__all__ = ["PriorConfig"]
