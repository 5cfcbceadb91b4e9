// Every kernel of `src/kernels.cu`, run on the host through `shim.h` with the launch
// configurations `src/nvrtc.rs` uses, against a plain loop. Prints each failure (the first 20)
// and exits non-zero if there was one.
#include "shim.h"
#include "../../src/kernels.cu"

#include <algorithm>
#include <cstdio>
#include <random>

typedef unsigned short u16;
static int failures = 0;
#define CHECK(cond, ...)                                   \
    do {                                                   \
        if (!(cond)) {                                     \
            if (++failures <= 20) {                        \
                std::printf("line %d: ", __LINE__);        \
                std::printf(__VA_ARGS__);                  \
                std::printf("\n");                         \
            }                                              \
        }                                                  \
    } while (0)

// `nvrtc.rs`'s `config(n)`: 256 threads a block, enough blocks for `n`.
static Dim3 grid_for(size_t n) { return {(unsigned)std::max<size_t>(1, (n + 255) / 256), 1, 1}; }
static const Dim3 BLOCK = {256, 1, 1};

static float bits_f(u16 h) { return __uint_as_float((unsigned)h << 16); }

// The bf16 nearest to f, found by distance (ties to the even significand); 0xffff for NaN.
static u16 nearest_bf16(float f) {
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0xffff;
    u16 lo = u >> 16, hi = lo + 1;
    if ((u & 0xffffu) == 0) return lo;
    double below = bits_f(lo), above = bits_f(hi);
    if (std::isinf(above)) above = 2.0 * below - (double)bits_f(lo - 1);  // past the largest finite
    double d_lo = std::fabs((double)f - below), d_hi = std::fabs((double)f - above);
    if (d_lo != d_hi) return d_lo < d_hi ? lo : hi;
    return (lo & 1) ? hi : lo;
}

static void rounding() {
    std::mt19937 rng(1);
    for (unsigned top = 0; top < 65536; top++) {
        for (unsigned low : {0u, 1u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu, (unsigned)rng() & 0xffffu}) {
            unsigned u = top << 16 | low;
            float f = __uint_as_float(u);
            u16 got = f_bf(f), want = nearest_bf16(f);
            if (want == 0xffff) {
                CHECK((got & 0x7fffu) > 0x7f80u && (got >> 15) == (u >> 31), "NaN %08x gave %04x", u, got);
            } else {
                CHECK(got == want, "%08x (%g) rounded to %04x, nearest is %04x", u, f, got, want);
                CHECK(bits_f(got) == bits_f(want), "widening %04x", got);
            }
        }
    }
}

static void max_pool() {
    std::mt19937 rng(2);
    std::uniform_int_distribution<int> few(-3, 3);  // many ties
    for (unsigned planes : {1u, 3u, 70u})
        for (unsigned h : {2u, 6u})
            for (unsigned w : {2u, 10u}) {
                size_t n = (size_t)planes * h * w, m = n / 4;
                std::vector<float> x(n), g(m), y(m, -9.f), dx(n, -9.f);
                for (auto& v : x) v = few(rng) * 0.5f;
                for (auto& v : g) v = (float)(rng() % 100) / 8.f + 1.f;
                std::vector<u16> xb(n), gb(m), yb(m, 1), dxb(n, 1);
                for (size_t i = 0; i < n; i++) xb[i] = f_bf(x[i]);
                for (size_t i = 0; i < m; i++) gb[i] = f_bf(g[i]);
                launch(grid_for(m), BLOCK, false, [&] { max_pool2_fwd_f32(x.data(), y.data(), planes, h, w); });
                launch(grid_for(m), BLOCK, false, [&] { max_pool2_bwd_f32(x.data(), g.data(), dx.data(), planes, h, w); });
                launch(grid_for(m), BLOCK, false, [&] { max_pool2_fwd_bf16(xb.data(), yb.data(), planes, h, w); });
                launch(grid_for(m), BLOCK, false, [&] { max_pool2_bwd_bf16(xb.data(), gb.data(), dxb.data(), planes, h, w); });
                for (unsigned p = 0; p < planes; p++)
                    for (unsigned oy = 0; oy < h / 2; oy++)
                        for (unsigned ox = 0; ox < w / 2; ox++) {
                            size_t o = ((size_t)p * (h / 2) + oy) * (w / 2) + ox;
                            size_t at0 = ((size_t)p * h + 2 * oy) * w + 2 * ox;
                            size_t at[4] = {at0, at0 + 1, at0 + w, at0 + w + 1};
                            int first = 0;
                            for (int k = 1; k < 4; k++)
                                if (x[at[k]] > x[at[first]]) first = k;
                            CHECK(y[o] == x[at[first]], "pool f32 window %zu", o);
                            CHECK(yb[o] == xb[at[first]], "pool bf16 window %zu", o);
                            for (int k = 0; k < 4; k++) {
                                CHECK(dx[at[k]] == (k == first ? g[o] : 0.f), "pool grad f32 window %zu, %d", o, k);
                                CHECK(dxb[at[k]] == (k == first ? gb[o] : 0), "pool grad bf16 window %zu, %d", o, k);
                            }
                        }
            }
}

static void argmax() {
    std::mt19937 rng(3);
    std::uniform_int_distribution<int> few(-2, 2);
    for (unsigned n : {1u, 2u})
        for (unsigned c : {1u, 19u})
            for (unsigned hw : {1u, 300u}) {
                std::vector<float> x((size_t)n * c * hw);
                for (auto& v : x) v = few(rng);
                unsigned pixels = n * hw;
                std::vector<unsigned> ids(pixels, 999);
                launch(grid_for(pixels), BLOCK, false, [&] { argmax_channels(x.data(), ids.data(), c, hw, pixels); });
                for (unsigned i = 0; i < n; i++)
                    for (unsigned j = 0; j < hw; j++) {
                        unsigned first = 0;
                        for (unsigned k = 1; k < c; k++)
                            if (x[((size_t)i * c + k) * hw + j] > x[((size_t)i * c + first) * hw + j]) first = k;
                        CHECK(ids[i * hw + j] == first, "argmax image %u pixel %u", i, j);
                    }
            }
}

static float uniform(std::mt19937& rng) { return (float)(rng() % 2001) / 1000.f - 1.f; }

static void bias_relu() {
    std::mt19937 rng(4);
    for (unsigned n : {1u, 3u})
        for (unsigned c : {1u, 33u})
            for (unsigned hw : {1u, 777u}) {
                size_t total = (size_t)n * c * hw;
                std::vector<float> y(total), b(c);
                for (auto& v : y) v = uniform(rng);
                for (auto& v : b) v = uniform(rng);
                std::vector<u16> yb(total), bb(c);
                for (size_t i = 0; i < total; i++) yb[i] = f_bf(y[i]);
                for (unsigned i = 0; i < c; i++) bb[i] = f_bf(b[i]);
                std::vector<float> y_in = y;
                std::vector<u16> yb_in = yb;
                unsigned t = total;
                launch(grid_for(total), BLOCK, false, [&] { bias_relu_f32(y.data(), b.data(), c, hw, t); });
                launch(grid_for(total), BLOCK, false, [&] { bias_relu_bf16(yb.data(), bb.data(), c, hw, t); });
                for (size_t i = 0; i < total; i++) {
                    unsigned ch = (i / hw) % c;
                    float v = y_in[i] + b[ch], vb = bits_f(yb_in[i]) + bits_f(bb[ch]);
                    CHECK(y[i] == std::max(v, 0.f), "bias+relu f32 at %zu", i);
                    CHECK(yb[i] == f_bf(std::max(vb, 0.f)), "bias+relu bf16 at %zu", i);
                }
            }
}

static void relu_grad() {
    std::mt19937 rng(5);
    // Chunks of CHUNK elements per channel: one chunk, a partial one, an exact fit, and chunks
    // that cross from one image into the next.
    for (unsigned n : {1u, 2u})
        for (unsigned c : {1u, 3u})
            for (unsigned hw : {5u, 4096u, 9000u}) {
                size_t total = (size_t)n * c * hw;
                std::vector<float> dr(total), r(total), g(total, -9.f);
                for (auto& v : dr) v = uniform(rng);
                for (auto& v : r) v = rng() % 3 == 0 ? 0.f : (float)(rng() % 100) / 10.f;
                std::vector<u16> drb(total), rb(total), gb(total, 1);
                for (size_t i = 0; i < total; i++) drb[i] = f_bf(dr[i]), rb[i] = f_bf(r[i]);
                unsigned chunks = std::max<size_t>(1, ((size_t)n * hw + CHUNK - 1) / CHUNK);
                std::vector<float> part(c * chunks, -9.f), db(c, -9.f), partb(c * chunks, -9.f), dbb(c, -9.f);
                launch({chunks, c, 1}, BLOCK, true, [&] { relu_grad_part_f32(dr.data(), r.data(), g.data(), part.data(), n, c, hw); });
                launch(grid_for(c), BLOCK, false, [&] { sum_parts(part.data(), db.data(), chunks, c); });
                launch({chunks, c, 1}, BLOCK, true, [&] { relu_grad_part_bf16(drb.data(), rb.data(), gb.data(), partb.data(), n, c, hw); });
                launch(grid_for(c), BLOCK, false, [&] { sum_parts(partb.data(), dbb.data(), chunks, c); });
                for (unsigned ch = 0; ch < c; ch++) {
                    double sum = 0, sumb = 0;
                    for (unsigned i = 0; i < n; i++)
                        for (unsigned j = 0; j < hw; j++) {
                            size_t at = ((size_t)i * c + ch) * hw + j;
                            float v = r[at] > 0 ? dr[at] : 0.f;
                            u16 vb = bits_f(rb[at]) > 0 ? drb[at] : 0;
                            CHECK(g[at] == v, "relu grad f32 at %zu", at);
                            CHECK(gb[at] == vb, "relu grad bf16 at %zu", at);
                            sum += v;
                            sumb += bits_f(vb);
                        }
                    CHECK(std::fabs(db[ch] - sum) <= 1e-4 * (1 + std::fabs(sum)), "bias grad f32 %g, want %g", db[ch], sum);
                    CHECK(std::fabs(dbb[ch] - sumb) <= 1e-4 * (1 + std::fabs(sumb)), "bias grad bf16 %g, want %g", dbb[ch], sumb);
                }
            }
}

static void sgd() {
    const unsigned n = 1000;
    const float m = 0.9f, wd = 5e-4f, lr = 0.01f;
    std::vector<float> p(n), buf(n), g(n);
    for (unsigned i = 0; i < n; i++) p[i] = i * 0.01f, buf[i] = 0.5f - i * 1e-3f, g[i] = 1.f - i * 0.002f;
    std::vector<float> p_in = p, buf_in = buf;
    launch(grid_for(n), BLOCK, false, [&] { sgd_step(p.data(), buf.data(), g.data(), m, wd, lr, n); });
    for (unsigned i = 0; i < n; i++) {
        float b = buf_in[i] * m + (g[i] + p_in[i] * wd);
        CHECK(buf[i] == b, "sgd momentum at %u", i);
        CHECK(p[i] == p_in[i] - b * lr, "sgd parameter at %u", i);
    }
}

int main() {
    rounding();
    max_pool();
    argmax();
    bias_relu();
    relu_grad();
    sgd();
    std::printf("%d failures\n", failures);
    return failures != 0;
}
