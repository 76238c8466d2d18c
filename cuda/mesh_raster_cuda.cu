// CUDA driver of the mesh visibility pass; the arithmetic is shared with the CPU driver through
// mesh_raster.h. Straightforward rather than clever: one thread per triangle for the setup,
// one warp per triangle for coverage (its 32 lanes stride over the bounding box, so large and
// small triangles both keep the lanes busy) with a 64-bit atomicMin on the packed depth key,
// then one thread per pixel to unpack. No binning or sorting: the key's min is order
// independent, so the result is deterministic. Torch-free so `nvcc -c` builds it standalone.
#include <cuda_runtime.h>

#include "mesh_raster_cuda.h"

namespace invrender {

namespace {

__global__ void clear_keys(uint64_t *keys, long long n) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) keys[i] = MESH_EMPTY_KEY;
}

template <typename T>
__global__ void setup_kernel(MeshRasterParams p, const T *__restrict__ verts,
                             const int32_t *__restrict__ faces, TriSetup *setup) {
    const int f = blockIdx.x * blockDim.x + threadIdx.x;
    if (f >= p.n_faces) return;
    TriSetup s;
    tri_setup(p, verts, faces, f, s);
    setup[f] = s;
}

__global__ void cover_kernel(MeshRasterParams p, const TriSetup *__restrict__ setup,
                             const double *__restrict__ ray_x, const double *__restrict__ ray_y,
                             unsigned long long *keys) {
    const long long gid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const int f = int(gid / 32), lane = int(gid % 32);
    if (f >= p.n_faces) return;
    const TriSetup s = setup[f];
    const int bw = s.x1 - s.x0, bh = s.y1 - s.y0;
    if (bw <= 0 || bh <= 0) return;
    const long long area = (long long)bw * bh;
    for (long long k = lane; k < area; k += 32) {
        const int x = s.x0 + int(k % bw), y = s.y0 + int(k / bw);
        double r[3];
        row_terms(s, ray_y[y], r);
        const uint64_t key = pixel_key(s, f, ray_x[x], r, p.near_plane);
        if (key != MESH_EMPTY_KEY)
            atomicMin(keys + (long long)y * p.width + x, (unsigned long long)key);
    }
}

__global__ void resolve_kernel(long long n, const uint64_t *__restrict__ keys, int32_t *tri_id,
                               float *depth) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) resolve_key(keys[i], tri_id[i], depth[i]);
}

}  // namespace

template <typename T>
void mesh_visibility_cuda(const MeshRasterParams &p, const T *verts, const int32_t *faces,
                          const double *ray_x, const double *ray_y, TriSetup *setup,
                          uint64_t *keys, int32_t *tri_id, float *depth, void *stream) {
    const cudaStream_t st = (cudaStream_t)stream;
    const long long n_pix = (long long)p.width * p.height;
    const int block = 256;
    if (n_pix > 0) clear_keys<<<(unsigned)((n_pix + block - 1) / block), block, 0, st>>>(keys, n_pix);
    if (p.n_faces > 0 && n_pix > 0) {
        setup_kernel<T><<<(p.n_faces + block - 1) / block, block, 0, st>>>(p, verts, faces, setup);
        const long long threads = (long long)p.n_faces * 32;
        cover_kernel<<<(unsigned)((threads + block - 1) / block), block, 0, st>>>(
            p, setup, ray_x, ray_y, reinterpret_cast<unsigned long long *>(keys));
    }
    if (n_pix > 0)
        resolve_kernel<<<(unsigned)((n_pix + block - 1) / block), block, 0, st>>>(n_pix, keys,
                                                                                  tri_id, depth);
}

template void mesh_visibility_cuda<float>(const MeshRasterParams &, const float *,
                                          const int32_t *, const double *, const double *,
                                          TriSetup *, uint64_t *, int32_t *, float *, void *);
template void mesh_visibility_cuda<double>(const MeshRasterParams &, const double *,
                                           const int32_t *, const double *, const double *,
                                           TriSetup *, uint64_t *, int32_t *, float *, void *);

}  // namespace invrender
