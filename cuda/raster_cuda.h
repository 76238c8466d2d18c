// Plain C++ launchers of the CUDA compositing driver (raster_cuda.cu); no torch or CUDA types,
// so the bindings and the .cu compile independently. Buffers as in raster_launch.h, all on the
// device; `stream` is a cudaStream_t. v_* outputs must be zero-initialised (atomics add to them).
#pragma once
#include <cstdint>

#include "raster.h"

namespace invrender {

template <typename T>
void raster_fwd_cuda(const RasterParams &p, const T *means2d, const T *conics, const T *opacities,
                     const T *features, const T *depths, const int32_t *tile_offsets,
                     const int32_t *flat_ids, T *out_feat, T *out_depth, T *out_alpha,
                     int32_t *last, void *stream);

template <typename T>
void raster_bwd_cuda(const RasterParams &p, const T *means2d, const T *conics, const T *opacities,
                     const T *features, const T *depths, const int32_t *tile_offsets,
                     const int32_t *flat_ids, const T *out_alpha, const int32_t *last,
                     const T *v_out_feat, const T *v_out_depth, const T *v_out_alpha,
                     T *v_means2d, T *v_conics, T *v_opacities, T *v_features, T *v_depths,
                     void *stream);

// Returns the last CUDA error as text, or nullptr when there is none.
const char *raster_cuda_last_error();

}  // namespace invrender
