// Plain C++ launcher of the CUDA mesh visibility driver (mesh_raster_cuda.cu); no torch or CUDA
// types. Buffers as in mesh_raster_launch.h, all on the device, plus two scratch buffers the
// caller allocates: `setup` (F * sizeof(TriSetup) bytes) and `keys` (H * W uint64). tri_id and
// depth are fully overwritten; `stream` is a cudaStream_t.
#pragma once
#include <cstdint>

#include "mesh_raster.h"

namespace invrender {

template <typename T>
void mesh_visibility_cuda(const MeshRasterParams &p, const T *verts, const int32_t *faces,
                          const double *ray_x, const double *ray_y, TriSetup *setup,
                          uint64_t *keys, int32_t *tri_id, float *depth, void *stream);

}  // namespace invrender
