// torch bindings of the CPU ops (compositing, projection, SH colour, mesh visibility):
// allocation and float/double dispatch. The argument checks and params structs are shared with
// the CUDA variant (bindings_common.h).
#include <torch/extension.h>

#include "bindings_common.h"
#include "mesh_raster_launch.h"
#include "project.h"
#include "raster_launch.h"

namespace {

using invrender::RasterParams;
using namespace invrender::bindings;

constexpr torch::DeviceType kDevice = torch::kCPU;  // where every tensor argument must live

// -> (tile_offsets int32 [tiles_y * tiles_x + 1], flat_ids int32 [P])
std::vector<torch::Tensor> bin_tiles(torch::Tensor means2d,  // [N, 2]
                                     torch::Tensor radii,    // [N] int32
                                     torch::Tensor depths,   // [N]
                                     int64_t width, int64_t height, int64_t tile_size) {
    const auto dt = means2d.scalar_type();
    check_input(means2d, "means2d", dt, kDevice);
    check_input(radii, "radii", torch::kInt32, kDevice);
    check_input(depths, "depths", dt, kDevice);
    const RasterParams p = make_params(means2d.size(0), 1, width, height, tile_size, 1, kDevice);
    std::vector<int32_t> offsets, ids;
    AT_DISPATCH_FLOATING_TYPES(dt, "bin_tiles", [&] {
        invrender::bin_tiles_cpu<scalar_t>(p, means2d.data_ptr<scalar_t>(),
                                           radii.data_ptr<int32_t>(), depths.data_ptr<scalar_t>(),
                                           offsets, ids);
    });
    auto opt = torch::TensorOptions().dtype(torch::kInt32);
    torch::Tensor t_off = torch::empty({(int64_t)offsets.size()}, opt);
    torch::Tensor t_ids = torch::empty({(int64_t)ids.size()}, opt);
    std::copy(offsets.begin(), offsets.end(), t_off.data_ptr<int32_t>());
    std::copy(ids.begin(), ids.end(), t_ids.data_ptr<int32_t>());
    return {t_off, t_ids};
}

// -> (out_feat [H, W, C], out_depth [H, W, 1], out_alpha [H, W, 1], last int32 [H, W])
std::vector<torch::Tensor> op_fwd(torch::Tensor means2d,       // [N, 2]
                                  torch::Tensor conics,        // [N, 3]
                                  torch::Tensor opacities,     // [N]
                                  torch::Tensor features,      // [N, C]
                                  torch::Tensor depths,        // [N]
                                  torch::Tensor tile_offsets,  // [T + 1] int32
                                  torch::Tensor flat_ids,      // [P] int32
                                  int64_t width, int64_t height, int64_t tile_size,
                                  int64_t num_threads) {
    const auto dt = means2d.scalar_type();
    const RasterParams p =
        check_op_fwd_args(kDevice, means2d, conics, opacities, features, depths, tile_offsets,
                          flat_ids, width, height, tile_size, num_threads);
    auto opt = means2d.options();
    torch::Tensor out_feat = torch::empty({height, width, features.size(1)}, opt);
    torch::Tensor out_depth = torch::empty({height, width, 1}, opt);
    torch::Tensor out_alpha = torch::empty({height, width, 1}, opt);
    torch::Tensor last = torch::empty({height, width}, opt.dtype(torch::kInt32));
    AT_DISPATCH_FLOATING_TYPES(dt, "op_fwd", [&] {
        invrender::raster_fwd_cpu<scalar_t>(
            p, means2d.data_ptr<scalar_t>(), conics.data_ptr<scalar_t>(),
            opacities.data_ptr<scalar_t>(), features.data_ptr<scalar_t>(),
            depths.data_ptr<scalar_t>(), tile_offsets.data_ptr<int32_t>(),
            flat_ids.data_ptr<int32_t>(), out_feat.data_ptr<scalar_t>(),
            out_depth.data_ptr<scalar_t>(), out_alpha.data_ptr<scalar_t>(),
            last.data_ptr<int32_t>());
    });
    return {out_feat, out_depth, out_alpha, last};
}

// -> (v_means2d [N, 2], v_conics [N, 3], v_opacities [N], v_features [N, C], v_depths [N])
std::vector<torch::Tensor> op_bwd(torch::Tensor means2d, torch::Tensor conics,
                                  torch::Tensor opacities, torch::Tensor features,
                                  torch::Tensor depths, torch::Tensor tile_offsets,
                                  torch::Tensor flat_ids,
                                  torch::Tensor out_alpha,    // [H, W, 1]
                                  torch::Tensor last,         // [H, W] int32
                                  torch::Tensor v_out_feat,   // [H, W, C]
                                  torch::Tensor v_out_depth,  // [H, W, 1]
                                  torch::Tensor v_out_alpha,  // [H, W, 1]
                                  int64_t width, int64_t height, int64_t tile_size,
                                  int64_t num_threads) {
    const auto dt = means2d.scalar_type();
    const RasterParams p = check_op_bwd_args(
        kDevice, means2d, conics, opacities, features, depths, tile_offsets, flat_ids, out_alpha,
        last, v_out_feat, v_out_depth, v_out_alpha, width, height, tile_size, num_threads);
    torch::Tensor v_means2d = torch::empty_like(means2d);
    torch::Tensor v_conics = torch::empty_like(conics);
    torch::Tensor v_opacities = torch::empty_like(opacities);
    torch::Tensor v_features = torch::empty_like(features);
    torch::Tensor v_depths = torch::empty_like(depths);
    AT_DISPATCH_FLOATING_TYPES(dt, "op_bwd", [&] {
        invrender::raster_bwd_cpu<scalar_t>(
            p, means2d.data_ptr<scalar_t>(), conics.data_ptr<scalar_t>(),
            opacities.data_ptr<scalar_t>(), features.data_ptr<scalar_t>(),
            depths.data_ptr<scalar_t>(), tile_offsets.data_ptr<int32_t>(),
            flat_ids.data_ptr<int32_t>(), out_alpha.data_ptr<scalar_t>(),
            last.data_ptr<int32_t>(), v_out_feat.data_ptr<scalar_t>(),
            v_out_depth.data_ptr<scalar_t>(), v_out_alpha.data_ptr<scalar_t>(),
            v_means2d.data_ptr<scalar_t>(), v_conics.data_ptr<scalar_t>(),
            v_opacities.data_ptr<scalar_t>(), v_features.data_ptr<scalar_t>(),
            v_depths.data_ptr<scalar_t>());
    });
    return {v_means2d, v_conics, v_opacities, v_features, v_depths};
}

// ---- projection (project.h) ----

// -> (means2d [N, 2], conics [N, 3], depths [N], radii int32 [N])
std::vector<torch::Tensor> project_fwd(torch::Tensor means,    // [N, 3]
                                       torch::Tensor quats,    // [N, 4]
                                       torch::Tensor scales,   // [N, 3]
                                       torch::Tensor viewmat,  // [4, 4]
                                       torch::Tensor K,        // [3, 3]
                                       int64_t width, int64_t height, double near_plane,
                                       double far_plane, double eps2d, int64_t num_threads) {
    const auto dt = means.scalar_type();
    const auto p = check_project_fwd_args(kDevice, means, quats, scales, viewmat, K, width, height,
                                          near_plane, far_plane, eps2d, num_threads);
    const int64_t n = means.size(0);
    auto opt = means.options();
    torch::Tensor means2d = torch::empty({n, 2}, opt);
    torch::Tensor conics = torch::empty({n, 3}, opt);
    torch::Tensor depths = torch::empty({n}, opt);
    torch::Tensor radii = torch::empty({n}, opt.dtype(torch::kInt32));
    AT_DISPATCH_FLOATING_TYPES(dt, "project_fwd", [&] {
        invrender::project_fwd_cpu<scalar_t>(
            p, means.data_ptr<scalar_t>(), quats.data_ptr<scalar_t>(), scales.data_ptr<scalar_t>(),
            viewmat.data_ptr<scalar_t>(), K.data_ptr<scalar_t>(), means2d.data_ptr<scalar_t>(),
            conics.data_ptr<scalar_t>(), depths.data_ptr<scalar_t>(), radii.data_ptr<int32_t>());
    });
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
                                       double far_plane, double eps2d, int64_t num_threads) {
    const auto dt = means.scalar_type();
    const auto p = check_project_bwd_args(kDevice, means, quats, scales, viewmat, K, radii,
                                          v_means2d, v_conics, v_depths, width, height,
                                          near_plane, far_plane, eps2d, num_threads);
    torch::Tensor v_means = torch::empty_like(means);
    torch::Tensor v_quats = torch::empty_like(quats);
    torch::Tensor v_scales = torch::empty_like(scales);
    AT_DISPATCH_FLOATING_TYPES(dt, "project_bwd", [&] {
        invrender::project_bwd_cpu<scalar_t>(
            p, means.data_ptr<scalar_t>(), quats.data_ptr<scalar_t>(), scales.data_ptr<scalar_t>(),
            viewmat.data_ptr<scalar_t>(), K.data_ptr<scalar_t>(), radii.data_ptr<int32_t>(),
            v_means2d.data_ptr<scalar_t>(), v_conics.data_ptr<scalar_t>(),
            v_depths.data_ptr<scalar_t>(), v_means.data_ptr<scalar_t>(),
            v_quats.data_ptr<scalar_t>(), v_scales.data_ptr<scalar_t>());
    });
    return {v_means, v_quats, v_scales};
}

// ---- SH colour (project.h) ----

// -> colors [N, 3] = max(sum_k basis_k(dirs) coeffs[:, k] + 0.5, 0)
torch::Tensor sh_fwd(int64_t degree, torch::Tensor coeffs,  // [N, K, 3]
                     torch::Tensor dirs,                    // [N, 3] unit
                     int64_t num_threads) {
    const auto dt = coeffs.scalar_type();
    const auto p = check_sh_fwd_args(kDevice, degree, coeffs, dirs, num_threads);
    torch::Tensor colors = torch::empty({coeffs.size(0), 3}, coeffs.options());
    AT_DISPATCH_FLOATING_TYPES(dt, "sh_fwd", [&] {
        invrender::sh_fwd_cpu<scalar_t>(p, coeffs.data_ptr<scalar_t>(), dirs.data_ptr<scalar_t>(),
                                        colors.data_ptr<scalar_t>());
    });
    return colors;
}

// -> v_coeffs [N, K, 3]
torch::Tensor sh_bwd(int64_t degree, torch::Tensor coeffs, torch::Tensor dirs,
                     torch::Tensor v_colors,  // [N, 3]
                     int64_t num_threads) {
    const auto dt = coeffs.scalar_type();
    const auto p = check_sh_bwd_args(kDevice, degree, coeffs, dirs, v_colors, num_threads);
    torch::Tensor v_coeffs = torch::empty_like(coeffs);
    AT_DISPATCH_FLOATING_TYPES(dt, "sh_bwd", [&] {
        invrender::sh_bwd_cpu<scalar_t>(p, coeffs.data_ptr<scalar_t>(), dirs.data_ptr<scalar_t>(),
                                        v_colors.data_ptr<scalar_t>(),
                                        v_coeffs.data_ptr<scalar_t>());
    });
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
                                           int64_t num_threads) {
    const auto p = check_mesh_visibility_args(kDevice, verts, faces, ray_x, ray_y, fx, fy, cx, cy,
                                              near_plane, tile_size, num_threads);
    auto opt = verts.options();
    torch::Tensor tri_id = torch::empty({p.height, p.width}, opt.dtype(torch::kInt32));
    torch::Tensor depth = torch::empty({p.height, p.width}, opt.dtype(torch::kFloat32));
    AT_DISPATCH_FLOATING_TYPES(verts.scalar_type(), "mesh_visibility", [&] {
        invrender::mesh_visibility_cpu<scalar_t>(
            p, verts.data_ptr<scalar_t>(), faces.data_ptr<int32_t>(), ray_x.data_ptr<double>(),
            ray_y.data_ptr<double>(), tri_id.data_ptr<int32_t>(), depth.data_ptr<float>());
    });
    return {tri_id, depth};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("bin_tiles", &bin_tiles, "Bin Gaussians into depth-sorted tile lists (CPU)");
    m.def("op_fwd", &op_fwd, "Gaussian compositing forward (CPU, OpenMP)");
    m.def("op_bwd", &op_bwd, "Gaussian compositing backward (CPU, OpenMP)");
    m.def("project_fwd", &project_fwd, "EWA projection of 3D Gaussians, forward (CPU, OpenMP)");
    m.def("project_bwd", &project_bwd, "EWA projection of 3D Gaussians, backward (CPU, OpenMP)");
    m.def("sh_fwd", &sh_fwd, "SH colour (+0.5, clamped at 0), forward (CPU, OpenMP)");
    m.def("sh_bwd", &sh_bwd, "SH colour, gradient w.r.t. the coefficients (CPU, OpenMP)");
    m.def("mesh_visibility", &mesh_visibility,
          "Mesh visibility: triangle id and depth per pixel centre (CPU, OpenMP)");
}
