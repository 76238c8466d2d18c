"""invrender: differentiable inverse rendering by Progressive Radiance Distillation.

Importing the package is cheap on purpose: no native code is compiled and no optional
dependency (gsplat, nvdiffrast, mitsuba, diffusers, viser) is imported here. Native kernels
are JIT-built on first use by :mod:`invrender.splat.native`.
"""

__version__ = "0.1.0"
