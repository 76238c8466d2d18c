// EWA projection of 3D Gaussians and their SH colour: per-Gaussian forward and backward bodies
// shared by the CPU (OpenMP, project_cpu.cpp) and CUDA (project_cuda.cu) drivers. Plain C++ over
// scalars, raw pointers and params structs, like raster.h.
//
// The math is exactly that of the torch twins, which are the reference:
//   invrender/splat/project.py: project_gaussians   (projection, culling)
//   invrender/splat/sh.py:      (eval_sh + 0.5).clamp(min=0)
// Projection, per Gaussian (W, t = viewmat; fx, fy, cx, cy = K):
//   p = W m + t;  in_depth = near < z < far;  z' = in_depth ? z : 1
//   tx = z' clamp(x / z', lim_x), ty likewise   (the Jacobian's mean, frustum widened by 30 %)
//   U = J W R(q / |q|) diag(s)   [2, 3];  cov2d = U U^T + eps2d I = [[a, b], [b, c]]
//   valid = in_depth & det > 1e-12;  conic = (c, -b, a) / det, or (1, 1, 1) when not valid
//   radius = ceil(3 sqrt(lambda_max));  keep = valid & bbox on screen & radius finite
//   means2d = keep ? (fx x / z + cx, fy y / z + cy) : 0;  depth = keep ? z : 0;  radii = keep ? radius : 0
// The backward recomputes these intermediates (cheaper than storing them) and takes `keep`
// from the saved radii, so it can never disagree with the forward about what was culled.
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "raster.h"  // HOST_DEVICE

namespace invrender {

struct ProjectParams {
    int n_gaussians;    // N
    int width;          // W
    int height;         // H
    double near_plane;  // culled unless near_plane < z < far_plane
    double far_plane;
    double eps2d;       // dilation added to the 2D covariance diagonal (pixels^2)
    int num_threads;    // CPU only: OpenMP threads
};

struct ShParams {
    int n_gaussians;  // N
    int n_coeffs;     // K, coefficients stored per Gaussian (>= n_bases)
    int n_bases;      // (degree + 1)^2 used
    int num_threads;  // CPU only: OpenMP threads
};

// Camera constants in the kernels' precision, built once per driver call (CPU) or per thread
// from the device buffers (CUDA, so no host sync is needed for viewmat / K).
template <typename T>
struct ProjectCamera {
    T R[9];  // world-to-camera rotation, row-major
    T t[3];
    T fx, fy, cx, cy;
    T lo_x, hi_x, lo_y, hi_y;  // clamp range of x/z and y/z for the Jacobian
    T near_plane, far_plane, eps2d, width, height;
};

template <typename T>
HOST_DEVICE ProjectCamera<T> make_camera(const ProjectParams &p, const T *viewmat,  // [4, 4]
                                         const T *K) {                             // [3, 3]
    ProjectCamera<T> cam;
    for (int i = 0; i < 3; ++i) {
        for (int j = 0; j < 3; ++j) cam.R[3 * i + j] = viewmat[4 * i + j];
        cam.t[i] = viewmat[4 * i + 3];
    }
    cam.fx = K[0];
    cam.fy = K[4];
    cam.cx = K[2];
    cam.cy = K[5];
    const T w = T(p.width), h = T(p.height);
    // same expressions as the torch twin; 0.3 * size is formed in double there too
    cam.lo_x = -(cam.cx + T(0.3 * p.width)) / cam.fx;
    cam.hi_x = (w - cam.cx + T(0.3 * p.width)) / cam.fx;
    cam.lo_y = -(cam.cy + T(0.3 * p.height)) / cam.fy;
    cam.hi_y = (h - cam.cy + T(0.3 * p.height)) / cam.fy;
    cam.near_plane = T(p.near_plane);
    cam.far_plane = T(p.far_plane);
    cam.eps2d = T(p.eps2d);
    cam.width = w;
    cam.height = h;
    return cam;
}

// Finite / NaN tests that survive -ffast-math (which lets GCC assume there are no inf or NaN).
HOST_DEVICE bool finite_bits(float v) {
#ifdef __CUDA_ARCH__
    return isfinite(v);
#else
    uint32_t u;
    memcpy(&u, &v, sizeof(u));
    return (u & 0x7f800000u) != 0x7f800000u;
#endif
}
HOST_DEVICE bool finite_bits(double v) {
#ifdef __CUDA_ARCH__
    return isfinite(v);
#else
    uint64_t u;
    memcpy(&u, &v, sizeof(u));
    return (u & 0x7ff0000000000000ull) != 0x7ff0000000000000ull;
#endif
}

HOST_DEVICE bool nan_bits(float v) {
#ifdef __CUDA_ARCH__
    return isnan(v);
#else
    uint32_t u;
    memcpy(&u, &v, sizeof(u));
    return (u & 0x7fffffffu) > 0x7f800000u;
#endif
}
HOST_DEVICE bool nan_bits(double v) {
#ifdef __CUDA_ARCH__
    return isnan(v);
#else
    uint64_t u;
    memcpy(&u, &v, sizeof(u));
    return (u & 0x7fffffffffffffffull) > 0x7ff0000000000000ull;
#endif
}

// Rotation matrix (row-major) of a unit wxyz quaternion, as quat_to_rotmat in project.py.
template <typename T>
HOST_DEVICE void quat_rotmat(const T *q, T *R) {
    const T w = q[0], x = q[1], y = q[2], z = q[3];
    R[0] = T(1) - T(2) * (y * y + z * z);
    R[1] = T(2) * (x * y - w * z);
    R[2] = T(2) * (x * z + w * y);
    R[3] = T(2) * (x * y + w * z);
    R[4] = T(1) - T(2) * (x * x + z * z);
    R[5] = T(2) * (y * z - w * x);
    R[6] = T(2) * (x * z - w * y);
    R[7] = T(2) * (y * z + w * x);
    R[8] = T(1) - T(2) * (x * x + y * y);
}

// d loss / d q for R = quat_rotmat(q), given G = d loss / d R (row-major).
template <typename T>
HOST_DEVICE void quat_rotmat_backward(const T *q, const T *G, T *v_q) {
    const T w = q[0], x = q[1], y = q[2], z = q[3];
    v_q[0] = T(2) * (-z * G[1] + y * G[2] + z * G[3] - x * G[5] - y * G[6] + x * G[7]);
    v_q[1] = T(2) * (y * G[1] + z * G[2] + y * G[3] - T(2) * x * G[4] - w * G[5] + z * G[6] +
                     w * G[7] - T(2) * x * G[8]);
    v_q[2] = T(2) * (-T(2) * y * G[0] + x * G[1] + w * G[2] + x * G[3] + z * G[5] - w * G[6] +
                     z * G[7] - T(2) * y * G[8]);
    v_q[3] = T(2) * (-T(2) * z * G[0] - w * G[1] + x * G[2] + w * G[3] - T(2) * z * G[4] +
                     y * G[5] + x * G[6] + y * G[7]);
}

// Everything the forward computes before the outputs, kept for the backward.
template <typename T>
struct ProjectState {
    T x, y, z;         // camera-space mean
    bool in_depth;     // near < z < far
    T rz;              // 1 / z' (z' = z, or 1 when out of the depth range)
    T ux, uy;          // x / z' and y / z' after the clamp
    bool free_x, free_y;  // the clamp was inactive (gradient passes to x / y)
    T tx, ty;          // z' * ux, z' * uy
    T qn[4], qnorm;    // normalized quaternion, |q| clamped at 1e-12
    bool qfree;        // |q| >= 1e-12 (the clamp passes gradient to the norm)
    T Rq[9];           // rotation of the Gaussian
    T Tm[9];           // W R diag(s)
    T j02, j12;        // off-diagonal Jacobian entries -f t / z^2
    T U0[3], U1[3];    // rows of J W R S
    T a, b, c, det;    // 2D covariance (dilated) and its determinant
    bool valid;        // in_depth & det > 1e-12
};

template <typename T>
HOST_DEVICE void project_state(const ProjectCamera<T> &cam, const T *mean, const T *quat,
                               const T *scale, ProjectState<T> &s) {
    const T *W = cam.R;
    const T mx = mean[0], my = mean[1], mz = mean[2];
    s.x = W[0] * mx + W[1] * my + W[2] * mz + cam.t[0];
    s.y = W[3] * mx + W[4] * my + W[5] * mz + cam.t[1];
    s.z = W[6] * mx + W[7] * my + W[8] * mz + cam.t[2];
    s.in_depth = (s.z > cam.near_plane) & (s.z < cam.far_plane);
    const T zs = s.in_depth ? s.z : T(1);
    s.rz = T(1) / zs;
    const T rx = s.x / zs, ry = s.y / zs;
    // inclusive bounds, as torch.clamp's gradient mask
    s.free_x = (rx >= cam.lo_x) & (rx <= cam.hi_x);
    s.free_y = (ry >= cam.lo_y) & (ry <= cam.hi_y);
    s.ux = rx < cam.lo_x ? cam.lo_x : (rx > cam.hi_x ? cam.hi_x : rx);
    s.uy = ry < cam.lo_y ? cam.lo_y : (ry > cam.hi_y ? cam.hi_y : ry);
    s.tx = zs * s.ux;
    s.ty = zs * s.uy;

    const T n = sqrt(quat[0] * quat[0] + quat[1] * quat[1] + quat[2] * quat[2] + quat[3] * quat[3]);
    s.qfree = n >= T(1e-12);
    s.qnorm = s.qfree ? n : T(1e-12);
    for (int i = 0; i < 4; ++i) s.qn[i] = quat[i] / s.qnorm;
    quat_rotmat(s.qn, s.Rq);
    // Tm = W (Rq diag(s))
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j)
            s.Tm[3 * i + j] = (W[3 * i] * s.Rq[j] + W[3 * i + 1] * s.Rq[3 + j] +
                               W[3 * i + 2] * s.Rq[6 + j]) * scale[j];

    s.j02 = -cam.fx * s.tx * s.rz * s.rz;
    s.j12 = -cam.fy * s.ty * s.rz * s.rz;
    const T A = cam.fx * s.rz, B = cam.fy * s.rz;
    for (int j = 0; j < 3; ++j) {
        s.U0[j] = A * s.Tm[j] + s.j02 * s.Tm[6 + j];
        s.U1[j] = B * s.Tm[3 + j] + s.j12 * s.Tm[6 + j];
    }
    s.a = s.U0[0] * s.U0[0] + s.U0[1] * s.U0[1] + s.U0[2] * s.U0[2] + cam.eps2d;
    s.b = s.U0[0] * s.U1[0] + s.U0[1] * s.U1[1] + s.U0[2] * s.U1[2];
    s.c = s.U1[0] * s.U1[0] + s.U1[1] * s.U1[1] + s.U1[2] * s.U1[2] + cam.eps2d;
    s.det = s.a * s.c - s.b * s.b;
    s.valid = s.in_depth & (s.det > T(1e-12));
}

// Forward of one Gaussian: means2d [2], conic [3], depth, radius.
template <typename T>
HOST_DEVICE void project_fwd_one(const ProjectCamera<T> &cam, const T *mean, const T *quat,
                                 const T *scale, T *means2d, T *conic, T &depth,
                                 int32_t &radius_out) {
    ProjectState<T> s;
    project_state(cam, mean, quat, scale, s);
    const T ds = s.valid ? s.det : T(1);
    conic[0] = s.valid ? s.c / ds : T(1);
    conic[1] = s.valid ? -s.b / ds : T(1);
    conic[2] = s.valid ? s.a / ds : T(1);

    const T mid = T(0.5) * (s.a + s.c);
    const T disc = mid * mid - ds;
    const T lam = mid + sqrt(disc > T(0) ? disc : T(0));  // larger eigenvalue
    const T radius = ceil(T(3) * sqrt(lam));
    const T u = cam.fx * s.x * s.rz + cam.cx;
    const T v = cam.fy * s.y * s.rz + cam.cy;
    const bool on_screen = (u + radius > T(0)) & (u - radius < cam.width) &
                           (v + radius > T(0)) & (v - radius < cam.height);
    const bool keep = s.valid & on_screen & finite_bits(radius);
    means2d[0] = keep ? u : T(0);
    means2d[1] = keep ? v : T(0);
    depth = keep ? s.z : T(0);
    // the cap only matters for absurd footprints (> 2^31 px), where the int cast would be UB
    radius_out = keep ? int32_t(radius < T(2147483520.0) ? radius : T(2147483520.0)) : 0;
}

// Backward of one Gaussian. `radius` is the forward's output (keep = radius > 0); v_* inputs
// are the upstream gradients of means2d [2], conic [3] and depth; writes v_mean [3],
// v_quat [4] (w.r.t. the raw, unnormalized quaternion) and v_scale [3].
template <typename T>
HOST_DEVICE void project_bwd_one(const ProjectCamera<T> &cam, const T *mean, const T *quat,
                                 const T *scale, int32_t radius, const T *v_means2d,
                                 const T *v_conic, T v_depth, T *v_mean, T *v_quat, T *v_scale) {
    ProjectState<T> s;
    project_state(cam, mean, quat, scale, s);
    const bool keep = radius > 0;
    const bool valid = s.valid;
    // selects, not products: upstream gradients of culled outputs never reach anything. The
    // loads stay unconditional so the CPU loop vectorizes (no masked strided loads).
    const T u0 = v_means2d[0], u1 = v_means2d[1], c0 = v_conic[0], c1 = v_conic[1], c2 = v_conic[2];
    const T gu = keep ? u0 : T(0), gv = keep ? u1 : T(0);
    const T gd = keep ? v_depth : T(0);
    const T gA = valid ? c0 : T(0), gB = valid ? c1 : T(0), gC = valid ? c2 : T(0);

    // conic = (c, -b, a) / det
    const T inv = T(1) / (valid ? s.det : T(1));
    const T v_det = -inv * inv * (gA * s.c - gB * s.b + gC * s.a);
    const T va = gC * inv + v_det * s.c;
    const T vb = -gB * inv - T(2) * s.b * v_det;
    const T vc = gA * inv + v_det * s.a;
    // a = U0.U0 + eps, b = U0.U1, c = U1.U1 + eps
    T vU0[3], vU1[3];
    for (int j = 0; j < 3; ++j) {
        vU0[j] = T(2) * va * s.U0[j] + vb * s.U1[j];
        vU1[j] = T(2) * vc * s.U1[j] + vb * s.U0[j];
    }
    // U0 = fx rz Tm0 + j02 Tm2, U1 = fy rz Tm1 + j12 Tm2
    const T A = cam.fx * s.rz, B = cam.fy * s.rz;
    T vT[9];
    T d0 = T(0), d1 = T(0), v_j02 = T(0), v_j12 = T(0);
    for (int j = 0; j < 3; ++j) {
        vT[j] = A * vU0[j];
        vT[3 + j] = B * vU1[j];
        vT[6 + j] = s.j02 * vU0[j] + s.j12 * vU1[j];
        d0 += s.Tm[j] * vU0[j];
        d1 += s.Tm[3 + j] * vU1[j];
        v_j02 += s.Tm[6 + j] * vU0[j];
        v_j12 += s.Tm[6 + j] * vU1[j];
    }
    T v_rz = cam.fx * d0 + cam.fy * d1;
    // j02 = -fx tx rz^2
    const T v_tx = -cam.fx * s.rz * s.rz * v_j02;
    const T v_ty = -cam.fy * s.rz * s.rz * v_j12;
    v_rz += T(-2) * s.rz * (cam.fx * s.tx * v_j02 + cam.fy * s.ty * v_j12);
    // means2d = (fx x rz + cx, fy y rz + cy)
    v_rz += cam.fx * s.x * gu + cam.fy * s.y * gv;
    T vx = A * gu, vy = B * gv;
    // tx = z clamp(x / z): d/dx = 1, d/dz = 0 inside the range; d/dx = 0, d/dz = limit outside
    vx += s.free_x ? v_tx : T(0);
    vy += s.free_y ? v_ty : T(0);
    T vz = (s.free_x ? T(0) : s.ux * v_tx) + (s.free_y ? T(0) : s.uy * v_ty);
    vz += -s.rz * s.rz * v_rz + gd;
    // not valid: nothing depends on the inputs (z' = 1 and all outputs are constants)
    vx = valid ? vx : T(0);
    vy = valid ? vy : T(0);
    vz = valid ? vz : T(0);
    const T *W = cam.R;
    for (int i = 0; i < 3; ++i) v_mean[i] = W[i] * vx + W[3 + i] * vy + W[6 + i] * vz;

    // Tm = W Rq diag(s): vM = W^T vT, v_s[j] = sum_i vM[i][j] Rq[i][j], G = vM diag(s)
    T G[9];
    for (int j = 0; j < 3; ++j) {
        T vs = T(0);
        for (int i = 0; i < 3; ++i) {
            const T vm = W[i] * vT[j] + W[3 + i] * vT[3 + j] + W[6 + i] * vT[6 + j];
            vs += vm * s.Rq[3 * i + j];
            G[3 * i + j] = vm * scale[j];
        }
        v_scale[j] = valid ? vs : T(0);
    }
    T v_qn[4];
    quat_rotmat_backward(s.qn, G, v_qn);
    // qn = q / max(|q|, 1e-12)
    const T proj = s.qfree ? (s.qn[0] * v_qn[0] + s.qn[1] * v_qn[1] + s.qn[2] * v_qn[2] +
                              s.qn[3] * v_qn[3])
                           : T(0);
    for (int i = 0; i < 4; ++i) {
        const T vq = (v_qn[i] - s.qn[i] * proj) / s.qnorm;
        v_quat[i] = valid ? vq : T(0);
    }
}

// ---- spherical harmonics (basis and signs of invrender/splat/sh.py, i.e. of 3DGS) ----

constexpr int SH_MAX_BASES = 16;

// Basis values out[0 .. n_bases) for a direction (x, y, z); n_bases in {1, 4, 9, 16}.
template <typename T>
HOST_DEVICE void sh_basis_eval(int n_bases, T x, T y, T z, T *out) {
    out[0] = T(0.28209479177387814);
    if (n_bases > 1) {
        const T C1 = T(0.4886025119029199);
        out[1] = -C1 * y;
        out[2] = C1 * z;
        out[3] = -C1 * x;
    }
    if (n_bases > 4) {
        const T xx = x * x, yy = y * y, zz = z * z, xy = x * y, yz = y * z, xz = x * z;
        out[4] = T(1.0925484305920792) * xy;
        out[5] = T(-1.0925484305920792) * yz;
        out[6] = T(0.31539156525252005) * (T(2) * zz - xx - yy);
        out[7] = T(-1.0925484305920792) * xz;
        out[8] = T(0.5462742152960396) * (xx - yy);
        if (n_bases > 9) {
            out[9] = T(-0.5900435899266435) * y * (T(3) * xx - yy);
            out[10] = T(2.890611442640554) * xy * z;
            out[11] = T(-0.4570457994644658) * y * (T(4) * zz - xx - yy);
            out[12] = T(0.3731763325901154) * z * (T(2) * zz - T(3) * xx - T(3) * yy);
            out[13] = T(-0.4570457994644658) * x * (T(4) * zz - xx - yy);
            out[14] = T(1.445305721320277) * z * (xx - yy);
            out[15] = T(-0.5900435899266435) * x * (xx - T(3) * yy);
        }
    }
}

// Colour before the clamp, pre[3] = sum_k basis_k coeffs[k, :] + 0.5, over the NB used bases of
// the Gaussian's [K, 3] coefficient block. NB is a template argument so that the loops unroll
// and the drivers' loops over Gaussians vectorize.
template <int NB, typename T>
HOST_DEVICE void sh_color_pre(const T *basis, const T *coeffs, T *pre) {
    T r = T(0), g = T(0), b = T(0);
    for (int k = 0; k < NB; ++k) {
        r += basis[k] * coeffs[3 * k];
        g += basis[k] * coeffs[3 * k + 1];
        b += basis[k] * coeffs[3 * k + 2];
    }
    pre[0] = r + T(0.5);
    pre[1] = g + T(0.5);
    pre[2] = b + T(0.5);
}

// colour [3] = max(pre, 0) of one Gaussian.
template <int NB, typename T>
HOST_DEVICE void sh_fwd_one(const T *coeffs, const T *dir, T *color) {
    T basis[SH_MAX_BASES];
    sh_basis_eval(NB, dir[0], dir[1], dir[2], basis);
    T pre[3];
    sh_color_pre<NB>(basis, coeffs, pre);
    // NaN passes through, as in torch.clamp: training detects a corrupted coefficient by the loss
    for (int ch = 0; ch < 3; ++ch) color[ch] = (pre[ch] > T(0)) | nan_bits(pre[ch]) ? pre[ch] : T(0);
}

// d loss / d coeffs[k, :] for k < NB of one Gaussian (directions are constants; the drivers
// zero the unused k >= NB). The clamp passes the gradient where pre >= 0, as
// torch.clamp(min=0) does.
template <int NB, typename T>
HOST_DEVICE void sh_bwd_one(const T *coeffs, const T *dir, const T *v_color, T *v_coeffs) {
    T basis[SH_MAX_BASES];
    sh_basis_eval(NB, dir[0], dir[1], dir[2], basis);
    T pre[3], g[3];
    sh_color_pre<NB>(basis, coeffs, pre);
    for (int ch = 0; ch < 3; ++ch) {
        const T v = v_color[ch];  // unconditional load, then select (vectorizes)
        g[ch] = pre[ch] >= T(0) ? v : T(0);
    }
    for (int k = 0; k < NB; ++k)
        for (int ch = 0; ch < 3; ++ch) v_coeffs[3 * k + ch] = basis[k] * g[ch];
}

// ---- CPU driver entry points (project_cpu.cpp, OpenMP); CUDA ones are in project_cuda.h ----
// Buffers are contiguous: means [N, 3], quats [N, 4], scales [N, 3], viewmat [4, 4], K [3, 3],
// means2d [N, 2], conics [N, 3], depths [N], radii [N]; coeffs [N, K, 3], dirs [N, 3],
// colors [N, 3]. Every output is fully overwritten, one Gaussian per iteration (deterministic).

template <typename T>
void project_fwd_cpu(const ProjectParams &p, const T *means, const T *quats, const T *scales,
                     const T *viewmat, const T *K, T *means2d, T *conics, T *depths,
                     int32_t *radii);

template <typename T>
void project_bwd_cpu(const ProjectParams &p, const T *means, const T *quats, const T *scales,
                     const T *viewmat, const T *K, const int32_t *radii, const T *v_means2d,
                     const T *v_conics, const T *v_depths, T *v_means, T *v_quats, T *v_scales);

template <typename T>
void sh_fwd_cpu(const ShParams &p, const T *coeffs, const T *dirs, T *colors);

template <typename T>
void sh_bwd_cpu(const ShParams &p, const T *coeffs, const T *dirs, const T *v_colors,
                T *v_coeffs);

}  // namespace invrender
