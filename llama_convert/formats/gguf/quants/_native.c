/* Compiled twins of the numpy quantizers in this package: the same bytes, block by block, faster.
 *
 * Each kernel follows its numpy module (kquants_min.py, kquants_sym.py, legacy.py, iq4_nl.py), whose docstrings
 * give ggml-quants.c's float32 operation order; here every loop runs element by element in that order, and the
 * costly searches run on several sub-blocks at once (_native_lanes.h), each lane in the same order. Exactness
 * needs float32 arithmetic as written: build without FMA contraction (-ffp-contract=off) and without fast-math;
 * the preprocessor check below refuses targets that evaluate floats in extended precision (x87), so the optional
 * build fails there and the numpy kernels are used. fp32 -> fp16 is done with integer operations (round to
 * nearest even); float -> integer casts follow x86-64 (out of range and NaN give INT32_MIN) on every target.
 *
 * quantize(type, src, dst) -> bool: src holds whole blocks of float32 (C-contiguous), dst their bytes; returns
 * False, writing nothing, if a value is non-finite or of magnitude 2**40 or more. The GIL is released
 * while quantizing.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD != 0
#error "float arithmetic must be evaluated in float32 (use SSE2, not x87)"
#endif
#ifdef __FAST_MATH__
#error "must not be compiled with -ffast-math"
#endif
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

#define QK_K 256
#define GROUP_MAX_EPS 1e-15f
#define LIMIT 1099511627776.0f /* 2**40, common.LIMIT */

/* ----- building blocks ----- */

static inline int32_t nearest_int(float f) { /* ggml's bit trick, also for |f| >= 2**22, inf and NaN */
    float v = f + 12582912.f;
    int32_t i;
    memcpy(&i, &v, sizeof i);
    return (i & 0x007fffff) - 0x00400000;
}

static inline int32_t clamp(int32_t v, int32_t lo, int32_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

static inline int32_t trunc_x86(float v) { /* cvttss2si: INT32_MIN for NaN and out of range */
    return (v >= -2147483648.f && v < 2147483648.f) ? (int32_t)v : INT32_MIN;
}

static uint16_t fp16_bits(float f) { /* GGML_FP32_TO_FP16: round to nearest, ties to even */
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint32_t sign = (x >> 16) & 0x8000u, a = x & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);     /* NaN */
    if (a >= 0x47800000u) return (uint16_t)(sign | 0x7c00u);    /* >= 65536: infinity */
    if (a >= 0x38800000u) {                                     /* a normal half (carry may reach inf) */
        uint32_t h = (a >> 13) - (112u << 10), rest = a & 0x1fffu;
        h += rest > 0x1000u || (rest == 0x1000u && (h & 1u));
        return (uint16_t)(sign | h);
    }
    uint32_t e = a >> 23;                                       /* a subnormal half or zero */
    if (e < 102) return (uint16_t)sign;                         /* below 2**-25: rounds to zero */
    uint32_t m = (a & 0x7fffffu) | 0x800000u, shift = 126 - e;  /* value = m * 2**-24 / 2**shift */
    uint32_t h = m >> shift, rest = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    h += rest > half || (rest == half && (h & 1u));
    return (uint16_t)(sign | h);
}

static float fp16_value(uint16_t h) { /* GGML_FP16_TO_FP32 */
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, x;
    if (e == 0) {
        float v = (float)m * 5.9604644775390625e-8f; /* m * 2**-24, exact */
        return sign ? -v : v;
    }
    x = sign | (e == 31 ? 0x7f800000u | (m << 13) : ((e + 112u) << 23) | (m << 13));
    float f;
    memcpy(&f, &x, sizeof f);
    return f;
}

static inline void put16(uint8_t *y, uint16_t v) { y[0] = (uint8_t)(v & 0xff); y[1] = (uint8_t)(v >> 8); }

/* the first value of largest magnitude (amax from 0, so an all-zero group gives +0.0); returns amax */
static inline float abs_max(const float *x, int n, float *max) {
    float amax = 0, m = 0;
    for (int i = 0; i < n; ++i) {
        float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; m = x[i]; }
    }
    *max = m;
    return amax;
}

/* ----- several sub-blocks at once: _native_lanes.h, 4 lanes (SSE2, NEON), 8 with AVX2 where the CPU has it ----- */
#if (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 9)) && !defined(QUANTS_SCALAR)
#define VECTOR 1
#define LANES 4
#define NAME(x) x##_4
#include "_native_lanes.h"
#undef NAME
#undef LANES
#if defined(__x86_64__) && !defined(QUANTS_NO_WIDE)
#define WIDE 1
static int wide; /* AVX2 present: set at import */
#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx2"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2") /* not "fma": no fused multiply-add */
#endif
#define LANES 8
#define NAME(x) x##_8
#include "_native_lanes.h"
#undef NAME
#undef LANES
#ifdef __clang__
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
#endif

/* ----- K-quants with a min: make_qkx2_quants, Q2_K, Q4_K, Q5_K ----- */

#ifndef VECTOR
static float make_qkx2(int n, int nmax, const float *x, const float *w, uint8_t *L, float *the_min, float rmin,
                       float rdelta, int nstep, int use_mad) {
    uint8_t aux[32];
    float min = x[0], max = x[0], sum_w = w[0], sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        memset(L, 0, (size_t)n);
        *the_min = -min;
        return 0.f;
    }
    float iscale = (float)nmax / (max - min), scale = 1 / iscale, best = 0;
    for (int i = 0; i < n; ++i) {
        L[i] = (uint8_t)clamp(nearest_int(iscale * (x[i] - min)), 0, nmax);
        float diff = scale * (float)L[i] + min - x[i];
        best += w[i] * (use_mad ? fabsf(diff) : diff * diff);
    }
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta * (float)is + (float)nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            int32_t l = clamp(nearest_int(iscale * (x[i] - min)), 0, nmax);
            aux[i] = (uint8_t)l;
            float fl = (float)l;
            sum_l += w[i] * fl;
            sum_l2 += w[i] * fl * fl;
            sum_xl += w[i] * fl * x[i];
        }
        float det = sum_w * sum_l2 - sum_l * sum_l;
        if (!(det > 0)) continue;
        float this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
        float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
        if (this_min > 0) {
            this_min = 0;
            this_scale = sum_xl / sum_l2;
        }
        float error = 0;
        for (int i = 0; i < n; ++i) {
            float diff = this_scale * (float)aux[i] + this_min - x[i];
            error += w[i] * (use_mad ? fabsf(diff) : diff * diff);
        }
        if (error < best) {
            memcpy(L, aux, (size_t)n);
            best = error;
            scale = this_scale;
            min = this_min;
        }
    }
    *the_min = -min;
    return scale;
}
#endif

/* make_qkx2 of each of n_sub sub-blocks of n values of x (weights w, same layout): levels, scales, mins */
static void solve_qkx2(const float *x, const float *w, int n, int n_sub, int nmax, float rmin, int nstep,
                       int use_mad, uint8_t *L, float *scales, float *mins) {
#ifdef VECTOR
#ifdef WIDE
    if (wide) {
        qkx2_lanes_8(x, w, n, n_sub, nmax, rmin, nstep, use_mad, L, scales, mins);
        return;
    }
#endif
    qkx2_lanes_4(x, w, n, n_sub, nmax, rmin, nstep, use_mad, L, scales, mins);
#else
    for (int j = 0; j < n_sub; ++j)
        scales[j] = make_qkx2(n, nmax, x + n * j, w + n * j, L + n * j, &mins[j], rmin, 0.1f, nstep, use_mad);
#endif
}

static void q2_k(const float *x, uint8_t *y) { /* scales[16], qs[64], d, dmin: 84 bytes */
    uint8_t L[QK_K], *sc = y;
    float w[QK_K], scales[16], mins[16], max_scale = 0, max_min = 0;
    for (int i = 0; i < QK_K; ++i) w[i] = fabsf(x[i]);
    solve_qkx2(x, w, 16, 16, 3, -0.5f, 15, 1, L, scales, mins);
    for (int j = 0; j < 16; ++j) {
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    uint16_t d_bits = 0, dmin_bits = 0;
    memset(sc, 0, 16);
    if (max_scale > 0) {
        float iscale = 15.f / max_scale;
        for (int j = 0; j < 16; ++j) sc[j] = (uint8_t)nearest_int(iscale * scales[j]);
        d_bits = fp16_bits(max_scale / 15.f);
    }
    if (max_min > 0) {
        float iscale = 15.f / max_min;
        for (int j = 0; j < 16; ++j) sc[j] = (uint8_t)(sc[j] | (nearest_int(iscale * mins[j]) << 4));
        dmin_bits = fp16_bits(max_min / 15.f);
    }
    for (int j = 0; j < 16; ++j) {
        float d = fp16_value(d_bits) * (float)(sc[j] & 0xf);
        if (!d) continue;
        float dm = fp16_value(dmin_bits) * (float)(sc[j] >> 4);
        for (int i = 0; i < 16; ++i) L[16 * j + i] = (uint8_t)clamp(nearest_int((x[16 * j + i] + dm) / d), 0, 3);
    }
    for (int j = 0; j < QK_K; j += 128)
        for (int l = 0; l < 32; ++l)
            y[16 + j / 4 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
    put16(y + 80, d_bits);
    put16(y + 82, dmin_bits);
}

/* Q4_K and Q5_K: 8 sub-blocks of 32, levels into L; writes d, dmin and the 12 scale bytes at y */
static void k4_levels(const float *x, uint8_t *y, uint8_t *L, int nmax, float rmin, int nstep) {
    float w[QK_K], scales[8], mins[8], max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; ++j) {
        const float *xs = x + 32 * j;
        float sum_x2 = 0;
        for (int l = 0; l < 32; ++l) sum_x2 += xs[l] * xs[l];
        float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; ++l) w[32 * j + l] = av_x + fabsf(xs[l]);
    }
    solve_qkx2(x, w, 32, 8, nmax, rmin, nstep, 0, L, scales, mins);
    for (int j = 0; j < 8; ++j) {
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f, inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    uint8_t ls[8], lm[8], *sc = y + 4;
    for (int j = 0; j < 8; ++j) {
        ls[j] = (uint8_t)nearest_int(inv_scale * scales[j]);
        lm[j] = (uint8_t)nearest_int(inv_min * mins[j]);
        if (ls[j] > 63) ls[j] = 63;
        if (lm[j] > 63) lm[j] = 63;
    }
    for (int j = 0; j < 4; ++j) {
        sc[j] = (uint8_t)(ls[j] | ((ls[j + 4] >> 4) << 6));
        sc[j + 4] = (uint8_t)(lm[j] | ((lm[j + 4] >> 4) << 6));
        sc[j + 8] = (uint8_t)((ls[j + 4] & 0xf) | ((lm[j + 4] & 0xf) << 4));
    }
    uint16_t d_bits = fp16_bits(max_scale / 63.f), dmin_bits = fp16_bits(max_min / 63.f);
    put16(y, d_bits);
    put16(y + 2, dmin_bits);
    for (int j = 0; j < 8; ++j) {
        float d = fp16_value(d_bits) * (float)ls[j];
        if (!d) continue;
        float dm = fp16_value(dmin_bits) * (float)lm[j];
        for (int i = 0; i < 32; ++i) L[32 * j + i] = (uint8_t)clamp(nearest_int((x[32 * j + i] + dm) / d), 0, nmax);
    }
}

static void q4_k(const float *x, uint8_t *y) { /* d, dmin, scales[12], qs[128]: 144 bytes */
    uint8_t L[QK_K], *q = y + 16;
    k4_levels(x, y, L, 15, -1.f, 20);
    for (int j = 0; j < QK_K; j += 64, q += 32)
        for (int l = 0; l < 32; ++l) q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
}

static void q5_k(const float *x, uint8_t *y) { /* d, dmin, scales[12], qh[32], qs[128]: 176 bytes */
    uint8_t L[QK_K], *qh = y + 16, *q = y + 48;
    k4_levels(x, y, L, 31, -0.5f, 15);
    memset(qh, 0, 32);
    for (int j = 0, bit = 0; j < QK_K; j += 64, bit += 2, q += 32)
        for (int l = 0; l < 32; ++l) {
            uint8_t lo = L[j + l], hi = L[j + l + 32];
            qh[l] = (uint8_t)(qh[l] | ((lo >> 4) << bit) | ((hi >> 4) << (bit + 1)));
            q[l] = (uint8_t)((lo & 0xf) | ((hi & 0xf) << 4));
        }
}

/* ----- symmetric K-quants: make_qx_quants (Q6_K), make_q3_quants (Q3_K) ----- */

#ifndef VECTOR
static float make_qx(const float *x, int nmax, int8_t *L) { /* n = 16, rmse_type 1, no weights */
    float max, amax = abs_max(x, 16, &max);
    if (amax < GROUP_MAX_EPS) {
        memset(L, 0, 16);
        return 0.f;
    }
    float iscale = (float)(-nmax) / max, sumlx = 0, suml2 = 0;
    for (int i = 0; i < 16; ++i) {
        int32_t l = clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1);
        L[i] = (int8_t)(l + nmax);
        float w = x[i] * x[i], fl = (float)l;
        sumlx += w * x[i] * fl;
        suml2 += w * fl * fl;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f, best = scale * sumlx;
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        iscale = -((float)nmax + 0.1f * (float)is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < 16; ++i) {
            float w = x[i] * x[i], fl = (float)clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1);
            sumlx += w * x[i] * fl;
            suml2 += w * fl * fl;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < 16; ++i) L[i] = (int8_t)(nmax + clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1));
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

#endif

/* make_qx (n = 16, rmse_type 1) of the 16 sub-blocks of a super-block: levels and scales */
static void solve_qx(const float *x, int nmax, int8_t *L, float *scales) {
#ifdef VECTOR
#ifdef WIDE
    if (wide) {
        qx_lanes_8(x, nmax, L, scales);
        return;
    }
#endif
    qx_lanes_4(x, nmax, L, scales);
#else
    for (int j = 0; j < 16; ++j) scales[j] = make_qx(x + 16 * j, nmax, L + 16 * j);
#endif
}

static void q6_k(const float *x, uint8_t *y) { /* ql[128], qh[64], scales[16] (int8), d: 210 bytes */
    int8_t L[QK_K];
    float scales[16], max_scale = 0, max_abs = 0;
    solve_qx(x, 32, L, scales);
    for (int j = 0; j < 16; ++j) {
        if (fabsf(scales[j]) > max_abs) { max_abs = fabsf(scales[j]); max_scale = scales[j]; }
    }
    memset(y, 0, 210);
    if (max_abs < GROUP_MAX_EPS) return;
    float iscale = -128.f / max_scale;
    uint16_t d_bits = fp16_bits(1 / iscale);
    int8_t *sc = (int8_t *)(y + 192);
    for (int j = 0; j < 16; ++j) {
        int32_t l = nearest_int(iscale * scales[j]);
        sc[j] = (int8_t)(uint8_t)((l < 127 ? l : 127) & 0xff);
    }
    put16(y + 208, d_bits);
    for (int j = 0; j < 16; ++j) {
        float d = fp16_value(d_bits) * (float)sc[j];
        if (!d) continue;
        for (int i = 0; i < 16; ++i) L[16 * j + i] = (int8_t)(clamp(nearest_int(x[16 * j + i] / d), -32, 31) + 32);
    }
    uint8_t *ql = y, *qh = y + 128;
    for (int j = 0; j < QK_K; j += 128, ql += 64, qh += 32)
        for (int l = 0; l < 32; ++l) {
            uint8_t a = (uint8_t)L[j + l], b = (uint8_t)L[j + l + 32], c = (uint8_t)L[j + l + 64];
            uint8_t e = (uint8_t)L[j + l + 96];
            ql[l] = (uint8_t)((a & 0xf) | ((c & 0xf) << 4));
            ql[l + 32] = (uint8_t)((b & 0xf) | ((e & 0xf) << 4));
            qh[l] = (uint8_t)((a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6));
        }
}

static float make_q3(const float *x, int8_t *L) { /* n = 16, nmax = 4, do_rmse; levels L + 4 */
    const int nmax = 4;
    float max, amax = abs_max(x, 16, &max);
    if (amax < GROUP_MAX_EPS) {
        memset(L, 0, 16);
        return 0.f;
    }
    float iscale = (float)(-nmax) / max, sumlx = 0, suml2 = 0;
    for (int i = 0; i < 16; ++i) {
        int32_t l = clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1);
        L[i] = (int8_t)l;
        float w = x[i] * x[i];
        sumlx += w * x[i] * (float)l;
        suml2 += w * (float)l * (float)l;
    }
    for (int pass = 0; pass < 5; ++pass) {
        int changed = 0;
        for (int i = 0; i < 16; ++i) {
            float w = x[i] * x[i], li = (float)L[i];
            float slx = sumlx - w * x[i] * li;
            if (!(slx > 0)) continue;
            float sl2 = suml2 - w * li * li;
            int32_t new_l = clamp(nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1);
            if (new_l == L[i]) continue;
            slx += w * x[i] * (float)new_l;
            sl2 += w * (float)new_l * (float)new_l;
            if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
                L[i] = (int8_t)new_l;
                sumlx = slx;
                suml2 = sl2;
                ++changed;
            }
        }
        if (!changed) break;
    }
    for (int i = 0; i < 16; ++i) L[i] = (int8_t)(L[i] + nmax);
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

static void q3_k(const float *x, uint8_t *y) { /* hmask[32], qs[64], scales[12], d: 110 bytes */
    int8_t L[QK_K];
    float scales[16], max_scale = 0, amax = 0;
    for (int j = 0; j < 16; ++j) {
        scales[j] = make_q3(x + 16 * j, L + 16 * j);
        if (fabsf(scales[j]) > amax) { amax = fabsf(scales[j]); max_scale = scales[j]; }
    }
    uint8_t ls[16] = {0}, *hmask = y, *qs = y + 32, *sc = y + 96;
    uint16_t d_bits = 0;
    memset(y, 0, 110);
    if (max_scale) {
        float iscale = -32.f / max_scale;
        for (int j = 0; j < 16; ++j) {
            int8_t l = (int8_t)(uint8_t)(nearest_int(iscale * scales[j]) & 0xff);
            ls[j] = (uint8_t)(clamp(l, -32, 31) + 32);
            sc[j % 8] = (uint8_t)(sc[j % 8] | ((ls[j] & 0xf) << (j < 8 ? 0 : 4)));
            sc[8 + j % 4] = (uint8_t)(sc[8 + j % 4] | ((ls[j] >> 4) << (2 * (j / 4))));
        }
        d_bits = fp16_bits(1 / iscale);
    }
    put16(y + 108, d_bits);
    for (int j = 0; j < 16; ++j) {
        float d = fp16_value(d_bits) * (float)((int)ls[j] - 32);
        if (!d) continue;
        for (int i = 0; i < 16; ++i) L[16 * j + i] = (int8_t)(clamp(nearest_int(x[16 * j + i] / d), -4, 3) + 4);
    }
    for (int j = 0; j < QK_K; ++j)
        if (L[j] > 3) {
            hmask[j % 32] = (uint8_t)(hmask[j % 32] | (1u << (j / 32)));
            L[j] = (int8_t)(L[j] - 4);
        }
    for (int j = 0; j < QK_K; j += 128)
        for (int l = 0; l < 32; ++l)
            qs[j / 4 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
}

/* ----- 32-value block types ----- */

static inline uint8_t low_byte(float v) { return (uint8_t)(trunc_x86(v) & 0xff); } /* (uint8_t) of a float */
static inline uint8_t min_int8(int top, float v) {                                  /* MIN(top, (int8_t)v) */
    int8_t b = (int8_t)low_byte(v);
    return (uint8_t)(b < top ? b : top);
}

/* q[j] = MIN(top, (int8_t)((x[j] - sub) * id + offset)) as uint8_t, or (uint8_t)(...) for top 0; x - 0 is x */
static void levels32(const float *x, float sub, float id, float offset, int top, uint8_t *q) {
    for (int j = 0; j < 32; ++j) {
        float v = (x[j] - sub) * id + offset;
        q[j] = top ? min_int8(top, v) : low_byte(v);
    }
}

static void pack_nibbles(const uint8_t *q, uint8_t *qs) { /* qs[j] = q[j] & 0xF | q[j + 16] << 4 */
    for (int j = 0; j < 16; ++j) qs[j] = (uint8_t)((q[j] & 0xf) | ((q[j + 16] & 0xf) << 4));
}

static void put_high_bits(const uint8_t *q, uint8_t *qh) { /* uint32 little-endian: bit j = bit 4 of q[j] */
    uint32_t bits = 0;
    for (int j = 0; j < 32; ++j) bits |= (uint32_t)((q[j] >> 4) & 1) << j;
    for (int k = 0; k < 4; ++k) qh[k] = (uint8_t)(bits >> (8 * k));
}

static void q4_0(const float *x, uint8_t *y) { /* d, qs[16]: 18 bytes */
    float max;
    uint8_t q[32];
    abs_max(x, 32, &max);
    float d = max / -8, id = d ? 1.0f / d : 0.0f;
    put16(y, fp16_bits(d));
    levels32(x, 0.f, id, 8.5f, 15, q);
    pack_nibbles(q, y + 2);
}

static void q5_0(const float *x, uint8_t *y) { /* d, qh (uint32), qs[16]: 22 bytes */
    float max;
    uint8_t q[32];
    abs_max(x, 32, &max);
    float d = max / -16, id = d ? 1.0f / d : 0.0f;
    put16(y, fp16_bits(d));
    levels32(x, 0.f, id, 16.5f, 31, q);
    put_high_bits(q, y + 2);
    pack_nibbles(q, y + 6);
}

static void min_max(const float *x, float *min, float *max) { /* the first of equal candidates */
    float lo = FLT_MAX, hi = -FLT_MAX;
    for (int j = 0; j < 32; ++j) {
        if (x[j] < lo) lo = x[j];
        if (x[j] > hi) hi = x[j];
    }
    *min = lo;
    *max = hi;
}

static void q4_1(const float *x, uint8_t *y) { /* d, m, qs[16]: 20 bytes */
    float min, max;
    uint8_t q[32];
    min_max(x, &min, &max);
    float d = (max - min) / 15, id = d ? 1.0f / d : 0.0f;
    put16(y, fp16_bits(d));
    put16(y + 2, fp16_bits(min));
    levels32(x, min, id, 0.5f, 15, q);
    pack_nibbles(q, y + 4);
}

static void q5_1(const float *x, uint8_t *y) { /* d, m, qh (uint32), qs[16]: 24 bytes */
    float min, max;
    uint8_t q[32];
    min_max(x, &min, &max);
    float d = (max - min) / 31, id = d ? 1.0f / d : 0.0f;
    put16(y, fp16_bits(d));
    put16(y + 2, fp16_bits(min));
    levels32(x, min, id, 0.5f, 0, q);
    put_high_bits(q, y + 4);
    pack_nibbles(q, y + 8);
}

#ifndef VECTOR
static inline float round_away(float v) { /* roundf (halves away from zero), inline and exact */
    float a = fabsf(v);
    if (!(a < 8388608.f)) return v; /* 2**23 and above are integers; inf and NaN stay */
    float t = (float)(int32_t)a;
    return copysignf(t + (float)(a - t >= 0.5f), v); /* no branch: the comparison is a coin toss */
}
#endif

static void q8_0(const float *x, uint8_t *y) { /* d, qs[32] (int8): 34 bytes */
#ifdef VECTOR
    q8_0_lanes_4(x, y);
#else
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = amax > fabsf(x[j]) ? amax : fabsf(x[j]); /* MAX(amax, |v|) */
    float d = amax / 127, id = d ? 1.0f / d : 0.0f;
    put16(y, fp16_bits(d));
    for (int j = 0; j < 32; ++j) y[2 + j] = low_byte(round_away(x[j] * id));
#endif
}

static const int8_t KVALUES[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

static inline int best_index(float x) { /* best_index_int8(16, kvalues_iq4nl, x) */
    if (x <= KVALUES[0]) return 0;
    if (x >= KVALUES[15]) return 15;
    int lo = 0, hi = 15;
    while (hi - lo > 1) {
        int mid = (lo + hi) / 2;
        if (x < KVALUES[mid]) hi = mid; else lo = mid;
    }
    return x - KVALUES[hi - 1] < KVALUES[hi] - x ? hi - 1 : hi;
}

static void iq4_nl(const float *x, uint8_t *y) { /* d, qs[16]: 18 bytes; ntry = 7, no importance weights */
    float w[32], max, amax = abs_max(x, 32, &max), d = 0;
    for (int j = 0; j < 32; ++j) w[j] = x[j] * x[j];
    if (!(amax < GROUP_MAX_EPS)) {
        float id = 1 / (-max / (float)KVALUES[0]), sumqx = 0, sumq2 = 0;
        for (int j = 0; j < 32; ++j) {
            float q = KVALUES[best_index(id * x[j])];
            sumqx += w[j] * q * x[j];
            sumq2 += w[j] * q * q;
        }
        d = sumq2 > 0 ? sumqx / sumq2 : 0.f;
        float best = d * sumqx;
        for (int itry = -7; itry <= 7; ++itry) {
            id = (float)(itry + KVALUES[0]) / max;
            sumqx = sumq2 = 0;
            for (int j = 0; j < 32; ++j) {
                float q = KVALUES[best_index(id * x[j])];
                sumqx += w[j] * q * x[j];
                sumq2 += w[j] * q * q;
            }
            if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
                d = sumqx / sumq2;
                best = d * sumqx;
            }
        }
    }
    put16(y, fp16_bits(d));
    float id = d ? 1 / d : 0;
    for (int j = 0; j < 16; ++j) y[2 + j] = (uint8_t)(best_index(id * x[j]) | (best_index(id * x[j + 16]) << 4));
}

/* ----- the module ----- */

typedef void (*kernel_fn)(const float *, uint8_t *);
typedef struct {
    int type; /* ggml_type */
    int block, size;
    kernel_fn fn;
} kernel;

static const kernel KERNELS[] = {
    {2, 32, 18, q4_0},    {3, 32, 20, q4_1},    {6, 32, 22, q5_0},    {7, 32, 24, q5_1},
    {8, 32, 34, q8_0},    {10, 256, 84, q2_k},  {11, 256, 110, q3_k}, {12, 256, 144, q4_k},
    {13, 256, 176, q5_k}, {14, 256, 210, q6_k}, {20, 32, 18, iq4_nl},
};
#define N_KERNELS ((int)(sizeof KERNELS / sizeof KERNELS[0]))

static int in_range(const float *x, Py_ssize_t n) { /* every |x[i]| < LIMIT: false for NaN */
#ifdef VECTOR
    return in_range_4(x, n);
#else
    int ok = 1;
    for (Py_ssize_t i = 0; i < n; ++i) ok &= fabsf(x[i]) < LIMIT;
    return ok;
#endif
}

static int run(const kernel *k, const float *x, uint8_t *y, Py_ssize_t n_blocks) {
    if (!in_range(x, n_blocks * k->block)) return 0;
    for (Py_ssize_t b = 0; b < n_blocks; ++b, x += k->block, y += k->size) k->fn(x, y);
    return 1;
}

static PyObject *quantize(PyObject *self, PyObject *args) {
    int type;
    Py_buffer src, dst;
    (void)self;
    if (!PyArg_ParseTuple(args, "iy*w*", &type, &src, &dst)) return NULL;
    const kernel *k = NULL;
    for (int i = 0; i < N_KERNELS; ++i)
        if (KERNELS[i].type == type) k = &KERNELS[i];
    PyObject *result = NULL;
    Py_ssize_t n_blocks = src.len / (Py_ssize_t)(sizeof(float) * (k ? k->block : 1));
    if (!k) {
        PyErr_Format(PyExc_ValueError, "no native kernel for ggml type %d", type);
    } else if (src.len % (Py_ssize_t)(sizeof(float) * k->block) || dst.len != n_blocks * k->size) {
        PyErr_SetString(PyExc_ValueError, "src must hold whole float32 blocks and dst exactly their bytes");
    } else if (!PyBuffer_IsContiguous(&src, 'C') || !PyBuffer_IsContiguous(&dst, 'C')) {
        PyErr_SetString(PyExc_ValueError, "src and dst must be C-contiguous");
    } else {
        int ok;
        Py_BEGIN_ALLOW_THREADS;
        ok = run(k, (const float *)src.buf, (uint8_t *)dst.buf, n_blocks);
        Py_END_ALLOW_THREADS;
        result = PyBool_FromLong(ok);
    }
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return result;
}

static PyObject *fp16(PyObject *self, PyObject *args) { /* float32 values -> uint16 bits, for the tests */
    Py_buffer src, dst;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*w*", &src, &dst)) return NULL;
    if (dst.len * 2 != src.len || src.len % 4) {
        PyBuffer_Release(&src);
        PyBuffer_Release(&dst);
        return PyErr_Format(PyExc_ValueError, "dst must hold one uint16 per float32 of src");
    }
    Py_BEGIN_ALLOW_THREADS;
    const float *x = (const float *)src.buf;
    uint16_t *out = (uint16_t *)dst.buf;
    for (Py_ssize_t i = 0; i < src.len / 4; ++i) out[i] = fp16_bits(x[i]);
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    Py_RETURN_NONE;
}

static int widest(void) { /* the widest lane count this build and CPU can run */
#ifdef WIDE
    if (__builtin_cpu_supports("avx2")) return 8;
#endif
#ifdef VECTOR
    return 4;
#else
    return 1;
#endif
}

static PyObject *lanes(PyObject *self, PyObject *args) { /* lanes([n]) -> n: sub-blocks at once, for the tests */
    int n = 0, top = widest();
    (void)self;
    if (!PyArg_ParseTuple(args, "|i", &n)) return NULL;
    if (n && !(n == top || (n == 4 && top == 8)))
        return PyErr_Format(PyExc_ValueError, "lanes must be %d%s here", top, top == 8 ? " or 4" : "");
#ifdef WIDE
    if (n) wide = n == 8;
    return PyLong_FromLong(wide ? 8 : 4);
#else
    return PyLong_FromLong(top);
#endif
}

static PyObject *types(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    PyObject *out = PyTuple_New(N_KERNELS);
    if (!out) return NULL;
    for (int i = 0; i < N_KERNELS; ++i) PyTuple_SET_ITEM(out, i, PyLong_FromLong(KERNELS[i].type));
    return out;
}

static PyMethodDef METHODS[] = {
    {"quantize", quantize, METH_VARARGS, "quantize(type, src, dst) -> bool: float32 blocks into dst's bytes."},
    {"fp16", fp16, METH_VARARGS, "fp16(src, dst): float32 -> fp16 bits (round to nearest even)."},
    {"types", types, METH_NOARGS, "types() -> the ggml type numbers with a kernel."},
    {"lanes", lanes, METH_VARARGS, "lanes([n]) -> sub-blocks quantized at once (1, 4 or 8); n sets it."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {
    PyModuleDef_HEAD_INIT, "_native", "ggml's quantizers in C.", -1, METHODS, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) {
#ifdef WIDE
    __builtin_cpu_init();
    wide = widest() == 8;
#endif
    return PyModule_Create(&MODULE);
}
