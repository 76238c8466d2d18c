// torch bindings of the CUDA ops (compositing, projection, SH colour, mesh visibility): device
// guard, stream, allocation, float/double dispatch; the argument checks and params structs are
// shared with the CPU variant (bindings_common.h). The kernels live in raster_cuda.cu,
// project_cuda.cu and mesh_raster_cuda.cu behind the plain launchers of raster_cuda.h,
// project_cuda.h and mesh_raster_cuda.h; tile binning for the compositing is done in vectorized
// torch (invrender/splat/native.py: bin_tiles_torch).
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include "bindings_common.h"
#include "mesh_raster_cuda.h"
#include "project_cuda.h"
#include "raster_cuda.h"

namespace {

using invrender::RasterParams;
using namespace invrender::bindings;

constexpr torch::DeviceType kDevice = torch::kCUDA;  // where every tensor argument must live
// num_threads is the CPU variant's OpenMP setting: the ops below take it for a common signature,
// ignore it, and build their params with 1.

void check_launch(const char *what) {
    const char *err = invrender::raster_cuda_last_error();
    TORCH_CHECK(err == nullptr, what, " failed: ", err ? err : "");
}

// -> (out_feat [H, W, C], out_depth [H, W, 1], out_alpha [H, W, 1], last int32 [H, W])
std::vector<torch::Tensor> op_fwd(torch::Tensor means2d, torch::Tensor conics,
                                  torch::Tensor opacities, torch::Tensor features,
                                  torch::Tensor depths, torch::Tensor tile_offsets,
                                  torch::Tensor flat_ids, int64_t width, int64_t height,
                                  int64_t tile_size, int64_t /*num_threads*/) {
    const auto dt = means2d.scalar_type();
    const RasterParams p = check_op_fwd_args(kDevice, means2d, conics, opacities, features,
                                             depths, tile_offsets, flat_ids, width, height,
                                             tile_size, 1);
    const c10::cuda::CUDAGuard guard(means2d.device());
    auto opt = means2d.options();
    torch::Tensor out_feat = torch::empty({height, width, features.size(1)}, opt);
    torch::Tensor out_depth = torch::empty({height, width, 1}, opt);
    torch::Tensor out_alpha = torch::empty({height, width, 1}, opt);
    torch::Tensor last = torch::empty({height, width}, opt.dtype(torch::kInt32));
    void *stream = c10::cuda::getCurrentCUDAStream().stream();
    AT_DISPATCH_FLOATING_TYPES(dt, "op_fwd_cuda", [&] {
        invrender::raster_fwd_cuda<scalar_t>(
            p, means2d.data_ptr<scalar_t>(), conics.data_ptr<scalar_t>(),
            opacities.data_ptr<scalar_t>(), features.data_ptr<scalar_t>(),
            depths.data_ptr<scalar_t>(), tile_offsets.data_ptr<int32_t>(),
            flat_ids.data_ptr<int32_t>(), out_feat.data_ptr<scalar_t>(),
            out_depth.data_ptr<scalar_t>(), out_alpha.data_ptr<scalar_t>(),
            last.data_ptr<int32_t>(), stream);
    });
    check_launch("op_fwd (CUDA)");
    return {out_feat, out_depth, out_alpha, last};
}

// -> (v_means2d [N, 2], v_conics [N, 3], v_opacities [N], v_features [N, C], v_depths [N])
std::vector<torch::Tensor> op_bwd(torch::Tensor means2d, torch::Tensor conics,
                                  torch::Tensor opacities, torch::Tensor features,
                                  torch::Tensor depths, torch::Tensor tile_offsets,
                                  torch::Tensor flat_ids, torch::Tensor out_alpha,
                                  torch::Tensor last, torch::Tensor v_out_feat,
                                  torch::Tensor v_out_depth, torch::Tensor v_out_alpha,
                                  int64_t width, int64_t height, int64_t tile_size,
                                  int64_t /*num_threads*/) {
    const auto dt = means2d.scalar_type();
    const RasterParams p = check_op_bwd_args(
        kDevice, means2d, conics, opacities, features, depths, tile_offsets, flat_ids, out_alpha,
        last, v_out_feat, v_out_depth, v_out_alpha, width, height, tile_size, 1);
    const c10::cuda::CUDAGuard guard(means2d.device());
    // the kernel accumulates with atomics, so the gradients start at zero
    torch::Tensor v_means2d = torch::zeros_like(means2d);
    torch::Tensor v_conics = torch::zeros_like(conics);
    torch::Tensor v_opacities = torch::zeros_like(opacities);
    torch::Tensor v_features = torch::zeros_like(features);
    torch::Tensor v_depths = torch::zeros_like(depths);
    void *stream = c10::cuda::getCurrentCUDAStream().stream();
    AT_DISPATCH_FLOATING_TYPES(dt, "op_bwd_cuda", [&] {
        invrender::raster_bwd_cuda<scalar_t>(
            p, means2d.data_ptr<scalar_t>(), conics.data_ptr<scalar_t>(),
            opacities.data_ptr<scalar_t>(), features.data_ptr<scalar_t>(),
            depths.data_ptr<scalar_t>(), tile_offsets.data_ptr<int32_t>(),
            flat_ids.data_ptr<int32_t>(), out_alpha.data_ptr<scalar_t>(),
            last.data_ptr<int32_t>(), v_out_feat.data_ptr<scalar_t>(),
            v_out_depth.data_ptr<scalar_t>(), v_out_alpha.data_ptr<scalar_t>(),
            v_means2d.data_ptr<scalar_t>(), v_conics.data_ptr<scalar_t>(),
            v_opacities.data_ptr<scalar_t>(), v_features.data_ptr<scalar_t>(),
            v_depths.data_ptr<scalar_t>(), stream);
    });
    check_launch("op_bwd (CUDA)");
    return {v_means2d, v_conics, v_opacities, v_features, v_depths};
}

// ---- projection (project.h, project_cuda.cu) ----

// -> (means2d [N, 2], conics [N, 3], depths [N], radii int32 [N])
std::vector<torch::Tensor> project_fwd(torch::Tensor means,    // [N, 3]
                                       torch::Tensor quats,    // [N, 4]
                                       torch::Tensor scales,   // [N, 3]
                                       torch::Tensor viewmat,  // [4, 4], on the device
                                       torch::Tensor K,        // [3, 3], on the device
                                       int64_t width, int64_t height, double near_plane,
                                       double far_plane, double eps2d, int64_t /*num_threads*/) {
    const auto dt = means.scalar_type();
    const auto p = check_project_fwd_args(kDevice, means, quats, scales, viewmat, K, width, height,
                                          near_plane, far_plane, eps2d, 1);
    const int64_t n = means.size(0);
    const c10::cuda::CUDAGuard guard(means.device());
    auto opt = means.options();
    torch::Tensor means2d = torch::empty({n, 2}, opt);
    torch::Tensor conics = torch::empty({n, 3}, opt);
    torch::Tensor depths = torch::empty({n}, opt);
    torch::Tensor radii = torch::empty({n}, opt.dtype(torch::kInt32));
    void *stream = c10::cuda::getCurrentCUDAStream().stream();
    AT_DISPATCH_FLOATING_TYPES(dt, "project_fwd_cuda", [&] {
        invrender::project_fwd_cuda<scalar_t>(
            p, means.data_ptr<scalar_t>(), quats.data_ptr<scalar_t>(), scales.data_ptr<scalar_t>(),
            viewmat.data_ptr<scalar_t>(), K.data_ptr<scalar_t>(), means2d.data_ptr<scalar_t>(),
            conics.data_ptr<scalar_t>(), depths.data_ptr<scalar_t>(), radii.data_ptr<int32_t>(),
            stream);
    });
    check_launch("project_fwd (CUDA)");
    return {means2d, conics, depths, radii};
}

// -> (v_means [N, 3], v_quats [N, 4], v_scales [N, 3])
std::vector<torch::Tensor> project_bwd(torch::Tensor means, torch::Tensor quats,
                                       torch::Tensor scales, torch::Tensor viewmat,
                                       torch::Tensor K,
                                       torch::Tensor radii,      // [N] int32, from project_fwd
                                       torch::Tensor v_means2d,  // [N, 2]
                                       torch::Tensor v_conics,   // [N, 3]
                                       torch::Tensor v_depths,   // [N]
                                       int64_t width, int64_t height, double near_plane,
                                       double far_plane, double eps2d, int64_t /*num_threads*/) {
    const auto dt = means.scalar_type();
    const auto p = check_project_bwd_args(kDevice, means, quats, scales, viewmat, K, radii,
                                          v_means2d, v_conics, v_depths, width, height,
                                          near_plane, far_plane, eps2d, 1);
    const c10::cuda::CUDAGuard guard(means.device());
    torch::Tensor v_means = torch::empty_like(means);
    torch::Tensor v_quats = torch::empty_like(quats);
    torch::Tensor v_scales = torch::empty_like(scales);
    void *stream = c10::cuda::getCurrentCUDAStream().stream();
    AT_DISPATCH_FLOATING_TYPES(dt, "project_bwd_cuda", [&] {
        invrender::project_bwd_cuda<scalar_t>(
            p, means.data_ptr<scalar_t>(), quats.data_ptr<scalar_t>(), scales.data_ptr<scalar_t>(),
            viewmat.data_ptr<scalar_t>(), K.data_ptr<scalar_t>(), radii.data_ptr<int32_t>(),
            v_means2d.data_ptr<scalar_t>(), v_conics.data_ptr<scalar_t>(),
            v_depths.data_ptr<scalar_t>(), v_means.data_ptr<scalar_t>(),
            v_quats.data_ptr<scalar_t>(), v_scales.data_ptr<scalar_t>(), stream);
    });
    check_launch("project_bwd (CUDA)");
    return {v_means, v_quats, v_scales};
}

// ---- SH colour (project.h, project_cuda.cu) ----

// -> colors [N, 3] = max(sum_k basis_k(dirs) coeffs[:, k] + 0.5, 0)
torch::Tensor sh_fwd(int64_t degree, torch::Tensor coeffs,  // [N, K, 3]
                     torch::Tensor dirs,                    // [N, 3] unit
                     int64_t /*num_threads*/) {
    const auto dt = coeffs.scalar_type();
    const auto p = check_sh_fwd_args(kDevice, degree, coeffs, dirs, 1);
    const c10::cuda::CUDAGuard guard(coeffs.device());
    torch::Tensor colors = torch::empty({coeffs.size(0), 3}, coeffs.options());
    void *stream = c10::cuda::getCurrentCUDAStream().stream();
    AT_DISPATCH_FLOATING_TYPES(dt, "sh_fwd_cuda", [&] {
        invrender::sh_fwd_cuda<scalar_t>(p, coeffs.data_ptr<scalar_t>(),
                                         dirs.data_ptr<scalar_t>(), colors.data_ptr<scalar_t>(),
                                         stream);
    });
    check_launch("sh_fwd (CUDA)");
    return colors;
}

// -> v_coeffs [N, K, 3]
torch::Tensor sh_bwd(int64_t degree, torch::Tensor coeffs, torch::Tensor dirs,
                     torch::Tensor v_colors,  // [N, 3]
                     int64_t /*num_threads*/) {
    const auto dt = coeffs.scalar_type();
    const auto p = check_sh_bwd_args(kDevice, degree, coeffs, dirs, v_colors, 1);
    const c10::cuda::CUDAGuard guard(coeffs.device());
    torch::Tensor v_coeffs = torch::empty_like(coeffs);
    void *stream = c10::cuda::getCurrentCUDAStream().stream();
    AT_DISPATCH_FLOATING_TYPES(dt, "sh_bwd_cuda", [&] {
        invrender::sh_bwd_cuda<scalar_t>(p, coeffs.data_ptr<scalar_t>(),
                                         dirs.data_ptr<scalar_t>(), v_colors.data_ptr<scalar_t>(),
                                         v_coeffs.data_ptr<scalar_t>(), stream);
    });
    check_launch("sh_bwd (CUDA)");
    return v_coeffs;
}

// ---- mesh visibility (mesh_raster.h) ----

// -> (tri_id int32 [H, W], -1 = empty; depth float32 [H, W], 0 = empty)
std::vector<torch::Tensor> mesh_visibility(torch::Tensor verts,  // [V, 3] camera space
                                           torch::Tensor faces,  // [F, 3] int32
                                           torch::Tensor ray_x,  // [W] float64
                                           torch::Tensor ray_y,  // [H] float64
                                           double fx, double fy, double cx, double cy,
                                           double near_plane, int64_t tile_size,
                                           int64_t /*num_threads*/) {
    const auto p = check_mesh_visibility_args(kDevice, verts, faces, ray_x, ray_y, fx, fy, cx, cy,
                                              near_plane, tile_size, 1);
    const c10::cuda::CUDAGuard guard(verts.device());
    auto opt = verts.options();
    torch::Tensor tri_id = torch::empty({p.height, p.width}, opt.dtype(torch::kInt32));
    torch::Tensor depth = torch::empty({p.height, p.width}, opt.dtype(torch::kFloat32));
    // scratch: per-triangle setup records and the packed depth keys of the z-buffer
    torch::Tensor setup = torch::empty(
        {(int64_t)p.n_faces * (int64_t)sizeof(invrender::TriSetup)}, opt.dtype(torch::kUInt8));
    torch::Tensor keys = torch::empty({p.height, p.width}, opt.dtype(torch::kInt64));
    void *stream = c10::cuda::getCurrentCUDAStream().stream();
    AT_DISPATCH_FLOATING_TYPES(verts.scalar_type(), "mesh_visibility_cuda", [&] {
        invrender::mesh_visibility_cuda<scalar_t>(
            p, verts.data_ptr<scalar_t>(), faces.data_ptr<int32_t>(), ray_x.data_ptr<double>(),
            ray_y.data_ptr<double>(), reinterpret_cast<invrender::TriSetup *>(setup.data_ptr()),
            reinterpret_cast<uint64_t *>(keys.data_ptr<int64_t>()), tri_id.data_ptr<int32_t>(),
            depth.data_ptr<float>(), stream);
    });
    check_launch("mesh_visibility (CUDA)");
    return {tri_id, depth};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("op_fwd", &op_fwd, "Gaussian compositing forward (CUDA)");
    m.def("op_bwd", &op_bwd, "Gaussian compositing backward (CUDA)");
    m.def("project_fwd", &project_fwd, "EWA projection of 3D Gaussians, forward (CUDA)");
    m.def("project_bwd", &project_bwd, "EWA projection of 3D Gaussians, backward (CUDA)");
    m.def("sh_fwd", &sh_fwd, "SH colour (+0.5, clamped at 0), forward (CUDA)");
    m.def("sh_bwd", &sh_bwd, "SH colour, gradient w.r.t. the coefficients (CUDA)");
    m.def("mesh_visibility", &mesh_visibility,
          "Mesh visibility: triangle id and depth per pixel centre (CUDA)");
}
