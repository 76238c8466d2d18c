// CPU (OpenMP) driver of the mesh visibility pass. The arithmetic is in mesh_raster.h.
//
// Three steps: per-triangle setup (parallel over triangles), binning of the triangles into the
// tiles their bounding box touches (serial counting sort, a few ms for 1e5 triangles), then
// a z-buffer per tile (parallel over tiles). Each thread owns whole tiles, so the z-buffer
// needs no atomics and the result does not depend on the thread count: keys are combined by
// min, which is order independent.
//
// The extension is built with -ffast-math and FMA contraction for the Gaussian kernels; the
// edge functions here must round every operation on its own (see mesh_raster.h), so this file
// opts out before anything is included. Nothing here is vectorizable anyway: the per-pixel work
// is a handful of compares around a 64-bit min.
#if defined(__clang__)
#pragma clang fp contract(off) reassociate(off)
#elif defined(__GNUC__)
#pragma GCC optimize("no-fast-math", "fp-contract=off")
#endif
#include <omp.h>

#include <algorithm>
#include <vector>

#include "mesh_raster_launch.h"

namespace invrender {

template <typename T>
void mesh_visibility_cpu(const MeshRasterParams &p, const T *verts, const int32_t *faces,
                         const double *ray_x, const double *ray_y, int32_t *tri_id,
                         float *depth) {
    const int F = p.n_faces, ts = p.tile_size, n_tiles = p.tiles_x * p.tiles_y;
    std::vector<TriSetup> setup(F);
#pragma omp parallel for schedule(static) num_threads(p.num_threads)
    for (int f = 0; f < F; ++f) tri_setup(p, verts, faces, f, setup[f]);

    // counting sort of (tile, triangle) pairs; triangles stay in id order inside a tile
    std::vector<int32_t> offsets(n_tiles + 1, 0);
    for (int f = 0; f < F; ++f) {
        const TriSetup &s = setup[f];
        if (s.x1 <= s.x0 || s.y1 <= s.y0) continue;
        for (int ty = s.y0 / ts; ty <= (s.y1 - 1) / ts; ++ty)
            for (int tx = s.x0 / ts; tx <= (s.x1 - 1) / ts; ++tx) ++offsets[ty * p.tiles_x + tx + 1];
    }
    for (int t = 0; t < n_tiles; ++t) offsets[t + 1] += offsets[t];
    std::vector<int32_t> ids(offsets[n_tiles]);
    {
        std::vector<int32_t> cursor(offsets.begin(), offsets.end() - 1);
        for (int f = 0; f < F; ++f) {
            const TriSetup &s = setup[f];
            if (s.x1 <= s.x0 || s.y1 <= s.y0) continue;
            for (int ty = s.y0 / ts; ty <= (s.y1 - 1) / ts; ++ty)
                for (int tx = s.x0 / ts; tx <= (s.x1 - 1) / ts; ++tx)
                    ids[cursor[ty * p.tiles_x + tx]++] = f;
        }
    }

#pragma omp parallel num_threads(p.num_threads)
    {
        std::vector<uint64_t> zbuf((size_t)ts * ts);
#pragma omp for schedule(dynamic, 4)
        for (int tile = 0; tile < n_tiles; ++tile) {
            const int tx = tile % p.tiles_x, ty = tile / p.tiles_x;
            const int px0 = tx * ts, py0 = ty * ts;
            const int px1 = std::min(px0 + ts, p.width), py1 = std::min(py0 + ts, p.height);
            std::fill(zbuf.begin(), zbuf.end(), MESH_EMPTY_KEY);
            for (int k = offsets[tile]; k < offsets[tile + 1]; ++k) {
                const int f = ids[k];
                const TriSetup &s = setup[f];
                const int x0 = std::max(s.x0, px0), x1 = std::min(s.x1, px1);
                const int y0 = std::max(s.y0, py0), y1 = std::min(s.y1, py1);
                for (int y = y0; y < y1; ++y) {
                    double r[3];
                    row_terms(s, ray_y[y], r);
                    uint64_t *zrow = zbuf.data() + (size_t)(y - py0) * ts - px0;
                    for (int x = x0; x < x1; ++x) {
                        const uint64_t key = pixel_key(s, f, ray_x[x], r, p.near_plane);
                        zrow[x] = key < zrow[x] ? key : zrow[x];
                    }
                }
            }
            for (int y = py0; y < py1; ++y)
                for (int x = px0; x < px1; ++x) {
                    const size_t q = (size_t)y * p.width + x;
                    resolve_key(zbuf[(size_t)(y - py0) * ts + (x - px0)], tri_id[q], depth[q]);
                }
        }
    }
}

template void mesh_visibility_cpu<float>(const MeshRasterParams &, const float *, const int32_t *,
                                         const double *, const double *, int32_t *, float *);
template void mesh_visibility_cpu<double>(const MeshRasterParams &, const double *,
                                          const int32_t *, const double *, const double *,
                                          int32_t *, float *);

}  // namespace invrender
