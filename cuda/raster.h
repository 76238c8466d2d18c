// Gaussian compositing ("rasterize to pixels"): the arithmetic shared by the CPU (OpenMP) and
// CUDA drivers. Everything here is plain C++ over scalars, raw pointers and a params struct, so
// the same source is compiled by g++ (raster_cpu.cpp) and by nvcc (raster_cuda.cu).
//
// Model (classic 3DGS / gsplat constants), per pixel, Gaussians sorted front to back:
//   sigma = 0.5 (a dx^2 + c dy^2) + b dx dy      dx, dy = pixel centre - mean2d; skip if sigma < 0
//   alpha = min(ALPHA_MAX, opacity exp(-sigma));   skip if alpha < ALPHA_MIN
//   next_T = T (1 - alpha);                          stop (exclusive) if next_T <= T_MIN
//   out += f alpha T;  T = next_T;                   final alpha = 1 - T
//
// Backward, per pixel, back to front. With T_k the transmittance in front of Gaussian k and
// S_k = sum_{i>k} f_i alpha_i T_i (the colour composited behind k):
//   d out / d alpha_k   = f_k T_k - S_k / (1 - alpha_k)
//   d (1-T) / d alpha_k = T_final / (1 - alpha_k)
// Only the contraction with the upstream gradient is needed, so a pixel carries one scalar
// sdot = sum_{i>k} (v_out . f_i) alpha_i T_i instead of C accumulators.
#pragma once
#include <math.h>

#ifdef __CUDACC__
#define HOST_DEVICE __host__ __device__ __forceinline__
#else
#define HOST_DEVICE inline __attribute__((always_inline))
#endif

namespace invrender {

// Kept next to each other so the constants are the same in every driver and in the torch twin
// (invrender/splat/_torch_impl.py).
constexpr double ALPHA_MAX = 0.99;
constexpr double ALPHA_MIN = 1.0 / 255.0;
constexpr double T_MIN = 1e-4;

struct RasterParams {
    int n_gaussians;  // N
    int channels;     // C
    int width;        // W
    int height;       // H
    int tile_size;    // pixels per tile side
    int tiles_x;      // ceil(W / tile_size)
    int tiles_y;      // ceil(H / tile_size)
    int num_threads;  // CPU only: OpenMP threads
};

// exp / floor overloads that stay in the argument's precision (float -> expf, which GCC maps to
// libmvec's vector expf on the CPU).
HOST_DEVICE float exp_t(float x) { return expf(x); }
HOST_DEVICE double exp_t(double x) { return exp(x); }

HOST_DEVICE int ceil_div(int a, int b) { return (a + b - 1) / b; }

// sigma of one Gaussian at offset (dx, dy) from its mean.
template <typename T>
HOST_DEVICE T gauss_sigma(T a, T b, T c, T dx, T dy) {
    return T(0.5) * (a * dx * dx + c * dy * dy) + b * dx * dy;
}

// Whether a Gaussian-pixel pair contributes (before the transmittance test); written without
// branches so that the CPU driver's pixel loop vectorizes.
// `vis` = exp(-sigma) is returned for the backward pass.
template <typename T>
HOST_DEVICE bool pair_alpha(T a, T b, T c, T opacity, T dx, T dy, T &alpha, T &vis) {
    const T sigma = gauss_sigma(a, b, c, dx, dy);
    // exp of a negative sigma would overflow for degenerate conics; such pairs are skipped
    // anyway, so clamp the argument to keep the arithmetic finite.
    vis = exp_t(-(sigma > T(0) ? sigma : T(0)));
    const T raw = opacity * vis;
    alpha = raw < T(ALPHA_MAX) ? raw : T(ALPHA_MAX);
    return (sigma >= T(0)) & (alpha >= T(ALPHA_MIN));
}

// Gradients of one contributing pair with respect to the Gaussian's 2D parameters, given
// v_alpha = d loss / d alpha. Accumulates into the six scalars (v_mx, v_my, v_a, v_b, v_c, v_o).
// Clamped pairs (opacity vis >= ALPHA_MAX) pass no gradient to opacity or sigma, as min() does.
template <typename T>
HOST_DEVICE void pair_alpha_backward(T a, T b, T c, T opacity, T dx, T dy, T vis, T v_alpha,
                                     T &v_mx, T &v_my, T &v_a, T &v_b, T &v_c, T &v_o) {
    const T raw = opacity * vis;
    const T live = raw < T(ALPHA_MAX) ? T(1) : T(0);
    const T v_sigma = -raw * v_alpha * live;
    v_o += vis * v_alpha * live;
    v_a += T(0.5) * dx * dx * v_sigma;
    v_c += T(0.5) * dy * dy * v_sigma;
    v_b += dx * dy * v_sigma;
    // dx = px - mx, so d sigma / d mx = -(a dx + b dy)
    v_mx -= (a * dx + b * dy) * v_sigma;
    v_my -= (c * dy + b * dx) * v_sigma;
}

// Conservative vertical reach of a Gaussian: rows farther than `half` from the mean cannot
// have alpha >= ALPHA_MIN. For a fixed dy, min over dx of sigma is 0.5 dy^2 (ac - b^2) / a, and
// alpha >= ALPHA_MIN needs sigma <= log(opacity / ALPHA_MIN). Returns false when no pixel can
// pass at all; half = +inf when the conic is not positive definite (no bound).
HOST_DEVICE bool row_reach(double a, double b, double c, double opacity, double &half) {
    const double budget = log(opacity / ALPHA_MIN);
    if (!(budget > 0.0)) return false;  // also rejects NaN opacities
    const double det = a * c - b * b;
    if (!(a > 0.0) || !(det > 0.0)) {
        half = 1e300;
        return true;
    }
    // small relative and absolute margins: pairs near the edge are evaluated exactly anyway
    half = sqrt(2.0 * budget * a / det) * (1.0 + 1e-6) + 1e-3;
    return true;
}

// Tile range [x0, x1) x [y0, y1) touched by the square bbox of radius r around (mx, my).
// The torch twin uses the same rule (also in double), so both see exactly the same pairs.
HOST_DEVICE void tile_range(double mx, double my, int r, const RasterParams &p, int &x0, int &x1,
                            int &y0, int &y1) {
    typedef double T;
    const T ts = T(p.tile_size);
    const T fx0 = floor((mx - T(r)) / ts), fx1 = ceil((mx + T(r)) / ts);
    const T fy0 = floor((my - T(r)) / ts), fy1 = ceil((my + T(r)) / ts);
    // clamp in floating point first: off-screen means may be far outside int range
    x0 = int(fx0 < T(0) ? T(0) : (fx0 > T(p.tiles_x) ? T(p.tiles_x) : fx0));
    x1 = int(fx1 < T(0) ? T(0) : (fx1 > T(p.tiles_x) ? T(p.tiles_x) : fx1));
    y0 = int(fy0 < T(0) ? T(0) : (fy0 > T(p.tiles_y) ? T(p.tiles_y) : fy0));
    y1 = int(fy1 < T(0) ? T(0) : (fy1 > T(p.tiles_y) ? T(p.tiles_y) : fy1));
}

}  // namespace invrender
