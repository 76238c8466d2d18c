// torch bindings of the CPU compositing op: checks, allocation, float/double dispatch.
// The public function (invrender/splat/composite.py) has already validated shapes; the checks
// here guard the raw-pointer kernels against misuse from elsewhere.
#include <torch/extension.h>

#include "raster_launch.h"

namespace {

using invrender::RasterParams;

void check_input(const torch::Tensor &t, const char *name, torch::ScalarType dtype) {
    TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
    TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
    TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
}

RasterParams make_params(int64_t n, int64_t channels, int64_t width, int64_t height,
                         int64_t tile_size, int64_t num_threads) {
    TORCH_CHECK(tile_size >= 1 && width >= 0 && height >= 0, "bad image / tile size");
    RasterParams p;
    p.n_gaussians = int(n);
    p.channels = int(channels);
    p.width = int(width);
    p.height = int(height);
    p.tile_size = int(tile_size);
    p.tiles_x = invrender::ceil_div(p.width, p.tile_size);
    p.tiles_y = invrender::ceil_div(p.height, p.tile_size);
    p.num_threads = int(std::max<int64_t>(1, num_threads));
    return p;
}

// -> (tile_offsets int32 [tiles_y * tiles_x + 1], flat_ids int32 [P])
std::vector<torch::Tensor> bin_tiles(torch::Tensor means2d,  // [N, 2]
                                     torch::Tensor radii,    // [N] int32
                                     torch::Tensor depths,   // [N]
                                     int64_t width, int64_t height, int64_t tile_size) {
    const auto dt = means2d.scalar_type();
    check_input(means2d, "means2d", dt);
    check_input(radii, "radii", torch::kInt32);
    check_input(depths, "depths", dt);
    const RasterParams p = make_params(means2d.size(0), 1, width, height, tile_size, 1);
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
    check_input(means2d, "means2d", dt);
    check_input(conics, "conics", dt);
    check_input(opacities, "opacities", dt);
    check_input(features, "features", dt);
    check_input(depths, "depths", dt);
    check_input(tile_offsets, "tile_offsets", torch::kInt32);
    check_input(flat_ids, "flat_ids", torch::kInt32);
    const RasterParams p =
        make_params(means2d.size(0), features.size(1), width, height, tile_size, num_threads);
    TORCH_CHECK(tile_offsets.numel() == (int64_t)p.tiles_x * p.tiles_y + 1, "tile_offsets size");
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
    for (auto &pr : std::vector<std::pair<torch::Tensor *, const char *>>{
             {&means2d, "means2d"}, {&conics, "conics"}, {&opacities, "opacities"},
             {&features, "features"}, {&depths, "depths"}, {&out_alpha, "out_alpha"},
             {&v_out_feat, "v_out_feat"}, {&v_out_depth, "v_out_depth"},
             {&v_out_alpha, "v_out_alpha"}})
        check_input(*pr.first, pr.second, dt);
    check_input(tile_offsets, "tile_offsets", torch::kInt32);
    check_input(flat_ids, "flat_ids", torch::kInt32);
    check_input(last, "last", torch::kInt32);
    const RasterParams p =
        make_params(means2d.size(0), features.size(1), width, height, tile_size, num_threads);
    TORCH_CHECK(v_out_feat.numel() == (int64_t)height * width * p.channels, "v_out_feat size");
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

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("bin_tiles", &bin_tiles, "Bin Gaussians into depth-sorted tile lists (CPU)");
    m.def("op_fwd", &op_fwd, "Gaussian compositing forward (CPU, OpenMP)");
    m.def("op_bwd", &op_bwd, "Gaussian compositing backward (CPU, OpenMP)");
}
