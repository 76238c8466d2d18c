// Plain C++ entry points of the compositing drivers (no torch types), called by the bindings.
// All pointers are contiguous row-major buffers:
//   means2d [N, 2], conics [N, 3], opacities [N], features [N, C], depths [N], radii [N]
//   tile_offsets [tiles_y * tiles_x + 1], flat_ids [P]  (per tile, Gaussian ids front to back)
//   out_feat [H, W, C], out_depth [H, W], out_alpha [H, W], last [H, W]
//     (last = number of tile-list entries up to and including the pixel's last contributor)
#pragma once
#include <cstdint>
#include <vector>

#include "raster.h"

namespace invrender {

// ---- CPU (raster_cpu.cpp, OpenMP) ----

// Bins Gaussians with radii > 0 into the tiles their bbox touches, sorted by depth (stable).
template <typename T>
void bin_tiles_cpu(const RasterParams &p, const T *means2d, const int32_t *radii, const T *depths,
                   std::vector<int32_t> &tile_offsets, std::vector<int32_t> &flat_ids);

template <typename T>
void raster_fwd_cpu(const RasterParams &p, const T *means2d, const T *conics, const T *opacities,
                    const T *features, const T *depths, const int32_t *tile_offsets,
                    const int32_t *flat_ids, T *out_feat, T *out_depth, T *out_alpha,
                    int32_t *last);

// v_* outputs are fully overwritten.
template <typename T>
void raster_bwd_cpu(const RasterParams &p, const T *means2d, const T *conics, const T *opacities,
                    const T *features, const T *depths, const int32_t *tile_offsets,
                    const int32_t *flat_ids, const T *out_alpha, const int32_t *last,
                    const T *v_out_feat, const T *v_out_depth, const T *v_out_alpha,
                    T *v_means2d, T *v_conics, T *v_opacities, T *v_features, T *v_depths);

}  // namespace invrender
