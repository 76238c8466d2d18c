// CUDA driver of the Gaussian compositing op. The pair arithmetic is shared with the CPU driver
// through raster.h. One thread block per tile, one thread per pixel; the tile's depth-sorted list
// is streamed through shared memory in batches of (tile_size^2) Gaussians, and a block leaves
// the loop once every pixel has terminated. Torch-free so `nvcc -c` builds it standalone.
#include <cuda_runtime.h>

#include "raster_cuda.h"

namespace invrender {

namespace {

// Shared-memory batch of Gaussians: ids, then xy, conic, opacity (6 values) per slot.
template <typename T>
struct Batch {
    int *id;
    T *val;
    __device__ Batch(unsigned char *smem, int bs)
        : id(reinterpret_cast<int *>(smem)),
          val(reinterpret_cast<T *>(smem + ((bs * sizeof(int) + 15) / 16) * 16)) {}
};

template <typename T>
size_t batch_bytes(int bs) {
    return ((bs * sizeof(int) + 15) / 16) * 16 + size_t(bs) * 6 * sizeof(T);
}

template <typename T>
__device__ void load_slot(Batch<T> &b, int slot, int g, const T *means2d, const T *conics,
                          const T *opacities) {
    b.id[slot] = g;
    T *v = b.val + 6 * slot;
    v[0] = means2d[2 * g];
    v[1] = means2d[2 * g + 1];
    v[2] = conics[3 * g];
    v[3] = conics[3 * g + 1];
    v[4] = conics[3 * g + 2];
    v[5] = opacities[g];
}

template <typename T>
__global__ void fwd_kernel(RasterParams p, const T *__restrict__ means2d,
                           const T *__restrict__ conics, const T *__restrict__ opacities,
                           const T *__restrict__ features, const T *__restrict__ depths,
                           const int32_t *__restrict__ tile_offsets,
                           const int32_t *__restrict__ flat_ids, T *out_feat, T *out_depth,
                           T *out_alpha, int32_t *last) {
    extern __shared__ __align__(16) unsigned char smem[];
    const int bs = blockDim.x * blockDim.y, tid = threadIdx.y * blockDim.x + threadIdx.x;
    Batch<T> b(smem, bs);
    const int tile = blockIdx.y * p.tiles_x + blockIdx.x;
    const int row = blockIdx.y * p.tile_size + threadIdx.y;
    const int col = blockIdx.x * p.tile_size + threadIdx.x;
    const bool inside = row < p.height && col < p.width;
    const long long pix = (long long)row * p.width + col;
    const T px = T(col) + T(0.5), py = T(row) + T(0.5);
    const int C = p.channels;
    // the pixel's own slice of the output doubles as its accumulator (any C, no registers cap)
    T *acc = inside ? out_feat + pix * C : nullptr;
    if (inside)
        for (int c = 0; c < C; ++c) acc[c] = T(0);
    T trans = T(1), acc_d = T(0);
    int lst = 0;
    bool done = !inside;
    const int start = tile_offsets[tile], end = tile_offsets[tile + 1];
    for (int base = start; base < end; base += bs) {
        // barrier + vote: the previous batch is consumed, and stop when all pixels are done
        if (__syncthreads_count(done) == bs) break;
        if (base + tid < end) load_slot(b, tid, flat_ids[base + tid], means2d, conics, opacities);
        __syncthreads();
        const int n = min(bs, end - base);
        for (int j = 0; j < n && !done; ++j) {
            const T *v = b.val + 6 * j;
            T alpha, vis;
            if (!pair_alpha(v[2], v[3], v[4], v[5], px - v[0], py - v[1], alpha, vis)) continue;
            const T next_t = trans * (T(1) - alpha);
            if (next_t <= T(T_MIN)) {
                done = true;
                break;
            }
            const T w = alpha * trans;
            const int g = b.id[j];
            const T *f = features + (long long)g * C;
            for (int c = 0; c < C; ++c) acc[c] += f[c] * w;
            acc_d += depths[g] * w;
            trans = next_t;
            lst = base - start + j + 1;
        }
    }
    if (inside) {
        out_depth[pix] = acc_d;
        out_alpha[pix] = T(1) - trans;
        last[pix] = lst;
    }
}

template <typename T>
__device__ T warp_sum(T x) {
    for (int off = 16; off > 0; off >>= 1) x += __shfl_down_sync(0xffffffffu, x, off);
    return x;
}

template <typename T>
__global__ void bwd_kernel(RasterParams p, const T *__restrict__ means2d,
                           const T *__restrict__ conics, const T *__restrict__ opacities,
                           const T *__restrict__ features, const T *__restrict__ depths,
                           const int32_t *__restrict__ tile_offsets,
                           const int32_t *__restrict__ flat_ids, const T *__restrict__ out_alpha,
                           const int32_t *__restrict__ last, const T *__restrict__ v_out_feat,
                           const T *__restrict__ v_out_depth, const T *__restrict__ v_out_alpha,
                           T *v_means2d, T *v_conics, T *v_opacities, T *v_features,
                           T *v_depths) {
    extern __shared__ __align__(16) unsigned char smem[];
    __shared__ int max_last;
    const int bs = blockDim.x * blockDim.y, tid = threadIdx.y * blockDim.x + threadIdx.x;
    const int lane = tid & 31;
    Batch<T> b(smem, bs);
    const int tile = blockIdx.y * p.tiles_x + blockIdx.x;
    const int row = blockIdx.y * p.tile_size + threadIdx.y;
    const int col = blockIdx.x * p.tile_size + threadIdx.x;
    const bool inside = row < p.height && col < p.width;
    const long long pix = (long long)row * p.width + col;
    const T px = T(col) + T(0.5), py = T(row) + T(0.5);
    const int C = p.channels;
    const int lst = inside ? last[pix] : 0;
    const T t_final = inside ? T(1) - out_alpha[pix] : T(1);
    const T v_a = inside ? v_out_alpha[pix] : T(0);
    const T v_d = inside ? v_out_depth[pix] : T(0);
    const T *v_f = inside ? v_out_feat + pix * C : nullptr;
    T trans = t_final, sdot = T(0);
    if (tid == 0) max_last = 0;
    __syncthreads();
    atomicMax(&max_last, lst);
    __syncthreads();
    const int start = tile_offsets[tile];
    // walk [start, start + max_last) back to front, one batch at a time
    for (int top = start + max_last; top > start; top -= bs) {
        const int n = min(bs, top - start);
        __syncthreads();  // previous batch consumed
        if (tid < n) load_slot(b, tid, flat_ids[top - 1 - tid], means2d, conics, opacities);
        __syncthreads();
        // every lane runs every j (uniform loop) so warp shuffles see the full warp
        for (int j = 0; j < n; ++j) {
            const int k_local = top - 1 - j - start;
            const T *v = b.val + 6 * j;
            const int g = b.id[j];
            const T dx = px - v[0], dy = py - v[1];
            T alpha, vis;
            const bool valid =
                pair_alpha(v[2], v[3], v[4], v[5], dx, dy, alpha, vis) && (k_local < lst);
            T w = T(0), v_alpha = T(0), dot = T(0);
            if (valid) {
                const T inv = T(1) / (T(1) - alpha);
                trans *= inv;  // transmittance in front of this Gaussian
                w = alpha * trans;
                const T *f = features + (long long)g * C;
                dot = v_d * depths[g];
                for (int c = 0; c < C; ++c) dot += v_f[c] * f[c];
                v_alpha = trans * dot - sdot * inv + v_a * t_final * inv;
                sdot += dot * w;
            }
            T v_mx = 0, v_my = 0, v_ca = 0, v_cb = 0, v_cc = 0, v_op = 0;
            if (valid)
                pair_alpha_backward(v[2], v[3], v[4], v[5], dx, dy, vis, v_alpha, v_mx, v_my, v_ca,
                                    v_cb, v_cc, v_op);
            // reduce over the warp, one atomic per value and warp
            const bool any = __any_sync(0xffffffffu, valid);
            if (!any) continue;
            v_mx = warp_sum(v_mx);
            v_my = warp_sum(v_my);
            v_ca = warp_sum(v_ca);
            v_cb = warp_sum(v_cb);
            v_cc = warp_sum(v_cc);
            v_op = warp_sum(v_op);
            const T vdep = warp_sum(w * v_d);
            if (lane == 0) {
                atomicAdd(v_means2d + 2 * g, v_mx);
                atomicAdd(v_means2d + 2 * g + 1, v_my);
                atomicAdd(v_conics + 3 * g, v_ca);
                atomicAdd(v_conics + 3 * g + 1, v_cb);
                atomicAdd(v_conics + 3 * g + 2, v_cc);
                atomicAdd(v_opacities + g, v_op);
                atomicAdd(v_depths + g, vdep);
            }
            for (int c = 0; c < C; ++c) {
                const T vf = warp_sum(valid ? w * v_f[c] : T(0));
                if (lane == 0) atomicAdd(v_features + (long long)g * C + c, vf);
            }
        }
    }
}

template <typename T>
void launch_fwd(const RasterParams &p, const T *means2d, const T *conics, const T *opacities,
                const T *features, const T *depths, const int32_t *tile_offsets,
                const int32_t *flat_ids, T *out_feat, T *out_depth, T *out_alpha, int32_t *last,
                void *stream) {
    if (p.tiles_x == 0 || p.tiles_y == 0) return;
    const dim3 grid(p.tiles_x, p.tiles_y), block(p.tile_size, p.tile_size);
    const int bs = p.tile_size * p.tile_size;
    fwd_kernel<T><<<grid, block, batch_bytes<T>(bs), (cudaStream_t)stream>>>(
        p, means2d, conics, opacities, features, depths, tile_offsets, flat_ids, out_feat,
        out_depth, out_alpha, last);
}

template <typename T>
void launch_bwd(const RasterParams &p, const T *means2d, const T *conics, const T *opacities,
                const T *features, const T *depths, const int32_t *tile_offsets,
                const int32_t *flat_ids, const T *out_alpha, const int32_t *last,
                const T *v_out_feat, const T *v_out_depth, const T *v_out_alpha, T *v_means2d,
                T *v_conics, T *v_opacities, T *v_features, T *v_depths, void *stream) {
    if (p.tiles_x == 0 || p.tiles_y == 0) return;
    const dim3 grid(p.tiles_x, p.tiles_y), block(p.tile_size, p.tile_size);
    const int bs = p.tile_size * p.tile_size;
    bwd_kernel<T><<<grid, block, batch_bytes<T>(bs), (cudaStream_t)stream>>>(
        p, means2d, conics, opacities, features, depths, tile_offsets, flat_ids, out_alpha, last,
        v_out_feat, v_out_depth, v_out_alpha, v_means2d, v_conics, v_opacities, v_features,
        v_depths);
}

}  // namespace

template <typename T>
void raster_fwd_cuda(const RasterParams &p, const T *means2d, const T *conics, const T *opacities,
                     const T *features, const T *depths, const int32_t *tile_offsets,
                     const int32_t *flat_ids, T *out_feat, T *out_depth, T *out_alpha,
                     int32_t *last, void *stream) {
    launch_fwd(p, means2d, conics, opacities, features, depths, tile_offsets, flat_ids, out_feat,
               out_depth, out_alpha, last, stream);
}

template <typename T>
void raster_bwd_cuda(const RasterParams &p, const T *means2d, const T *conics, const T *opacities,
                     const T *features, const T *depths, const int32_t *tile_offsets,
                     const int32_t *flat_ids, const T *out_alpha, const int32_t *last,
                     const T *v_out_feat, const T *v_out_depth, const T *v_out_alpha,
                     T *v_means2d, T *v_conics, T *v_opacities, T *v_features, T *v_depths,
                     void *stream) {
    launch_bwd(p, means2d, conics, opacities, features, depths, tile_offsets, flat_ids, out_alpha,
               last, v_out_feat, v_out_depth, v_out_alpha, v_means2d, v_conics, v_opacities,
               v_features, v_depths, stream);
}

const char *raster_cuda_last_error() {
    const cudaError_t err = cudaGetLastError();
    return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

#define INSTANTIATE(T)                                                                          \
    template void raster_fwd_cuda<T>(const RasterParams &, const T *, const T *, const T *,     \
                                     const T *, const T *, const int32_t *, const int32_t *,    \
                                     T *, T *, T *, int32_t *, void *);                         \
    template void raster_bwd_cuda<T>(const RasterParams &, const T *, const T *, const T *,     \
                                     const T *, const T *, const int32_t *, const int32_t *,    \
                                     const T *, const int32_t *, const T *, const T *,          \
                                     const T *, T *, T *, T *, T *, T *, void *);
INSTANTIATE(float)
INSTANTIATE(double)

}  // namespace invrender
