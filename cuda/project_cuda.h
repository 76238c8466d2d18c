// Plain C++ launchers of the CUDA projection and SH driver (project_cuda.cu); no torch or CUDA
// types, so the bindings and the .cu compile independently. Buffers as listed in project.h, all
// on the device (viewmat and K included, read by every thread: no host sync); `stream` is a
// cudaStream_t. Every output is fully overwritten, one thread per Gaussian (no atomics).
#pragma once
#include <cstdint>

#include "project.h"

namespace invrender {

template <typename T>
void project_fwd_cuda(const ProjectParams &p, const T *means, const T *quats, const T *scales,
                      const T *viewmat, const T *K, T *means2d, T *conics, T *depths,
                      int32_t *radii, void *stream);

template <typename T>
void project_bwd_cuda(const ProjectParams &p, const T *means, const T *quats, const T *scales,
                      const T *viewmat, const T *K, const int32_t *radii, const T *v_means2d,
                      const T *v_conics, const T *v_depths, T *v_means, T *v_quats, T *v_scales,
                      void *stream);

template <typename T>
void sh_fwd_cuda(const ShParams &p, const T *coeffs, const T *dirs, T *colors, void *stream);

template <typename T>
void sh_bwd_cuda(const ShParams &p, const T *coeffs, const T *dirs, const T *v_colors,
                 T *v_coeffs, void *stream);

}  // namespace invrender
