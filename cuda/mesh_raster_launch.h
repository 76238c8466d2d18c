// Plain C++ entry point of the CPU mesh visibility driver (mesh_raster_cpu.cpp), no torch types.
// Buffers are contiguous row-major:
//   verts [V, 3] camera space (OpenCV), faces [F, 3] int32, ray_x [W], ray_y [H] (double),
//   tri_id [H, W] int32 (-1 = empty), depth [H, W] float32 (0 = empty); both fully overwritten.
#pragma once
#include <cstdint>

#include "mesh_raster.h"

namespace invrender {

template <typename T>
void mesh_visibility_cpu(const MeshRasterParams &p, const T *verts, const int32_t *faces,
                         const double *ray_x, const double *ray_y, int32_t *tri_id, float *depth);

}  // namespace invrender
