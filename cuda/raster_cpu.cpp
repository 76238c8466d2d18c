// CPU (OpenMP) driver of the Gaussian compositing op. The pair arithmetic is in raster.h.
//
// Layout for speed: one tile at a time per thread, its pixels kept in structure-of-arrays blocks
// (ts*ts lanes), Gaussians in the outer loop and pixels in the inner loop. The inner loops are
// branch-free so GCC vectorizes them (-O3 -march=native -ffast-math; exp goes to libmvec).
// A tile stops as soon as every pixel has terminated. The backward walks each tile back to
// front from the last contributor saved by the forward, accumulating per-thread gradient
// buffers that are summed at the end (no atomics).
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#include "raster_launch.h"

namespace invrender {

namespace {

// Per-thread scratch for one tile: every array has n = ts*ts lanes.
template <typename T>
struct TileScratch {
    int n = 0;
    std::vector<T> px, py;   // pixel centres
    std::vector<T> trans;    // current transmittance
    std::vector<T> done;     // 1 when the pixel stopped (or lies outside the image)
    std::vector<T> lastf;    // last contributor count, as T so the loop stays one width
    std::vector<T> w;        // weight alpha*T of the current Gaussian, 0 if not contributing
    std::vector<T> acc;      // [C, n] composited features
    std::vector<T> acc_d;    // composited depth
    // backward only
    std::vector<T> t_final, inv1m, vis, dot, sdot, v_d, v_a;
    std::vector<T> v_f;      // [C, n] upstream feature gradient

    void resize(int n_, int C, bool backward) {
        n = n_;
        for (auto *v : {&px, &py, &trans, &done, &lastf, &w, &acc_d}) v->assign(n, T(0));
        acc.assign((size_t)C * n, T(0));
        if (backward) {
            for (auto *v : {&t_final, &inv1m, &vis, &dot, &sdot, &v_d, &v_a}) v->assign(n, T(0));
            v_f.assign((size_t)C * n, T(0));
        }
    }
};

// Pixel centres of tile (tx, ty); lanes outside the image get valid=false.
template <typename T>
void tile_pixels(const RasterParams &p, int tx, int ty, TileScratch<T> &s, std::vector<int> &pix) {
    const int ts = p.tile_size;
    pix.resize(s.n);
    for (int i = 0; i < ts; ++i) {
        for (int j = 0; j < ts; ++j) {
            const int l = i * ts + j, row = ty * ts + i, col = tx * ts + j;
            s.px[l] = T(col) + T(0.5);
            s.py[l] = T(row) + T(0.5);
            pix[l] = (row < p.height && col < p.width) ? row * p.width + col : -1;
        }
    }
}

// Lanes [l0, l1) of tile row block that Gaussian g can reach (rows of ts lanes each).
template <typename T>
bool lane_range(const RasterParams &p, int ty, T my, T ca, T cb, T cc, T op, int &l0, int &l1) {
    double half;
    if (!row_reach(double(ca), double(cb), double(cc), double(op), half)) return false;
    const int ts = p.tile_size;
    const double lo = double(my) - half - 0.5 - double(ty) * ts;  // first local row >= lo
    const double hi = double(my) + half - 0.5 - double(ty) * ts;  // last local row <= hi
    const int r0 = lo <= 0.0 ? 0 : (lo >= ts ? ts : int(ceil(lo)));
    const int r1 = hi < 0.0 ? 0 : (hi >= ts - 1 ? ts : int(floor(hi)) + 1);
    l0 = r0 * ts;
    l1 = r1 * ts;
    return l1 > l0;
}

template <typename T>
void fwd_tile(const RasterParams &p, int tile, const T *__restrict__ means2d,
              const T *__restrict__ conics, const T *__restrict__ opacities,
              const T *__restrict__ features, const T *__restrict__ depths,
              const int32_t *__restrict__ tile_offsets, const int32_t *__restrict__ flat_ids,
              T *out_feat, T *out_depth, T *out_alpha, int32_t *last, TileScratch<T> &s,
              std::vector<int> &pix) {
    const int C = p.channels, n = s.n;
    tile_pixels(p, tile % p.tiles_x, tile / p.tiles_x, s, pix);
    T *__restrict__ px = s.px.data(), *__restrict__ py = s.py.data();
    T *__restrict__ trans = s.trans.data(), *__restrict__ done = s.done.data();
    T *__restrict__ lastf = s.lastf.data(), *__restrict__ w = s.w.data();
    T *__restrict__ acc = s.acc.data(), *__restrict__ acc_d = s.acc_d.data();
    int n_done = 0;
    for (int l = 0; l < n; ++l) {
        trans[l] = T(1);
        done[l] = pix[l] < 0 ? T(1) : T(0);
        n_done += pix[l] < 0;
        lastf[l] = T(0);
        acc_d[l] = T(0);
    }
    std::fill(s.acc.begin(), s.acc.end(), T(0));

    const int start = tile_offsets[tile], end = tile_offsets[tile + 1];
    for (int k = start; k < end && n_done < n; ++k) {
        const int g = flat_ids[k];
        const T mx = means2d[2 * g], my = means2d[2 * g + 1];
        const T ca = conics[3 * g], cb = conics[3 * g + 1], cc = conics[3 * g + 2];
        const T op = opacities[g], kk = T(k - start + 1);
        int l0, l1;
        if (!lane_range(p, tile / p.tiles_x, my, ca, cb, cc, op, l0, l1)) continue;
        T any = T(0), stopped = T(0);
#pragma omp simd reduction(+ : any, stopped)
        for (int l = l0; l < l1; ++l) {
            T alpha, vis;
            const bool ok = pair_alpha(ca, cb, cc, op, px[l] - mx, py[l] - my, alpha, vis);
            const T t = trans[l];
            const T next_t = t * (T(1) - alpha);
            const bool valid = ok & (done[l] == T(0));
            const bool stop = valid & (next_t <= T(T_MIN));
            const bool incl = valid & (next_t > T(T_MIN));
            w[l] = incl ? alpha * t : T(0);
            trans[l] = incl ? next_t : t;
            lastf[l] = incl ? kk : lastf[l];
            done[l] = stop ? T(1) : done[l];
            any += incl ? T(1) : T(0);
            stopped += stop ? T(1) : T(0);
        }
        n_done += int(stopped);
        if (any == T(0)) continue;
        const T *__restrict__ f = features + (size_t)g * C;
        for (int c = 0; c < C; ++c) {
            const T fc = f[c];
            T *__restrict__ a = acc + (size_t)c * n;
#pragma omp simd
            for (int l = l0; l < l1; ++l) a[l] += fc * w[l];
        }
        const T d = depths[g];
#pragma omp simd
        for (int l = l0; l < l1; ++l) acc_d[l] += d * w[l];
    }

    for (int l = 0; l < n; ++l) {
        const int q = pix[l];
        if (q < 0) continue;
        for (int c = 0; c < C; ++c) out_feat[(size_t)q * C + c] = acc[(size_t)c * n + l];
        out_depth[q] = acc_d[l];
        out_alpha[q] = T(1) - trans[l];
        last[q] = int32_t(lastf[l]);
    }
}

// Per-thread gradient buffers: [N, 2] [N, 3] [N] [N, C] [N], one block per thread.
template <typename T>
struct GradBuf {
    T *m, *cn, *o, *f, *d;
};

template <typename T>
void bwd_tile(const RasterParams &p, int tile, const T *__restrict__ means2d,
              const T *__restrict__ conics, const T *__restrict__ opacities,
              const T *__restrict__ features, const T *__restrict__ depths,
              const int32_t *__restrict__ tile_offsets, const int32_t *__restrict__ flat_ids,
              const T *out_alpha, const int32_t *last, const T *v_out_feat,
              const T *v_out_depth, const T *v_out_alpha, GradBuf<T> gb, TileScratch<T> &s,
              std::vector<int> &pix) {
    const int C = p.channels, n = s.n;
    tile_pixels(p, tile % p.tiles_x, tile / p.tiles_x, s, pix);
    T *__restrict__ px = s.px.data(), *__restrict__ py = s.py.data();
    T *__restrict__ trans = s.trans.data(), *__restrict__ lastf = s.lastf.data();
    T *__restrict__ w = s.w.data(), *__restrict__ t_final = s.t_final.data();
    T *__restrict__ inv1m = s.inv1m.data(), *__restrict__ vis_b = s.vis.data();
    T *__restrict__ dot = s.dot.data(), *__restrict__ sdot = s.sdot.data();
    T *__restrict__ v_d = s.v_d.data(), *__restrict__ v_a = s.v_a.data();
    T *__restrict__ v_f = s.v_f.data();
    int max_last = 0;
    for (int l = 0; l < n; ++l) {
        const int q = pix[l];
        const bool in = q >= 0;
        const int lst = in ? last[q] : 0;
        max_last = std::max(max_last, lst);
        lastf[l] = T(lst);
        trans[l] = in ? T(1) - out_alpha[q] : T(1);
        t_final[l] = trans[l];
        sdot[l] = T(0);
        v_d[l] = in ? v_out_depth[q] : T(0);
        v_a[l] = in ? v_out_alpha[q] : T(0);
        for (int c = 0; c < C; ++c) v_f[(size_t)c * n + l] = in ? v_out_feat[(size_t)q * C + c] : T(0);
    }

    const int start = tile_offsets[tile];
    for (int k = start + max_last - 1; k >= start; --k) {
        const int g = flat_ids[k];
        const T mx = means2d[2 * g], my = means2d[2 * g + 1];
        const T ca = conics[3 * g], cb = conics[3 * g + 1], cc = conics[3 * g + 2];
        const T op = opacities[g], kk = T(k - start);
        int l0, l1;
        if (!lane_range(p, tile / p.tiles_x, my, ca, cb, cc, op, l0, l1)) continue;
        T any = T(0);
        // pass 1: which pixels this Gaussian reached, and its weight there
#pragma omp simd reduction(+ : any)
        for (int l = l0; l < l1; ++l) {
            T alpha, vis;
            const bool ok = pair_alpha(ca, cb, cc, op, px[l] - mx, py[l] - my, alpha, vis);
            const bool valid = ok & (kk < lastf[l]);
            const T inv = T(1) / (T(1) - alpha);
            // recover the transmittance in front of this Gaussian
            const T t = valid ? trans[l] * inv : trans[l];
            trans[l] = t;
            w[l] = valid ? alpha * t : T(0);
            inv1m[l] = valid ? inv : T(0);
            vis_b[l] = vis;
            any += valid ? T(1) : T(0);
        }
        if (any == T(0)) continue;
        // pass 2: per channel, v_features and the contraction v_out . f
        const T *__restrict__ f = features + (size_t)g * C;
        T *__restrict__ vfg = gb.f + (size_t)g * C;
        const T d = depths[g];
        T vdep = T(0);
#pragma omp simd reduction(+ : vdep)
        for (int l = l0; l < l1; ++l) {
            dot[l] = d * v_d[l];
            vdep += w[l] * v_d[l];
        }
        gb.d[g] += vdep;
        for (int c = 0; c < C; ++c) {
            const T fc = f[c];
            const T *__restrict__ vf = v_f + (size_t)c * n;
            T vfc = T(0);
#pragma omp simd reduction(+ : vfc)
            for (int l = l0; l < l1; ++l) {
                dot[l] += fc * vf[l];
                vfc += w[l] * vf[l];
            }
            vfg[c] += vfc;
        }
        // pass 3: d loss / d alpha, then through alpha to the 2D parameters
        T v_mx = 0, v_my = 0, v_ca = 0, v_cb = 0, v_cc = 0, v_op = 0;
#pragma omp simd reduction(+ : v_mx, v_my, v_ca, v_cb, v_cc, v_op)
        for (int l = l0; l < l1; ++l) {
            const T inv = inv1m[l];  // 0 where not contributing, which zeroes v_alpha
            const T t = trans[l];
            const T valid = inv != T(0) ? T(1) : T(0);
            const T v_alpha = valid * (t * dot[l]) - sdot[l] * inv + v_a[l] * t_final[l] * inv;
            sdot[l] += dot[l] * w[l];
            pair_alpha_backward(ca, cb, cc, op, px[l] - mx, py[l] - my, vis_b[l], v_alpha, v_mx,
                                v_my, v_ca, v_cb, v_cc, v_op);
        }
        gb.m[2 * g] += v_mx;
        gb.m[2 * g + 1] += v_my;
        gb.cn[3 * g] += v_ca;
        gb.cn[3 * g + 1] += v_cb;
        gb.cn[3 * g + 2] += v_cc;
        gb.o[g] += v_op;
    }
}

}  // namespace

template <typename T>
void bin_tiles_cpu(const RasterParams &p, const T *means2d, const int32_t *radii, const T *depths,
                   std::vector<int32_t> &tile_offsets, std::vector<int32_t> &flat_ids) {
    const int N = p.n_gaussians, n_tiles = p.tiles_x * p.tiles_y;
    std::vector<int32_t> order;
    order.reserve(N);
    for (int g = 0; g < N; ++g)
        if (radii[g] > 0) order.push_back(g);
    // stable: equal depths keep index order, exactly like torch.argsort(stable=True)
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t i, int32_t j) { return depths[i] < depths[j]; });
    tile_offsets.assign(n_tiles + 1, 0);
    std::vector<int> box(order.size() * 4);
    for (size_t i = 0; i < order.size(); ++i) {
        const int g = order[i];
        int *b = &box[4 * i];
        tile_range(double(means2d[2 * g]), double(means2d[2 * g + 1]), radii[g], p, b[0], b[1],
                   b[2], b[3]);
        for (int ty = b[2]; ty < b[3]; ++ty)
            for (int tx = b[0]; tx < b[1]; ++tx) ++tile_offsets[ty * p.tiles_x + tx + 1];
    }
    for (int t = 0; t < n_tiles; ++t) tile_offsets[t + 1] += tile_offsets[t];
    flat_ids.resize(tile_offsets[n_tiles]);
    std::vector<int32_t> cursor(tile_offsets.begin(), tile_offsets.end() - 1);
    // filling in depth order leaves every tile list sorted front to back
    for (size_t i = 0; i < order.size(); ++i) {
        const int *b = &box[4 * i];
        for (int ty = b[2]; ty < b[3]; ++ty)
            for (int tx = b[0]; tx < b[1]; ++tx) flat_ids[cursor[ty * p.tiles_x + tx]++] = order[i];
    }
}

template <typename T>
void raster_fwd_cpu(const RasterParams &p, const T *means2d, const T *conics, const T *opacities,
                    const T *features, const T *depths, const int32_t *tile_offsets,
                    const int32_t *flat_ids, T *out_feat, T *out_depth, T *out_alpha,
                    int32_t *last) {
    const int n_tiles = p.tiles_x * p.tiles_y;
#pragma omp parallel num_threads(p.num_threads)
    {
        TileScratch<T> s;
        s.resize(p.tile_size * p.tile_size, p.channels, false);
        std::vector<int> pix;
#pragma omp for schedule(dynamic, 1)
        for (int t = 0; t < n_tiles; ++t)
            fwd_tile(p, t, means2d, conics, opacities, features, depths, tile_offsets, flat_ids,
                     out_feat, out_depth, out_alpha, last, s, pix);
    }
}

template <typename T>
void raster_bwd_cpu(const RasterParams &p, const T *means2d, const T *conics, const T *opacities,
                    const T *features, const T *depths, const int32_t *tile_offsets,
                    const int32_t *flat_ids, const T *out_alpha, const int32_t *last,
                    const T *v_out_feat, const T *v_out_depth, const T *v_out_alpha,
                    T *v_means2d, T *v_conics, T *v_opacities, T *v_features, T *v_depths) {
    const int N = p.n_gaussians, C = p.channels, n_tiles = p.tiles_x * p.tiles_y;
    const int n_threads = std::max(1, std::min(p.num_threads, n_tiles));
    const size_t per = (size_t)N * (7 + C);  // 2 + 3 + 1 + C + 1 values per Gaussian
    // thread 0 writes straight into the outputs; the others get private blocks
    std::vector<T> extra((size_t)(n_threads - 1) * per, T(0));
    auto buf = [&](int th) {
        if (th == 0) return GradBuf<T>{v_means2d, v_conics, v_opacities, v_features, v_depths};
        T *b = extra.data() + (size_t)(th - 1) * per;
        return GradBuf<T>{b, b + 2 * (size_t)N, b + 5 * (size_t)N, b + 6 * (size_t)N,
                          b + (6 + (size_t)C) * N};
    };
    std::memset(v_means2d, 0, sizeof(T) * 2 * N);
    std::memset(v_conics, 0, sizeof(T) * 3 * N);
    std::memset(v_opacities, 0, sizeof(T) * N);
    std::memset(v_features, 0, sizeof(T) * (size_t)C * N);
    std::memset(v_depths, 0, sizeof(T) * N);
#pragma omp parallel num_threads(n_threads)
    {
        TileScratch<T> s;
        s.resize(p.tile_size * p.tile_size, p.channels, true);
        std::vector<int> pix;
        const GradBuf<T> gb = buf(omp_get_thread_num());
        // static round-robin: each tile always lands in the same thread's buffer, so the sums
        // (and a resumed training run) are bit-for-bit reproducible for a given thread count
#pragma omp for schedule(static, 1)
        for (int t = 0; t < n_tiles; ++t)
            bwd_tile(p, t, means2d, conics, opacities, features, depths, tile_offsets, flat_ids,
                     out_alpha, last, v_out_feat, v_out_depth, v_out_alpha, gb, s, pix);
    }
    if (n_threads > 1) {
        const GradBuf<T> out = buf(0);
        T *dst[5] = {out.m, out.cn, out.o, out.f, out.d};
        const size_t len[5] = {2 * (size_t)N, 3 * (size_t)N, (size_t)N, (size_t)C * N, (size_t)N};
#pragma omp parallel num_threads(n_threads)
        for (int th = 1; th < n_threads; ++th) {
            const GradBuf<T> b = buf(th);
            const T *src[5] = {b.m, b.cn, b.o, b.f, b.d};
            for (int a = 0; a < 5; ++a) {
#pragma omp for schedule(static)
                for (size_t i = 0; i < len[a]; ++i) dst[a][i] += src[a][i];
            }
        }
    }
}

#define INSTANTIATE(T)                                                                          \
    template void bin_tiles_cpu<T>(const RasterParams &, const T *, const int32_t *, const T *, \
                                   std::vector<int32_t> &, std::vector<int32_t> &);             \
    template void raster_fwd_cpu<T>(const RasterParams &, const T *, const T *, const T *,      \
                                    const T *, const T *, const int32_t *, const int32_t *,     \
                                    T *, T *, T *, int32_t *);                                  \
    template void raster_bwd_cpu<T>(const RasterParams &, const T *, const T *, const T *,      \
                                    const T *, const T *, const int32_t *, const int32_t *,     \
                                    const T *, const int32_t *, const T *, const T *,           \
                                    const T *, T *, T *, T *, T *, T *);
INSTANTIATE(float)
INSTANTIATE(double)

}  // namespace invrender
