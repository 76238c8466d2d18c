// Argument checks and params structs shared by the torch bindings of both variants
// (bindings_cpu.cpp, bindings_cuda.cpp), so the two cannot drift apart. Every check takes the
// device the variant expects (torch::kCPU / torch::kCUDA) and names it in its message ("means2d
// must be a CPU tensor", "... must be a CUDA tensor"). The public functions
// (invrender/splat/composite.py, project.py, sh.py) have already validated shapes; these checks
// guard the raw-pointer kernels against misuse from elsewhere.
//
// Nothing CUDA-specific here: bindings_cpu.cpp is built by a plain C++ compiler without the CUDA
// toolkit. Each check_<op>_args validates one op's whole argument list, in the order the op lists
// it, and returns the params struct of its kernels; the caller keeps only what differs per
// device (device guard, stream, allocation, dispatch).
#pragma once
#include <torch/extension.h>

#include <algorithm>
#include <cstdint>

#include "mesh_raster.h"
#include "project.h"
#include "raster.h"

namespace invrender::bindings {

inline void check_input(const torch::Tensor &t, const char *name, torch::ScalarType dtype,
                        torch::DeviceType device) {
    // DeviceTypeName gives "CPU" / "CUDA"
    TORCH_CHECK(t.device().type() == device, name, " must be a ", c10::DeviceTypeName(device),
                " tensor");
    TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
    TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
}

// ---- compositing (raster.h) ----

// num_threads is the CPU (OpenMP) thread count; the CUDA variant passes 1.
inline RasterParams make_params(int64_t n, int64_t channels, int64_t width, int64_t height,
                                int64_t tile_size, int64_t num_threads, torch::DeviceType device) {
    // the CUDA kernels run one tile_size x tile_size thread block per tile (at most 1024 threads)
    if (device == torch::kCUDA) {
        TORCH_CHECK(tile_size >= 1 && tile_size <= 32, "tile_size must be in [1, 32] on CUDA");
    }
    TORCH_CHECK(tile_size >= 1 && width >= 0 && height >= 0, "bad image / tile size");
    RasterParams p;
    p.n_gaussians = int(n);
    p.channels = int(channels);
    p.width = int(width);
    p.height = int(height);
    p.tile_size = int(tile_size);
    p.tiles_x = ceil_div(p.width, p.tile_size);
    p.tiles_y = ceil_div(p.height, p.tile_size);
    p.num_threads = int(std::max<int64_t>(1, num_threads));
    return p;
}

// The per-Gaussian inputs of op_fwd / op_bwd, all of means2d's dtype.
inline void check_splats(const torch::Tensor &means2d,    // [N, 2]
                         const torch::Tensor &conics,     // [N, 3]
                         const torch::Tensor &opacities,  // [N]
                         const torch::Tensor &features,   // [N, C]
                         const torch::Tensor &depths,     // [N]
                         torch::DeviceType device) {
    const auto dt = means2d.scalar_type();
    check_input(means2d, "means2d", dt, device);
    check_input(conics, "conics", dt, device);
    check_input(opacities, "opacities", dt, device);
    check_input(features, "features", dt, device);
    check_input(depths, "depths", dt, device);
}

inline RasterParams check_op_fwd_args(torch::DeviceType device, const torch::Tensor &means2d,
                                      const torch::Tensor &conics, const torch::Tensor &opacities,
                                      const torch::Tensor &features, const torch::Tensor &depths,
                                      const torch::Tensor &tile_offsets,  // [T + 1] int32
                                      const torch::Tensor &flat_ids,      // [P] int32
                                      int64_t width, int64_t height, int64_t tile_size,
                                      int64_t num_threads) {
    check_splats(means2d, conics, opacities, features, depths, device);
    check_input(tile_offsets, "tile_offsets", torch::kInt32, device);
    check_input(flat_ids, "flat_ids", torch::kInt32, device);
    const RasterParams p = make_params(means2d.size(0), features.size(1), width, height,
                                       tile_size, num_threads, device);
    TORCH_CHECK(tile_offsets.numel() == (int64_t)p.tiles_x * p.tiles_y + 1, "tile_offsets size");
    return p;
}

inline RasterParams check_op_bwd_args(torch::DeviceType device, const torch::Tensor &means2d,
                                      const torch::Tensor &conics, const torch::Tensor &opacities,
                                      const torch::Tensor &features, const torch::Tensor &depths,
                                      const torch::Tensor &tile_offsets,
                                      const torch::Tensor &flat_ids,
                                      const torch::Tensor &out_alpha,    // [H, W, 1]
                                      const torch::Tensor &last,         // [H, W] int32
                                      const torch::Tensor &v_out_feat,   // [H, W, C]
                                      const torch::Tensor &v_out_depth,  // [H, W, 1]
                                      const torch::Tensor &v_out_alpha,  // [H, W, 1]
                                      int64_t width, int64_t height, int64_t tile_size,
                                      int64_t num_threads) {
    const auto dt = means2d.scalar_type();
    check_splats(means2d, conics, opacities, features, depths, device);
    check_input(out_alpha, "out_alpha", dt, device);
    check_input(v_out_feat, "v_out_feat", dt, device);
    check_input(v_out_depth, "v_out_depth", dt, device);
    check_input(v_out_alpha, "v_out_alpha", dt, device);
    check_input(tile_offsets, "tile_offsets", torch::kInt32, device);
    check_input(flat_ids, "flat_ids", torch::kInt32, device);
    check_input(last, "last", torch::kInt32, device);
    const RasterParams p = make_params(means2d.size(0), features.size(1), width, height,
                                       tile_size, num_threads, device);
    TORCH_CHECK(v_out_feat.numel() == (int64_t)height * width * p.channels, "v_out_feat size");
    return p;
}

// ---- projection (project.h) ----

inline ProjectParams make_project_params(int64_t n, int64_t width, int64_t height,
                                         double near_plane, double far_plane, double eps2d,
                                         int64_t num_threads) {
    TORCH_CHECK(width >= 0 && height >= 0, "bad image size");
    ProjectParams p;
    p.n_gaussians = int(n);
    p.width = int(width);
    p.height = int(height);
    p.near_plane = near_plane;
    p.far_plane = far_plane;
    p.eps2d = eps2d;
    p.num_threads = int(std::max<int64_t>(1, num_threads));
    return p;
}

inline void check_camera(const torch::Tensor &viewmat,  // [4, 4]
                         const torch::Tensor &K,        // [3, 3]
                         torch::ScalarType dt, torch::DeviceType device) {
    check_input(viewmat, "viewmat", dt, device);
    check_input(K, "K", dt, device);
    TORCH_CHECK(viewmat.numel() == 16 && K.numel() == 9, "viewmat must be [4, 4] and K [3, 3]");
}

// The inputs shared by project_fwd / project_bwd, all of means' dtype; the camera lives on the
// same device as the Gaussians.
inline void check_gaussians3d(const torch::Tensor &means,   // [N, 3]
                              const torch::Tensor &quats,   // [N, 4]
                              const torch::Tensor &scales,  // [N, 3]
                              const torch::Tensor &viewmat, const torch::Tensor &K,
                              torch::DeviceType device) {
    const auto dt = means.scalar_type();
    check_input(means, "means", dt, device);
    check_input(quats, "quats", dt, device);
    check_input(scales, "scales", dt, device);
    check_camera(viewmat, K, dt, device);
}

inline ProjectParams check_project_fwd_args(torch::DeviceType device, const torch::Tensor &means,
                                            const torch::Tensor &quats,
                                            const torch::Tensor &scales,
                                            const torch::Tensor &viewmat, const torch::Tensor &K,
                                            int64_t width, int64_t height, double near_plane,
                                            double far_plane, double eps2d, int64_t num_threads) {
    check_gaussians3d(means, quats, scales, viewmat, K, device);
    const int64_t n = means.size(0);
    TORCH_CHECK(means.numel() == 3 * n && quats.numel() == 4 * n && scales.numel() == 3 * n,
                "means, quats, scales must be [N, 3], [N, 4], [N, 3]");
    return make_project_params(n, width, height, near_plane, far_plane, eps2d, num_threads);
}

inline ProjectParams check_project_bwd_args(torch::DeviceType device, const torch::Tensor &means,
                                            const torch::Tensor &quats,
                                            const torch::Tensor &scales,
                                            const torch::Tensor &viewmat, const torch::Tensor &K,
                                            const torch::Tensor &radii,      // [N] int32
                                            const torch::Tensor &v_means2d,  // [N, 2]
                                            const torch::Tensor &v_conics,   // [N, 3]
                                            const torch::Tensor &v_depths,   // [N]
                                            int64_t width, int64_t height, double near_plane,
                                            double far_plane, double eps2d, int64_t num_threads) {
    const auto dt = means.scalar_type();
    check_gaussians3d(means, quats, scales, viewmat, K, device);
    check_input(radii, "radii", torch::kInt32, device);
    check_input(v_means2d, "v_means2d", dt, device);
    check_input(v_conics, "v_conics", dt, device);
    check_input(v_depths, "v_depths", dt, device);
    const int64_t n = means.size(0);
    TORCH_CHECK(means.numel() == 3 * n && quats.numel() == 4 * n && scales.numel() == 3 * n &&
                    radii.numel() == n && v_means2d.numel() == 2 * n &&
                    v_conics.numel() == 3 * n && v_depths.numel() == n,
                "project_bwd: inconsistent sizes");
    return make_project_params(n, width, height, near_plane, far_plane, eps2d, num_threads);
}

// ---- SH colour (project.h) ----

inline ShParams make_sh_params(int64_t degree, const torch::Tensor &coeffs, int64_t num_threads) {
    TORCH_CHECK(degree >= 0 && degree <= 3, "SH degree must be in 0..3, got ", degree);
    TORCH_CHECK(coeffs.dim() == 3 && coeffs.size(2) == 3, "coeffs must be [N, K, 3]");
    ShParams p;
    p.n_gaussians = int(coeffs.size(0));
    p.n_coeffs = int(coeffs.size(1));
    p.n_bases = int((degree + 1) * (degree + 1));
    p.num_threads = int(std::max<int64_t>(1, num_threads));
    TORCH_CHECK(p.n_coeffs >= p.n_bases, "coeffs hold ", p.n_coeffs, " bases, degree ", degree,
                " needs ", p.n_bases);
    return p;
}

inline ShParams check_sh_fwd_args(torch::DeviceType device, int64_t degree,
                                  const torch::Tensor &coeffs,  // [N, K, 3]
                                  const torch::Tensor &dirs,    // [N, 3] unit
                                  int64_t num_threads) {
    const auto dt = coeffs.scalar_type();
    check_input(coeffs, "coeffs", dt, device);
    check_input(dirs, "dirs", dt, device);
    const ShParams p = make_sh_params(degree, coeffs, num_threads);
    TORCH_CHECK(dirs.numel() == 3 * (int64_t)p.n_gaussians, "dirs must be [N, 3]");
    return p;
}

inline ShParams check_sh_bwd_args(torch::DeviceType device, int64_t degree,
                                  const torch::Tensor &coeffs, const torch::Tensor &dirs,
                                  const torch::Tensor &v_colors,  // [N, 3]
                                  int64_t num_threads) {
    const auto dt = coeffs.scalar_type();
    check_input(coeffs, "coeffs", dt, device);
    check_input(dirs, "dirs", dt, device);
    check_input(v_colors, "v_colors", dt, device);
    const ShParams p = make_sh_params(degree, coeffs, num_threads);
    TORCH_CHECK(dirs.numel() == 3 * (int64_t)p.n_gaussians &&
                    v_colors.numel() == 3 * (int64_t)p.n_gaussians,
                "dirs and v_colors must be [N, 3]");
    return p;
}

// ---- mesh visibility (mesh_raster.h) ----

// verts [V, 3] (float or double, camera space), faces [F, 3] int32, ray_x [W] and ray_y [H]
// float64; K enters only through (fx, fy, cx, cy), used for the bounding boxes.
inline MeshRasterParams check_mesh_visibility_args(torch::DeviceType device,
                                                   const torch::Tensor &verts,
                                                   const torch::Tensor &faces,
                                                   const torch::Tensor &ray_x,
                                                   const torch::Tensor &ray_y, double fx,
                                                   double fy, double cx, double cy,
                                                   double near_plane, int64_t tile_size,
                                                   int64_t num_threads) {
    check_input(verts, "verts", verts.scalar_type(), device);
    TORCH_CHECK(verts.scalar_type() == torch::kFloat32 || verts.scalar_type() == torch::kFloat64,
                "verts must be float32 or float64");
    check_input(faces, "faces", torch::kInt32, device);
    check_input(ray_x, "ray_x", torch::kFloat64, device);
    check_input(ray_y, "ray_y", torch::kFloat64, device);
    TORCH_CHECK(verts.dim() == 2 && verts.size(1) == 3, "verts must be [V, 3]");
    TORCH_CHECK(faces.dim() == 2 && faces.size(1) == 3, "faces must be [F, 3]");
    TORCH_CHECK(ray_x.dim() == 1 && ray_y.dim() == 1, "ray_x and ray_y must be 1-D");
    TORCH_CHECK(fx > 0.0 && fy > 0.0, "fx and fy must be positive");
    TORCH_CHECK(near_plane > 0.0, "near_plane must be positive");
    TORCH_CHECK(tile_size >= 1 && tile_size <= 256, "tile_size must be in [1, 256]");
    TORCH_CHECK(verts.size(0) < (int64_t(1) << 31) && faces.size(0) < (int64_t(1) << 31),
                "too many vertices or faces for int32 ids");
    MeshRasterParams p;
    p.n_vertices = int(verts.size(0));
    p.n_faces = int(faces.size(0));
    p.width = int(ray_x.size(0));
    p.height = int(ray_y.size(0));
    p.fx = fx;
    p.fy = fy;
    p.cx = cx;
    p.cy = cy;
    p.near_plane = near_plane;
    p.tile_size = int(tile_size);
    p.tiles_x = ceil_div(p.width, p.tile_size);
    p.tiles_y = ceil_div(p.height, p.tile_size);
    p.num_threads = int(std::max<int64_t>(1, num_threads));
    return p;
}

}  // namespace invrender::bindings
