// torch bindings of the CUDA compositing op: checks, allocation, float/double dispatch. The
// kernels live in raster_cuda.cu behind the plain launchers of raster_cuda.h; tile binning for
// this variant is done in vectorized torch (invrender/splat/native.py: bin_tiles_torch).
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include "raster_cuda.h"

namespace {

using invrender::RasterParams;

void check_input(const torch::Tensor &t, const char *name, torch::ScalarType dtype) {
    TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
    TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
    TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
}

RasterParams make_params(int64_t n, int64_t channels, int64_t width, int64_t height,
                         int64_t tile_size) {
    TORCH_CHECK(tile_size >= 1 && tile_size <= 32, "tile_size must be in [1, 32] on CUDA");
    RasterParams p;
    p.n_gaussians = int(n);
    p.channels = int(channels);
    p.width = int(width);
    p.height = int(height);
    p.tile_size = int(tile_size);
    p.tiles_x = invrender::ceil_div(p.width, p.tile_size);
    p.tiles_y = invrender::ceil_div(p.height, p.tile_size);
    p.num_threads = 1;
    return p;
}

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
    check_input(means2d, "means2d", dt);
    check_input(conics, "conics", dt);
    check_input(opacities, "opacities", dt);
    check_input(features, "features", dt);
    check_input(depths, "depths", dt);
    check_input(tile_offsets, "tile_offsets", torch::kInt32);
    check_input(flat_ids, "flat_ids", torch::kInt32);
    const c10::cuda::CUDAGuard guard(means2d.device());
    const RasterParams p = make_params(means2d.size(0), features.size(1), width, height, tile_size);
    TORCH_CHECK(tile_offsets.numel() == (int64_t)p.tiles_x * p.tiles_y + 1, "tile_offsets size");
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
    check_input(means2d, "means2d", dt);
    check_input(conics, "conics", dt);
    check_input(opacities, "opacities", dt);
    check_input(features, "features", dt);
    check_input(depths, "depths", dt);
    check_input(out_alpha, "out_alpha", dt);
    check_input(v_out_feat, "v_out_feat", dt);
    check_input(v_out_depth, "v_out_depth", dt);
    check_input(v_out_alpha, "v_out_alpha", dt);
    check_input(tile_offsets, "tile_offsets", torch::kInt32);
    check_input(flat_ids, "flat_ids", torch::kInt32);
    check_input(last, "last", torch::kInt32);
    const c10::cuda::CUDAGuard guard(means2d.device());
    const RasterParams p = make_params(means2d.size(0), features.size(1), width, height, tile_size);
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

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("op_fwd", &op_fwd, "Gaussian compositing forward (CUDA)");
    m.def("op_bwd", &op_bwd, "Gaussian compositing backward (CUDA)");
}
