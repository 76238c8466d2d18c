// CUDA driver of the projection and SH ops: one thread per Gaussian running the bodies of
// project.h, so it computes exactly what the CPU driver computes. Torch-free so `nvcc -c`
// builds it standalone; launched through the plain functions of project_cuda.h.
#include <cuda_runtime.h>

#include "project_cuda.h"

namespace invrender {

namespace {

constexpr int BLOCK = 256;

int blocks_for(int n) { return (n + BLOCK - 1) / BLOCK; }

template <typename T>
__global__ void project_fwd_kernel(ProjectParams p, const T *__restrict__ means,
                                   const T *__restrict__ quats, const T *__restrict__ scales,
                                   const T *__restrict__ viewmat, const T *__restrict__ K,
                                   T *means2d, T *conics, T *depths, int32_t *radii) {
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= p.n_gaussians) return;
    const ProjectCamera<T> cam = make_camera(p, viewmat, K);
    project_fwd_one(cam, means + 3 * (size_t)g, quats + 4 * (size_t)g, scales + 3 * (size_t)g,
                    means2d + 2 * (size_t)g, conics + 3 * (size_t)g, depths[g], radii[g]);
}

template <typename T>
__global__ void project_bwd_kernel(ProjectParams p, const T *__restrict__ means,
                                   const T *__restrict__ quats, const T *__restrict__ scales,
                                   const T *__restrict__ viewmat, const T *__restrict__ K,
                                   const int32_t *__restrict__ radii,
                                   const T *__restrict__ v_means2d,
                                   const T *__restrict__ v_conics,
                                   const T *__restrict__ v_depths, T *v_means, T *v_quats,
                                   T *v_scales) {
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= p.n_gaussians) return;
    const ProjectCamera<T> cam = make_camera(p, viewmat, K);
    project_bwd_one(cam, means + 3 * (size_t)g, quats + 4 * (size_t)g, scales + 3 * (size_t)g,
                    radii[g], v_means2d + 2 * (size_t)g, v_conics + 3 * (size_t)g, v_depths[g],
                    v_means + 3 * (size_t)g, v_quats + 4 * (size_t)g, v_scales + 3 * (size_t)g);
}

template <int NB, typename T>
__global__ void sh_fwd_kernel(ShParams p, const T *__restrict__ coeffs,
                              const T *__restrict__ dirs, T *colors) {
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= p.n_gaussians) return;
    sh_fwd_one<NB>(coeffs + 3 * (size_t)p.n_coeffs * g, dirs + 3 * (size_t)g,
                   colors + 3 * (size_t)g);
}

template <int NB, typename T>
__global__ void sh_bwd_kernel(ShParams p, const T *__restrict__ coeffs,
                              const T *__restrict__ dirs, const T *__restrict__ v_colors,
                              T *v_coeffs) {
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= p.n_gaussians) return;
    T *v = v_coeffs + 3 * (size_t)p.n_coeffs * g;
    sh_bwd_one<NB>(coeffs + 3 * (size_t)p.n_coeffs * g, dirs + 3 * (size_t)g,
                   v_colors + 3 * (size_t)g, v);
    for (int i = 3 * NB; i < 3 * p.n_coeffs; ++i) v[i] = T(0);  // bases above the degree
}

template <int NB, typename T>
void launch_sh(const ShParams &p, const T *coeffs, const T *dirs, const T *v_colors, T *out,
               cudaStream_t stream) {
    if (v_colors == nullptr)
        sh_fwd_kernel<NB, T><<<blocks_for(p.n_gaussians), BLOCK, 0, stream>>>(p, coeffs, dirs, out);
    else
        sh_bwd_kernel<NB, T><<<blocks_for(p.n_gaussians), BLOCK, 0, stream>>>(p, coeffs, dirs,
                                                                              v_colors, out);
}

// v_colors == nullptr: forward into `out` = colors; else backward into `out` = v_coeffs.
template <typename T>
void dispatch_sh(const ShParams &p, const T *coeffs, const T *dirs, const T *v_colors, T *out,
                 void *stream) {
    if (p.n_gaussians <= 0) return;
    const cudaStream_t s = (cudaStream_t)stream;
    switch (p.n_bases) {
        case 1: return launch_sh<1>(p, coeffs, dirs, v_colors, out, s);
        case 4: return launch_sh<4>(p, coeffs, dirs, v_colors, out, s);
        case 9: return launch_sh<9>(p, coeffs, dirs, v_colors, out, s);
        default: return launch_sh<16>(p, coeffs, dirs, v_colors, out, s);
    }
}

}  // namespace

template <typename T>
void project_fwd_cuda(const ProjectParams &p, const T *means, const T *quats, const T *scales,
                      const T *viewmat, const T *K, T *means2d, T *conics, T *depths,
                      int32_t *radii, void *stream) {
    if (p.n_gaussians <= 0) return;
    project_fwd_kernel<T><<<blocks_for(p.n_gaussians), BLOCK, 0, (cudaStream_t)stream>>>(
        p, means, quats, scales, viewmat, K, means2d, conics, depths, radii);
}

template <typename T>
void project_bwd_cuda(const ProjectParams &p, const T *means, const T *quats, const T *scales,
                      const T *viewmat, const T *K, const int32_t *radii, const T *v_means2d,
                      const T *v_conics, const T *v_depths, T *v_means, T *v_quats, T *v_scales,
                      void *stream) {
    if (p.n_gaussians <= 0) return;
    project_bwd_kernel<T><<<blocks_for(p.n_gaussians), BLOCK, 0, (cudaStream_t)stream>>>(
        p, means, quats, scales, viewmat, K, radii, v_means2d, v_conics, v_depths, v_means,
        v_quats, v_scales);
}

template <typename T>
void sh_fwd_cuda(const ShParams &p, const T *coeffs, const T *dirs, T *colors, void *stream) {
    dispatch_sh<T>(p, coeffs, dirs, nullptr, colors, stream);
}

template <typename T>
void sh_bwd_cuda(const ShParams &p, const T *coeffs, const T *dirs, const T *v_colors,
                 T *v_coeffs, void *stream) {
    dispatch_sh<T>(p, coeffs, dirs, v_colors, v_coeffs, stream);
}

#define INSTANTIATE(T)                                                                          \
    template void project_fwd_cuda<T>(const ProjectParams &, const T *, const T *, const T *,   \
                                      const T *, const T *, T *, T *, T *, int32_t *, void *);  \
    template void project_bwd_cuda<T>(const ProjectParams &, const T *, const T *, const T *,   \
                                      const T *, const T *, const int32_t *, const T *,         \
                                      const T *, const T *, T *, T *, T *, void *);             \
    template void sh_fwd_cuda<T>(const ShParams &, const T *, const T *, T *, void *);          \
    template void sh_bwd_cuda<T>(const ShParams &, const T *, const T *, const T *, T *,        \
                                 void *);
INSTANTIATE(float)
INSTANTIATE(double)

}  // namespace invrender
