// CPU (OpenMP) driver of the projection and SH ops; the per-Gaussian arithmetic is in project.h.
//
// One loop over Gaussians per op, split statically across threads, each iteration writing only
// its own Gaussian's outputs: no atomics and no reductions, so results do not depend on the
// thread count or the schedule (training resumes bit for bit). The bodies are branch-free
// selects over small fixed-size arrays, which lets `omp simd` vectorize them across Gaussians.
#include <omp.h>

#include "project.h"

namespace invrender {

template <typename T>
void project_fwd_cpu(const ProjectParams &p, const T *means, const T *quats, const T *scales,
                     const T *viewmat, const T *K, T *means2d, T *conics, T *depths,
                     int32_t *radii) {
    const ProjectCamera<T> cam = make_camera(p, viewmat, K);
#pragma omp parallel for simd schedule(static) num_threads(p.num_threads)
    for (int g = 0; g < p.n_gaussians; ++g)
        project_fwd_one(cam, means + 3 * (size_t)g, quats + 4 * (size_t)g, scales + 3 * (size_t)g,
                        means2d + 2 * (size_t)g, conics + 3 * (size_t)g, depths[g], radii[g]);
}

template <typename T>
void project_bwd_cpu(const ProjectParams &p, const T *means, const T *quats, const T *scales,
                     const T *viewmat, const T *K, const int32_t *radii, const T *v_means2d,
                     const T *v_conics, const T *v_depths, T *v_means, T *v_quats, T *v_scales) {
    const ProjectCamera<T> cam = make_camera(p, viewmat, K);
#pragma omp parallel for simd schedule(static) num_threads(p.num_threads)
    for (int g = 0; g < p.n_gaussians; ++g)
        project_bwd_one(cam, means + 3 * (size_t)g, quats + 4 * (size_t)g, scales + 3 * (size_t)g,
                        radii[g], v_means2d + 2 * (size_t)g, v_conics + 3 * (size_t)g, v_depths[g],
                        v_means + 3 * (size_t)g, v_quats + 4 * (size_t)g, v_scales + 3 * (size_t)g);
}

namespace {

template <int NB, typename T>
void sh_fwd_loop(const ShParams &p, const T *coeffs, const T *dirs, T *colors) {
    const size_t stride = 3 * (size_t)p.n_coeffs;
#pragma omp parallel for simd schedule(static) num_threads(p.num_threads)
    for (int g = 0; g < p.n_gaussians; ++g)
        sh_fwd_one<NB>(coeffs + stride * g, dirs + 3 * (size_t)g, colors + 3 * (size_t)g);
}

template <int NB, typename T>
void sh_bwd_loop(const ShParams &p, const T *coeffs, const T *dirs, const T *v_colors,
                 T *v_coeffs) {
    const size_t stride = 3 * (size_t)p.n_coeffs;
#pragma omp parallel num_threads(p.num_threads)
    {
        // not `simd` across Gaussians: the [NB, 3] rows are written contiguously, which beats
        // scattered vector stores
#pragma omp for schedule(static)
        for (int g = 0; g < p.n_gaussians; ++g)
            sh_bwd_one<NB>(coeffs + stride * g, dirs + 3 * (size_t)g, v_colors + 3 * (size_t)g,
                           v_coeffs + stride * g);
        // coefficients above the degree in use get no gradient (same split of Gaussians, so
        // each thread touches only its own rows)
        if (p.n_coeffs > NB) {
#pragma omp for schedule(static)
            for (int g = 0; g < p.n_gaussians; ++g)
                for (size_t i = 3 * NB; i < stride; ++i) v_coeffs[stride * g + i] = T(0);
        }
    }
}

}  // namespace

template <typename T>
void sh_fwd_cpu(const ShParams &p, const T *coeffs, const T *dirs, T *colors) {
    switch (p.n_bases) {
        case 1: return sh_fwd_loop<1>(p, coeffs, dirs, colors);
        case 4: return sh_fwd_loop<4>(p, coeffs, dirs, colors);
        case 9: return sh_fwd_loop<9>(p, coeffs, dirs, colors);
        default: return sh_fwd_loop<16>(p, coeffs, dirs, colors);
    }
}

template <typename T>
void sh_bwd_cpu(const ShParams &p, const T *coeffs, const T *dirs, const T *v_colors,
                T *v_coeffs) {
    switch (p.n_bases) {
        case 1: return sh_bwd_loop<1>(p, coeffs, dirs, v_colors, v_coeffs);
        case 4: return sh_bwd_loop<4>(p, coeffs, dirs, v_colors, v_coeffs);
        case 9: return sh_bwd_loop<9>(p, coeffs, dirs, v_colors, v_coeffs);
        default: return sh_bwd_loop<16>(p, coeffs, dirs, v_colors, v_coeffs);
    }
}

#define INSTANTIATE(T)                                                                          \
    template void project_fwd_cpu<T>(const ProjectParams &, const T *, const T *, const T *,    \
                                     const T *, const T *, T *, T *, T *, int32_t *);           \
    template void project_bwd_cpu<T>(const ProjectParams &, const T *, const T *, const T *,    \
                                     const T *, const T *, const int32_t *, const T *,          \
                                     const T *, const T *, T *, T *, T *);                      \
    template void sh_fwd_cpu<T>(const ShParams &, const T *, const T *, T *);                   \
    template void sh_bwd_cpu<T>(const ShParams &, const T *, const T *, const T *, T *);
INSTANTIATE(float)
INSTANTIATE(double)

}  // namespace invrender
