/* Sub-blocks LANES at once with GCC/Clang vector types. _native.c includes this once per width, with LANES and
 * NAME(x) (x with the width as suffix) defined. Lane j holds sub-block j: every lane does the scalar code's float32
 * operations (make_qkx2, make_qx in _native.c) in the same order, so the results are the same; branches become
 * masks. */
#define vf NAME(vf)
#define vi NAME(vi)
#define vsel NAME(vsel)
#define vseli NAME(vseli)
#define vabs NAME(vabs)
#define vfloat NAME(vfloat)
#define vnearest NAME(vnearest)
#define vclamp NAME(vclamp)
#define make_qkx2_v NAME(make_qkx2_v)
#define make_qx_v NAME(make_qx_v)

typedef float vf __attribute__((vector_size(4 * LANES)));
typedef int32_t vi __attribute__((vector_size(4 * LANES)));

static inline vf vsel(vi m, vf a, vf b) { return (vf)(((vi)a & m) | ((vi)b & ~m)); }
static inline vi vseli(vi m, vi a, vi b) { return (a & m) | (b & ~m); }
static inline vf vabs(vf v) { return (vf)((vi)v & 0x7fffffff); }
static inline vf vfloat(vi v) { return __builtin_convertvector(v, vf); }
static inline vi vnearest(vf f) { return ((vi)(f + 12582912.f) & 0x007fffff) - 0x00400000; }
static inline vi vclamp(vi v, int32_t lo, int32_t hi) {
    vi vlo = (vi){0} + lo, vhi = (vi){0} + hi;
    v = vseli(v < vlo, vlo, v);
    return vseli(v > vhi, vhi, v);
}

static void make_qkx2_v(int n, int nmax, const vf *x, const vf *w, vi *L, vf *scale_out, vf *min_out, float rmin,
                        float rdelta, int nstep, int use_mad) { /* make_qkx2 in every lane */
    vi aux[32];
    vf zero = {0}, min = x[0], max = x[0], sum_w = w[0], sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        min = vsel(x[i] < min, x[i], min);
        max = vsel(x[i] > max, x[i], max);
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    min = vsel(min > 0, zero, min);
    vi flat = max == min; /* the scalar code returns early: L = 0, scale 0 */
    vf iscale = (float)nmax / (max - min), scale = 1 / iscale, best = zero, min0 = min;
    for (int i = 0; i < n; ++i) {
        L[i] = vclamp(vnearest(iscale * (x[i] - min)), 0, nmax);
        vf diff = scale * vfloat(L[i]) + min - x[i];
        best += w[i] * (use_mad ? vabs(diff) : diff * diff);
    }
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta * (float)is + (float)nmax) / (max - min); /* the min of the best trial so far */
        vf sum_l = zero, sum_l2 = zero, sum_xl = zero;
        for (int i = 0; i < n; ++i) {
            aux[i] = vclamp(vnearest(iscale * (x[i] - min)), 0, nmax);
            vf fl = vfloat(aux[i]);
            sum_l += w[i] * fl;
            sum_l2 += w[i] * fl * fl;
            sum_xl += w[i] * fl * x[i];
        }
        vf det = sum_w * sum_l2 - sum_l * sum_l;
        vf this_scale = (sum_w * sum_xl - sum_x * sum_l) / det, this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
        vi clamped = this_min > 0;
        this_min = vsel(clamped, zero, this_min);
        this_scale = vsel(clamped, sum_xl / sum_l2, this_scale);
        vf error = zero;
        for (int i = 0; i < n; ++i) {
            vf diff = this_scale * vfloat(aux[i]) + this_min - x[i];
            error += w[i] * (use_mad ? vabs(diff) : diff * diff);
        }
        vi better = (det > 0) & (error < best) & ~flat;
        for (int i = 0; i < n; ++i) L[i] = vseli(better, aux[i], L[i]);
        best = vsel(better, error, best);
        scale = vsel(better, this_scale, scale);
        min = vsel(better, this_min, min);
    }
    for (int i = 0; i < n; ++i) L[i] = vseli(flat, (vi){0}, L[i]);
    *scale_out = vsel(flat, zero, scale);
    *min_out = -vsel(flat, min0, min);
}
static void make_qx_v(const vf *x, int nmax, vi *L, vf *scale_out) { /* make_qx in every lane */
    vf zero = {0}, amax = zero, max = zero, w[16];
    for (int i = 0; i < 16; ++i) {
        vf ax = vabs(x[i]);
        vi more = ax > amax;
        amax = vsel(more, ax, amax);
        max = vsel(more, x[i], max);
        w[i] = x[i] * x[i];
    }
    vi empty = amax < GROUP_MAX_EPS; /* the scalar code returns early: L = 0, scale 0 */
    vf iscale = (float)(-nmax) / max, sumlx = zero, suml2 = zero;
    for (int i = 0; i < 16; ++i) {
        vi l = vclamp(vnearest(iscale * x[i]), -nmax, nmax - 1);
        L[i] = l + nmax;
        vf fl = vfloat(l);
        sumlx += w[i] * x[i] * fl;
        suml2 += w[i] * fl * fl;
    }
    vf scale = vsel(suml2 != 0, sumlx / suml2, zero), best = scale * sumlx;
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        iscale = -((float)nmax + 0.1f * (float)is) / max;
        vi l[16];
        sumlx = suml2 = zero;
        for (int i = 0; i < 16; ++i) {
            l[i] = vclamp(vnearest(iscale * x[i]), -nmax, nmax - 1);
            vf fl = vfloat(l[i]);
            sumlx += w[i] * x[i] * fl;
            suml2 += w[i] * fl * fl;
        }
        vi better = (suml2 > 0) & (sumlx * sumlx > best * suml2);
        for (int i = 0; i < 16; ++i) L[i] = vseli(better, l[i] + nmax, L[i]);
        scale = vsel(better, sumlx / suml2, scale);
        best = vsel(better, scale * sumlx, best);
    }
    for (int i = 0; i < 16; ++i) L[i] = vseli(empty, (vi){0}, L[i]);
    *scale_out = vsel(empty, zero, scale);
}
/* solve_qkx2 and solve_qx of _native.c, n_sub a multiple of LANES */
static void NAME(qkx2_lanes)(const float *x, const float *w, int n, int n_sub, int nmax, float rmin, int nstep,
                             int use_mad, uint8_t *L, float *scales, float *mins) {
    for (int g = 0; g < n_sub; g += LANES) {
        vf xt[32], wt[32], sc, mn;
        vi lt[32];
        for (int i = 0; i < n; ++i)
            for (int j = 0; j < LANES; ++j) {
                xt[i][j] = x[n * (g + j) + i];
                wt[i][j] = w[n * (g + j) + i];
            }
        make_qkx2_v(n, nmax, xt, wt, lt, &sc, &mn, rmin, 0.1f, nstep, use_mad);
        for (int j = 0; j < LANES; ++j) {
            scales[g + j] = sc[j];
            mins[g + j] = mn[j];
            for (int i = 0; i < n; ++i) L[n * (g + j) + i] = (uint8_t)lt[i][j];
        }
    }
}

static void NAME(qx_lanes)(const float *x, int nmax, int8_t *L, float *scales) {
    for (int g = 0; g < 16; g += LANES) {
        vf xt[16], sc;
        vi lt[16];
        for (int i = 0; i < 16; ++i)
            for (int j = 0; j < LANES; ++j) xt[i][j] = x[16 * (g + j) + i];
        make_qx_v(xt, nmax, lt, &sc);
        for (int j = 0; j < LANES; ++j) {
            scales[g + j] = sc[j];
            for (int i = 0; i < 16; ++i) L[16 * (g + j) + i] = (int8_t)lt[i][j];
        }
    }
}

#if LANES == 4
/* whether every |x[i]| < LIMIT (false for NaN), 4 values at once */
static int NAME(in_range)(const float *x, Py_ssize_t n) {
    vi ok = (vi){0} - 1;
    Py_ssize_t i = 0;
    for (; i + LANES <= n; i += LANES) {
        vf v;
        memcpy(&v, x + i, sizeof v);
        ok &= vabs(v) < LIMIT;
    }
    int all = 1;
    for (int j = 0; j < LANES; ++j) all &= ok[j] != 0;
    for (; i < n; ++i) all &= fabsf(x[i]) < LIMIT;
    return all;
}

/* q8_0 of _native.c, 4 values at once (8 are slower); the max of |x| does not depend on the order */
static void NAME(q8_0_lanes)(const float *x, uint8_t *y) {
    vf v[32 / LANES], zero = {0}, amax = zero;
    for (int k = 0; k < 32 / LANES; ++k) {
        memcpy(&v[k], x + k * LANES, sizeof v[k]);
        vf a = vabs(v[k]);
        amax = vsel(a > amax, a, amax);
    }
    float m = 0;
    for (int j = 0; j < LANES; ++j) m = m > amax[j] ? m : amax[j];
    float d = m / 127, id = d ? 1.0f / d : 0.0f;
    put16(y, fp16_bits(d));
    for (int k = 0; k < 32 / LANES; ++k) {
        vf s = v[k] * id, a = vabs(s); /* round_away, then low_byte */
        vi small = a < 8388608.f;
        vf t = vfloat(__builtin_convertvector(vsel(small, a, zero), vi));
        vf r = t + vfloat((a - t >= 0.5f) & 1);
        vf rounded = vsel(small, (vf)((vi)r | ((vi)s & INT32_MIN)), s); /* r >= 0: copysign sets the sign bit */
        vi in_range = (rounded >= -2147483648.f) & (rounded < 2147483648.f);
        vi q = vseli(in_range, __builtin_convertvector(vsel(in_range, rounded, zero), vi), (vi){0} + INT32_MIN);
        for (int j = 0; j < LANES; ++j) y[2 + k * LANES + j] = (uint8_t)(q[j] & 0xff);
    }
}
#endif

#undef vf
#undef vi
#undef vsel
#undef vseli
#undef vabs
#undef vfloat
#undef vnearest
#undef vclamp
#undef make_qkx2_v
#undef make_qx_v
