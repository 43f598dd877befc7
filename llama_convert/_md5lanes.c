/* MD5 (RFC 1321) of several independent streams at once: multi-buffer MD5.
 *
 * One MD5 stream is a chain of 64 dependent steps per 64-byte block, so a core runs it at about one byte per
 * five cycles whatever its width. Different files are independent: lane j of a vector of uint32 (GCC/Clang
 * vector types) holds stream j's A, B, C or D, so one vector instruction advances LANES streams by the same
 * step. Built for the generic target (SSE2 on x86-64, NEON on arm64) and, on x86-64, once more for AVX2, chosen
 * at import where the CPU has it; with AVX2 the steps of two vectors interleave (16 streams). A lane with nothing
 * to hash is masked out by not writing its state back; when few lanes have blocks left (min_lanes), scalar code
 * runs them, two streams interleaved (a vector of mostly idle lanes is slower).
 * -DMD5LANES_SCALAR builds the plain C code only (what compilers without vector types get).
 *
 * update(states, buffers, blocks): states is a writable buffer of 16 bytes per lane (A, B, C, D as native
 * uint32), buffers a sequence of buffer objects (or None), blocks the number of whole 64-byte blocks lane j
 * hashes from the start of buffers[j]. Padding and the final block are the caller's (llama_convert/md5lanes.py).
 * The GIL is released while hashing.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#define MAX_LANES 256

/* RFC 1321 section 3.4: the auxiliary functions, written so that x (the newest word, on the critical path) meets
 * as few operations as possible: F with one operation fewer, G's two terms have no bit in common (| is +), H and I
 * combine y and z first */
#define F(x, y, z) ((z) ^ ((x) & ((y) ^ (z))))
#define G(x, y, z) (((x) & (z)) + ((y) & ~(z)))
#define H(x, y, z) ((x) ^ ((y) ^ (z)))
#define I(x, y, z) ((y) ^ ((x) | ~(z)))
#define ONE(f, a, b, c, d, x, k, s)                                                                          \
    a += (x) + (k);                                                                                          \
    a += f(b, c, d);                                                                                         \
    a = ((a << (s)) | (a >> (32 - (s)))) + b;

/* the 64 steps, STEP(f, a, b, c, d, i, k, s) with word i of the block; the constants are floor(abs(sin(i + 1)) * 2**32) */
#define ROUNDS(STEP) \
    STEP(F, a, b, c, d, 0, 0xd76aa478u, 7) STEP(F, d, a, b, c, 1, 0xe8c7b756u, 12) \
    STEP(F, c, d, a, b, 2, 0x242070dbu, 17) STEP(F, b, c, d, a, 3, 0xc1bdceeeu, 22) \
    STEP(F, a, b, c, d, 4, 0xf57c0fafu, 7) STEP(F, d, a, b, c, 5, 0x4787c62au, 12) \
    STEP(F, c, d, a, b, 6, 0xa8304613u, 17) STEP(F, b, c, d, a, 7, 0xfd469501u, 22) \
    STEP(F, a, b, c, d, 8, 0x698098d8u, 7) STEP(F, d, a, b, c, 9, 0x8b44f7afu, 12) \
    STEP(F, c, d, a, b, 10, 0xffff5bb1u, 17) STEP(F, b, c, d, a, 11, 0x895cd7beu, 22) \
    STEP(F, a, b, c, d, 12, 0x6b901122u, 7) STEP(F, d, a, b, c, 13, 0xfd987193u, 12) \
    STEP(F, c, d, a, b, 14, 0xa679438eu, 17) STEP(F, b, c, d, a, 15, 0x49b40821u, 22) \
    STEP(G, a, b, c, d, 1, 0xf61e2562u, 5) STEP(G, d, a, b, c, 6, 0xc040b340u, 9) \
    STEP(G, c, d, a, b, 11, 0x265e5a51u, 14) STEP(G, b, c, d, a, 0, 0xe9b6c7aau, 20) \
    STEP(G, a, b, c, d, 5, 0xd62f105du, 5) STEP(G, d, a, b, c, 10, 0x02441453u, 9) \
    STEP(G, c, d, a, b, 15, 0xd8a1e681u, 14) STEP(G, b, c, d, a, 4, 0xe7d3fbc8u, 20) \
    STEP(G, a, b, c, d, 9, 0x21e1cde6u, 5) STEP(G, d, a, b, c, 14, 0xc33707d6u, 9) \
    STEP(G, c, d, a, b, 3, 0xf4d50d87u, 14) STEP(G, b, c, d, a, 8, 0x455a14edu, 20) \
    STEP(G, a, b, c, d, 13, 0xa9e3e905u, 5) STEP(G, d, a, b, c, 2, 0xfcefa3f8u, 9) \
    STEP(G, c, d, a, b, 7, 0x676f02d9u, 14) STEP(G, b, c, d, a, 12, 0x8d2a4c8au, 20) \
    STEP(H, a, b, c, d, 5, 0xfffa3942u, 4) STEP(H, d, a, b, c, 8, 0x8771f681u, 11) \
    STEP(H, c, d, a, b, 11, 0x6d9d6122u, 16) STEP(H, b, c, d, a, 14, 0xfde5380cu, 23) \
    STEP(H, a, b, c, d, 1, 0xa4beea44u, 4) STEP(H, d, a, b, c, 4, 0x4bdecfa9u, 11) \
    STEP(H, c, d, a, b, 7, 0xf6bb4b60u, 16) STEP(H, b, c, d, a, 10, 0xbebfbc70u, 23) \
    STEP(H, a, b, c, d, 13, 0x289b7ec6u, 4) STEP(H, d, a, b, c, 0, 0xeaa127fau, 11) \
    STEP(H, c, d, a, b, 3, 0xd4ef3085u, 16) STEP(H, b, c, d, a, 6, 0x04881d05u, 23) \
    STEP(H, a, b, c, d, 9, 0xd9d4d039u, 4) STEP(H, d, a, b, c, 12, 0xe6db99e5u, 11) \
    STEP(H, c, d, a, b, 15, 0x1fa27cf8u, 16) STEP(H, b, c, d, a, 2, 0xc4ac5665u, 23) \
    STEP(I, a, b, c, d, 0, 0xf4292244u, 6) STEP(I, d, a, b, c, 7, 0x432aff97u, 10) \
    STEP(I, c, d, a, b, 14, 0xab9423a7u, 15) STEP(I, b, c, d, a, 5, 0xfc93a039u, 21) \
    STEP(I, a, b, c, d, 12, 0x655b59c3u, 6) STEP(I, d, a, b, c, 3, 0x8f0ccc92u, 10) \
    STEP(I, c, d, a, b, 10, 0xffeff47du, 15) STEP(I, b, c, d, a, 1, 0x85845dd1u, 21) \
    STEP(I, a, b, c, d, 8, 0x6fa87e4fu, 6) STEP(I, d, a, b, c, 15, 0xfe2ce6e0u, 10) \
    STEP(I, c, d, a, b, 6, 0xa3014314u, 15) STEP(I, b, c, d, a, 13, 0x4e0811a1u, 21) \
    STEP(I, a, b, c, d, 4, 0xf7537e82u, 6) STEP(I, d, a, b, c, 11, 0xbd3af235u, 10) \
    STEP(I, c, d, a, b, 2, 0x2ad7d2bbu, 15) STEP(I, b, c, d, a, 9, 0xeb86d391u, 21) \
    /* end of ROUNDS */

static inline uint32_t le32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, sizeof v);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap32(v);
#endif
    return v;
}

/* one stream: n blocks from p */
static void scalar_blocks(uint32_t *state, const uint8_t *p, Py_ssize_t n) {
    uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
    for (Py_ssize_t blk = 0; blk < n; ++blk, p += 64) {
        uint32_t w[16], a0 = a, b0 = b, c0 = c, d0 = d;
        for (int i = 0; i < 16; ++i) w[i] = le32(p + 4 * i);
#define STEP(f, a, b, c, d, i, k, s) ONE(f, a, b, c, d, w[i], k, s)
        ROUNDS(STEP)
        a += a0;
        b += b0;
        c += c0;
        d += d0;
    }
    state[0] = a;
    state[1] = b;
    state[2] = c;
    state[3] = d;
}

#define STEP2(f, a, b, c, d, i, k, s) ONE(f, a, b, c, d, w[i], k, s) ONE(f, a##2, b##2, c##2, d##2, w2[i], k, s)

/* two streams, their steps interleaved: one stream leaves most of a core idle waiting for its previous step */
static void scalar2_blocks(uint32_t *s1, const uint8_t *p1, uint32_t *s2, const uint8_t *p2, Py_ssize_t n) {
    uint32_t a = s1[0], b = s1[1], c = s1[2], d = s1[3], a2 = s2[0], b2 = s2[1], c2 = s2[2], d2 = s2[3];
    for (Py_ssize_t blk = 0; blk < n; ++blk, p1 += 64, p2 += 64) {
        uint32_t w[16], w2[16], a0 = a, b0 = b, c0 = c, d0 = d, a20 = a2, b20 = b2, c20 = c2, d20 = d2;
        for (int i = 0; i < 16; ++i) {
            w[i] = le32(p1 + 4 * i);
            w2[i] = le32(p2 + 4 * i);
        }
        ROUNDS(STEP2)
        a += a0;
        b += b0;
        c += c0;
        d += d0;
        a2 += a20;
        b2 += b20;
        c2 += c20;
        d2 += d20;
    }
    s1[0] = a;
    s1[1] = b;
    s1[2] = c;
    s1[3] = d;
    s2[0] = a2;
    s2[1] = b2;
    s2[2] = c2;
    s2[3] = d2;
}

#if (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 9)) && !defined(MD5LANES_SCALAR) && \
    !(defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__) /* vectors load words as stored */
#define VECTOR 1
#define LANES 8
typedef uint32_t v8 __attribute__((vector_size(4 * LANES)));

#if defined(__has_builtin) && !defined(MD5LANES_NO_SHUFFLEVECTOR) /* no __has_builtin in GCC 9 */
#if __has_builtin(__builtin_shufflevector)
#define SHUFFLEVECTOR 1
#endif
#endif
#ifdef SHUFFLEVECTOR
#define SHUFFLE(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SHUFFLE(a, b, ...) __builtin_shuffle(a, b, (v8){__VA_ARGS__})
#endif
/* w[i] = word i of every row: r[j] holds 8 words of lane j (unpack in 128-bit halves, then swap the halves) */
#define TRANSPOSE(name)                                                                                      \
    static inline void name(const v8 *r, v8 *w) {                                                            \
        v8 t[8], u[8];                                                                                       \
        for (int j = 0; j < 8; j += 2) {                                                                     \
            t[j] = SHUFFLE(r[j], r[j + 1], 0, 8, 1, 9, 4, 12, 5, 13);                                        \
            t[j + 1] = SHUFFLE(r[j], r[j + 1], 2, 10, 3, 11, 6, 14, 7, 15);                                  \
        }                                                                                                    \
        for (int j = 0; j < 8; j += 4)                                                                       \
            for (int h = 0; h < 2; ++h) {                                                                    \
                u[j + 2 * h] = SHUFFLE(t[j + h], t[j + h + 2], 0, 1, 8, 9, 4, 5, 12, 13);                    \
                u[j + 2 * h + 1] = SHUFFLE(t[j + h], t[j + h + 2], 2, 3, 10, 11, 6, 7, 14, 15);              \
            }                                                                                                \
        for (int i = 0; i < 4; ++i) {                                                                        \
            w[i] = SHUFFLE(u[i], u[i + 4], 0, 1, 2, 3, 8, 9, 10, 11);                                        \
            w[i + 4] = SHUFFLE(u[i], u[i + 4], 4, 5, 6, 7, 12, 13, 14, 15);                                  \
        }                                                                                                    \
    }

/* LANES streams (state[j] of lane j, data at p[j]) by n blocks each */
#define VECTOR_BLOCKS(name)                                                                                  \
    static void name(uint32_t *const *state, const uint8_t *const *p, Py_ssize_t n) {                        \
        v8 a, b, c, d;                                                                                       \
        for (int j = 0; j < LANES; ++j) {                                                                    \
            a[j] = state[j][0];                                                                              \
            b[j] = state[j][1];                                                                              \
            c[j] = state[j][2];                                                                              \
            d[j] = state[j][3];                                                                              \
        }                                                                                                    \
        for (Py_ssize_t blk = 0; blk < n; ++blk) {                                                           \
            v8 w[16], a0 = a, b0 = b, c0 = c, d0 = d;                                                        \
            for (int half = 0; half < 2; ++half) {                                                           \
                v8 r[LANES];                                                                                 \
                for (int j = 0; j < LANES; ++j) memcpy(&r[j], p[j] + 64 * blk + 32 * half, sizeof r[j]);     \
                transpose(r, w + 8 * half);                                                                  \
            }                                                                                                \
            ROUNDS(STEP)                                                                                     \
            a += a0;                                                                                         \
            b += b0;                                                                                         \
            c += c0;                                                                                         \
            d += d0;                                                                                         \
        }                                                                                                    \
        for (int j = 0; j < LANES; ++j) {                                                                    \
            state[j][0] = a[j];                                                                              \
            state[j][1] = b[j];                                                                              \
            state[j][2] = c[j];                                                                              \
            state[j][3] = d[j];                                                                              \
        }                                                                                                    \
    }
/* 2 * LANES streams, two vectors' steps interleaved (one vector's chain of steps leaves the core half idle) */
#define VECTOR_BLOCKS2(name)                                                                                 \
    static void name(uint32_t *const *state, const uint8_t *const *p, Py_ssize_t n) {                        \
        v8 a, b, c, d, a2, b2, c2, d2;                                                                       \
        for (int j = 0; j < LANES; ++j) {                                                                    \
            a[j] = state[j][0], b[j] = state[j][1], c[j] = state[j][2], d[j] = state[j][3];                  \
            a2[j] = state[LANES + j][0], b2[j] = state[LANES + j][1];                                        \
            c2[j] = state[LANES + j][2], d2[j] = state[LANES + j][3];                                        \
        }                                                                                                    \
        for (Py_ssize_t blk = 0; blk < n; ++blk) {                                                           \
            v8 w[16], w2[16], a0 = a, b0 = b, c0 = c, d0 = d, a20 = a2, b20 = b2, c20 = c2, d20 = d2;        \
            for (int half = 0; half < 4; ++half) {                                                           \
                v8 r[LANES];                                                                                 \
                const uint8_t *const *q = p + LANES * (half >> 1);                                           \
                for (int j = 0; j < LANES; ++j) memcpy(&r[j], q[j] + 64 * blk + 32 * (half & 1), sizeof r[j]); \
                transpose(r, (half >> 1 ? w2 : w) + 8 * (half & 1));                                        \
            }                                                                                                \
            ROUNDS(STEP2)                                                                                    \
            a += a0, b += b0, c += c0, d += d0;                                                              \
            a2 += a20, b2 += b20, c2 += c20, d2 += d20;                                                      \
        }                                                                                                    \
        for (int j = 0; j < LANES; ++j) {                                                                    \
            state[j][0] = a[j], state[j][1] = b[j], state[j][2] = c[j], state[j][3] = d[j];                  \
            state[LANES + j][0] = a2[j], state[LANES + j][1] = b2[j];                                        \
            state[LANES + j][2] = c2[j], state[LANES + j][3] = d2[j];                                        \
        }                                                                                                    \
    }
TRANSPOSE(transpose)
VECTOR_BLOCKS(vector_blocks_generic)
#if defined(__x86_64__) && !defined(MD5LANES_NO_AVX2)
#define WIDE 1
static int wide; /* AVX2 present: set at import */
#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx2"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2")
#endif
#undef transpose
#define transpose transpose_avx2
TRANSPOSE(transpose_avx2)
VECTOR_BLOCKS(vector_blocks_avx2)
VECTOR_BLOCKS2(vector_blocks_avx2_16)
#ifdef __clang__
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
#else
#define LANES 1
#endif

#ifdef VECTOR
static int min_lanes(void) { /* measured: 8 AVX2 lanes ~4x one stream, 8 SSE2 lanes ~2x */
#ifdef WIDE
    if (wide) return 3;
#endif
    return 7;
}
#endif

/* every lane j with blocks[j] > 0: LANES at a time (2 * LANES with AVX2) while min_lanes() or more have blocks left,
 * then the scalar code */
static void run(uint32_t *states, const uint8_t **data, Py_ssize_t *blocks, Py_ssize_t n_lanes) {
#ifdef VECTOR
    uint32_t spare[2 * LANES][4]; /* the states of unused lanes, which hash another lane's data again */
    for (;;) {
        uint32_t *st[2 * LANES];
        const uint8_t *p[2 * LANES];
        Py_ssize_t idx[2 * LANES], k = 0, m = 0, group = LANES;
        for (Py_ssize_t j = 0; j < n_lanes && k < 2 * LANES; ++j)
            if (blocks[j] > 0) idx[k++] = j;
        if (k < min_lanes()) break; /* fewer streams run faster in scalar code, two interleaved */
#ifdef WIDE
        if (wide && k > LANES) group = 2 * LANES; /* measured: 16 lanes ~1.45x the speed of 8 */
#endif
        k = k < group ? k : group;
        for (Py_ssize_t i = 0; i < k; ++i) m = (i == 0 || blocks[idx[i]] < m) ? blocks[idx[i]] : m;
        for (Py_ssize_t i = 0; i < group; ++i) {
            st[i] = i < k ? states + 4 * idx[i] : spare[i];
            p[i] = data[idx[i < k ? i : 0]];
        }
#ifdef WIDE
        if (group > LANES)
            vector_blocks_avx2_16(st, p, m);
        else if (wide)
            vector_blocks_avx2(st, p, m);
        else
#endif
            vector_blocks_generic(st, p, m);
        for (Py_ssize_t i = 0; i < k; ++i) {
            data[idx[i]] += 64 * m;
            blocks[idx[i]] -= m;
        }
    }
#endif
    for (;;) { /* the rest two at a time, then one */
        Py_ssize_t i = -1, j = -1;
        for (Py_ssize_t l = 0; l < n_lanes && j < 0; ++l)
            if (blocks[l] > 0) *(i < 0 ? &i : &j) = l;
        if (i < 0) return;
        if (j < 0) {
            scalar_blocks(states + 4 * i, data[i], blocks[i]);
            return;
        }
        Py_ssize_t m = blocks[i] < blocks[j] ? blocks[i] : blocks[j];
        scalar2_blocks(states + 4 * i, data[i], states + 4 * j, data[j], m);
        data[i] += 64 * m;
        data[j] += 64 * m;
        blocks[i] -= m;
        blocks[j] -= m;
    }
}

static PyObject *update(PyObject *self, PyObject *args) {
    Py_buffer states, views[MAX_LANES];
    PyObject *buffers, *counts;
    (void)self;
    if (!PyArg_ParseTuple(args, "w*OO", &states, &buffers, &counts)) return NULL;
    PyObject *bufs = PySequence_Fast(buffers, "buffers must be a sequence"), *ns = NULL;
    Py_ssize_t n_lanes = 0, held = 0, *blocks = NULL;
    const uint8_t **data = NULL;
    int ok = 0;
    if (!bufs) goto done;
    ns = PySequence_Fast(counts, "blocks must be a sequence");
    if (!ns) goto done;
    n_lanes = PySequence_Fast_GET_SIZE(bufs);
    if (n_lanes > MAX_LANES || PySequence_Fast_GET_SIZE(ns) != n_lanes || states.len != 16 * n_lanes ||
        !PyBuffer_IsContiguous(&states, 'C')) {
        PyErr_Format(PyExc_ValueError, "need at most %d lanes, one block count per buffer and 16 state bytes each",
                     MAX_LANES);
        goto done;
    }
    blocks = PyMem_Calloc((size_t)n_lanes + 1, sizeof *blocks);
    data = PyMem_Calloc((size_t)n_lanes + 1, sizeof *data);
    if (!blocks || !data) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t j = 0; j < n_lanes; ++j) {
        PyObject *buf = PySequence_Fast_GET_ITEM(bufs, j);
        Py_ssize_t n = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(ns, j));
        if (n == -1 && PyErr_Occurred()) goto done;
        if (n < 0 || (n > 0 && buf == Py_None)) {
            PyErr_SetString(PyExc_ValueError, "block counts must be >= 0, and > 0 only with a buffer");
            goto done;
        }
        if (buf == Py_None) continue;
        if (PyObject_GetBuffer(buf, &views[held], PyBUF_C_CONTIGUOUS) < 0) goto done;
        ++held;
        if (views[held - 1].len / 64 < n) {
            PyErr_Format(PyExc_ValueError, "lane %zd has %zd bytes, not %zd blocks", j, views[held - 1].len, n);
            goto done;
        }
        data[j] = (const uint8_t *)views[held - 1].buf;
        blocks[j] = n;
    }
    Py_BEGIN_ALLOW_THREADS;
    run((uint32_t *)states.buf, data, blocks, n_lanes);
    Py_END_ALLOW_THREADS;
    ok = 1;
done:
    for (Py_ssize_t i = 0; i < held; ++i) PyBuffer_Release(&views[i]);
    PyMem_Free(blocks);
    PyMem_Free(data);
    Py_XDECREF(bufs);
    Py_XDECREF(ns);
    PyBuffer_Release(&states);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

static const char *isa_name(void) {
#ifdef WIDE
    if (wide) return "avx2";
#endif
#ifdef VECTOR
    return "vector";
#else
    return "scalar";
#endif
}

static PyObject *isa(PyObject *self, PyObject *args) { /* isa([name]) -> the code in use; name chooses, for tests */
    const char *name = NULL;
    (void)self;
    if (!PyArg_ParseTuple(args, "|s", &name)) return NULL;
    if (name) {
#ifdef WIDE
        if (!strcmp(name, "avx2") && __builtin_cpu_supports("avx2"))
            wide = 1;
        else if (!strcmp(name, "vector"))
            wide = 0;
        else
#endif
            if (strcmp(name, isa_name()))
            return PyErr_Format(PyExc_ValueError, "cannot run %s here", name);
    }
    return PyUnicode_FromString(isa_name());
}

static PyMethodDef METHODS[] = {
    {"update", update, METH_VARARGS,
     "update(states, buffers, blocks): advance lane j's MD5 state by blocks[j] 64-byte blocks of buffers[j]."},
    {"isa", isa, METH_VARARGS, "isa([name]) -> 'avx2', 'vector' or 'scalar': the code in use (name sets it)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {
    PyModuleDef_HEAD_INIT, "_md5lanes", "MD5 of several streams at once.", -1, METHODS, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__md5lanes(void) {
#ifdef WIDE
    __builtin_cpu_init();
    wide = __builtin_cpu_supports("avx2") != 0;
#endif
    PyObject *m = PyModule_Create(&MODULE);
    int lanes = LANES;
#ifdef WIDE
    if (wide) lanes = 2 * LANES;
#endif
    if (m && PyModule_AddIntConstant(m, "LANES", lanes) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
