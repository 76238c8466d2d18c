// Mesh visibility ("which triangle is nearest at each pixel centre"): the arithmetic shared by
// the CPU (OpenMP, mesh_raster_cpu.cpp) and CUDA (mesh_raster_cuda.cu) drivers and mirrored
// line for line by the torch twin (invrender/mesh/raster.py: mesh_visibility_torch).
//
// Homogeneous rasterization in camera space (OpenCV axes, z forward). Pixel (i, j) looks along
// the ray d = (ray_x[j], ray_y[i], 1), ray_x[j] = (j + 0.5 - cx) / fx, ray_y[i] = (i + 0.5 - cy) / fy.
// For a triangle v0 v1 v2 with edge normals n_k = v_{k+1} x v_{k+2} and D = v0 . n_0:
//   e_k(d) = n_k . d,   b_k = e_k / (e_0 + e_1 + e_2),   z = D / (e_0 + e_1 + e_2)
// (b_k are the perspective-correct barycentrics of the point where the ray meets the plane and
// z its camera depth). The ray hits the triangle in front of the camera iff every s e_k >= 0
// with s = sign(D); it counts iff also z >= near. No projection of vertices is involved, so a
// triangle crossing the camera plane needs no clipping: the per-pixel depth test does it.
//
// Fill rule (ties, e_k == 0 exactly): a pixel on an edge belongs to the triangle for which
// (s n_k.x > 0) or (s n_k.x == 0 and s n_k.y > 0), the classic top-left rule. It is the sign the
// edge function would take if the ray were nudged by (+eps, +eps^2) in (x, y), one nudge shared
// by every triangle, so every pixel of a closed surface or a tiling is covered exactly once.
// That holds bit for bit only if two triangles sharing an edge compute exactly opposite edge
// functions. Rounding is symmetric under negation, so n_k is computed from the edge's two
// endpoints in a canonical (lexicographic) order and negated afterwards: both triangles then
// run the same operations on the same operands whatever their winding or vertex indices.
//
// Depth test: the nearest z wins, ties to the lower triangle id, through one 64-bit key
// (float32 bits of z) << 32 | id, so the CPU min, the CUDA atomicMin and torch's amin agree.
#pragma once
#include <math.h>
#include <stdint.h>

#ifndef HOST_DEVICE
#ifdef __CUDACC__
#define HOST_DEVICE __host__ __device__ __forceinline__
#else
#define HOST_DEVICE inline __attribute__((always_inline))
#endif
#endif

namespace invrender {

struct MeshRasterParams {
    int n_vertices;   // V
    int n_faces;      // F
    int width;        // W
    int height;       // H
    double fx, fy;    // focal lengths in pixels (only the bounding boxes use K; the
    double cx, cy;    // coverage test uses the ray tables)
    double near_plane;
    int tile_size;    // CPU: pixels per tile side
    int tiles_x;      // ceil(W / tile_size)
    int tiles_y;      // ceil(H / tile_size)
    int num_threads;  // CPU only: OpenMP threads
};

// Per-triangle setup: oriented edge normals (s n_k), |D| and the pixel bounding box
// [x0, x1) x [y0, y1) (empty when the triangle cannot be seen).
struct TriSetup {
    double n[9];  // [3, 3] row k = s n_k
    double absd;  // |D|
    int x0, x1, y0, y1;
};

constexpr uint64_t MESH_EMPTY_KEY = ~uint64_t(0);

// Uncontracted IEEE double arithmetic. The exact-negation argument above (and bit-identical
// results across CPU, CUDA and torch) needs every product and sum rounded on its own: a fused
// multiply-add chosen differently in two inlined copies of the same formula breaks it. nvcc
// contracts a * b + c by default, hence the intrinsics; the CPU driver compiles this header
// with fp-contract off and without fast-math (see mesh_raster_cpu.cpp); torch never fuses.
HOST_DEVICE double mul_rn(double a, double b) {
#ifdef __CUDA_ARCH__
    return __dmul_rn(a, b);
#else
    return a * b;
#endif
}
HOST_DEVICE double add_rn(double a, double b) {
#ifdef __CUDA_ARCH__
    return __dadd_rn(a, b);
#else
    return a + b;
#endif
}

// a < b in lexicographic (x, y, z) order
HOST_DEVICE bool lex_less(const double *a, const double *b) {
    if (a[0] != b[0]) return a[0] < b[0];
    if (a[1] != b[1]) return a[1] < b[1];
    return a[2] < b[2];
}

// n = a x b with the operands in canonical order (see the fill rule above).
HOST_DEVICE void canonical_cross(const double *a, const double *b, double *n) {
    const bool swap = lex_less(b, a);
    const double *p = swap ? b : a, *q = swap ? a : b;
    const double c0 = add_rn(mul_rn(p[1], q[2]), -mul_rn(p[2], q[1]));
    const double c1 = add_rn(mul_rn(p[2], q[0]), -mul_rn(p[0], q[2]));
    const double c2 = add_rn(mul_rn(p[0], q[1]), -mul_rn(p[1], q[0]));
    n[0] = swap ? -c0 : c0;
    n[1] = swap ? -c1 : c1;
    n[2] = swap ? -c2 : c2;
}

// Inside one (oriented) edge, with the top-left tie rule.
HOST_DEVICE bool edge_inside(double e, double nx, double ny) {
    return e > 0.0 || (e == 0.0 && (nx > 0.0 || (nx == 0.0 && ny > 0.0)));
}

// Clamp a pixel-space coordinate to [lo, hi] in floating point before it becomes an int
// (vertices near the camera plane project arbitrarily far; NaN goes to lo).
HOST_DEVICE int clamp_to_int(double x, int lo, int hi) {
    return x > double(lo) ? (x < double(hi) ? int(x) : hi) : lo;
}

// Camera-space vertices of triangle f -> setup. The bounding box is that of the part of the
// triangle with z >= near (clipped against the near plane, up to 4 vertices), projected,
// widened by one pixel so rounding in the projection can never cut a covered pixel: the exact
// per-pixel test decides the rest.
template <typename T>
HOST_DEVICE void tri_setup(const MeshRasterParams &p, const T *verts, const int32_t *faces, int f,
                           TriSetup &s) {
    double v[3][3];
    s.x0 = s.x1 = s.y0 = s.y1 = 0;
    for (int k = 0; k < 3; ++k) {
        const int vi = faces[3 * f + k];
        if (vi < 0 || vi >= p.n_vertices) return;  // bad index: the triangle draws nothing
        for (int c = 0; c < 3; ++c) v[k][c] = double(verts[3 * vi + c]);
    }
    for (int k = 0; k < 3; ++k) canonical_cross(v[(k + 1) % 3], v[(k + 2) % 3], s.n + 3 * k);
    const double d =
        add_rn(add_rn(mul_rn(v[0][0], s.n[0]), mul_rn(v[0][1], s.n[1])), mul_rn(v[0][2], s.n[2]));
    // D == 0: the plane passes through the camera centre, the triangle is seen edge-on
    if (!(d != 0.0)) return;
    if (d < 0.0)
        for (int k = 0; k < 9; ++k) s.n[k] = -s.n[k];
    s.absd = d < 0.0 ? -d : d;

    // clip against z >= near (Sutherland-Hodgman, one plane), projecting as we go
    const double nr = p.near_plane;
    double xmin = 1e300, xmax = -1e300, ymin = 1e300, ymax = -1e300;
    int kept = 0;
    for (int k = 0; k < 3; ++k) {
        const double *a = v[k], *b = v[(k + 1) % 3];
        double pts[2][3];
        int m = 0;
        const bool ain = a[2] >= nr, bin = b[2] >= nr;
        if (ain) {
            pts[m][0] = a[0], pts[m][1] = a[1], pts[m][2] = a[2];
            ++m;
        }
        if (ain != bin) {  // the edge crosses the near plane
            const double t = (nr - a[2]) / (b[2] - a[2]);
            pts[m][0] = a[0] + t * (b[0] - a[0]);
            pts[m][1] = a[1] + t * (b[1] - a[1]);
            pts[m][2] = nr;
            ++m;
        }
        for (int i = 0; i < m; ++i) {
            const double px = p.fx * pts[i][0] / pts[i][2] + p.cx;
            const double py = p.fy * pts[i][1] / pts[i][2] + p.cy;
            xmin = px < xmin ? px : xmin;
            xmax = px > xmax ? px : xmax;
            ymin = py < ymin ? py : ymin;
            ymax = py > ymax ? py : ymax;
            ++kept;
        }
    }
    if (kept == 0) return;  // wholly behind the near plane
    // pixel j is inside when its centre j + 0.5 is in [xmin, xmax]; one pixel of margin
    s.x0 = clamp_to_int(ceil(xmin - 0.5) - 1.0, 0, p.width);
    s.x1 = clamp_to_int(floor(xmax - 0.5) + 2.0, 0, p.width);
    s.y0 = clamp_to_int(ceil(ymin - 0.5) - 1.0, 0, p.height);
    s.y1 = clamp_to_int(floor(ymax - 0.5) + 2.0, 0, p.height);
}

// Depth key of triangle f at the ray (rx, ry) given the row terms r_k = n_k.y ry + n_k.z, or
// MESH_EMPTY_KEY when the triangle does not cover it (or covers it closer than near).
HOST_DEVICE uint64_t pixel_key(const TriSetup &s, int f, double rx, const double *r,
                               double near_plane) {
    const double e0 = add_rn(mul_rn(s.n[0], rx), r[0]);
    const double e1 = add_rn(mul_rn(s.n[3], rx), r[1]);
    const double e2 = add_rn(mul_rn(s.n[6], rx), r[2]);
    const bool in = edge_inside(e0, s.n[0], s.n[1]) && edge_inside(e1, s.n[3], s.n[4]) &&
                    edge_inside(e2, s.n[6], s.n[7]);
    if (!in) return MESH_EMPTY_KEY;
    const double sum = add_rn(add_rn(e0, e1), e2);
    if (!(sum > 0.0)) return MESH_EMPTY_KEY;
    const double z = s.absd / sum;
    if (!(z >= near_plane)) return MESH_EMPTY_KEY;
    const float zf = float(z);
    // positive floats order like their bit patterns
    union {
        float f;
        uint32_t u;
    } bits;
    bits.f = zf;
    return (uint64_t(bits.u) << 32) | uint64_t(uint32_t(f));
}

// Row terms r_k = n_k.y ry + n_k.z of one triangle for one pixel row. The association
// e_k = n_k.x rx + (n_k.y ry + n_k.z) is part of the contract with the torch twin.
HOST_DEVICE void row_terms(const TriSetup &s, double ry, double *r) {
    r[0] = add_rn(mul_rn(s.n[1], ry), s.n[2]);
    r[1] = add_rn(mul_rn(s.n[4], ry), s.n[5]);
    r[2] = add_rn(mul_rn(s.n[7], ry), s.n[8]);
}

// Key -> (triangle id or -1, depth or 0).
HOST_DEVICE void resolve_key(uint64_t key, int32_t &tri, float &depth) {
    if (key == MESH_EMPTY_KEY) {
        tri = -1;
        depth = 0.0f;
        return;
    }
    union {
        float f;
        uint32_t u;
    } bits;
    bits.u = uint32_t(key >> 32);
    tri = int32_t(uint32_t(key & 0xffffffffu));
    depth = bits.f;
}

}  // namespace invrender
