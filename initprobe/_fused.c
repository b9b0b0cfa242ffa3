/* The probe's statistics in one pass over each tensor, for contiguous float32/float64 tensors on the CPU.

   In eager torch they cost about twenty calls a layer, each a pass over the tensor. Here each tensor is read
   once (the preactivation twice, four rows at a time, the second time from cache), by torch's own OpenMP
   threads: the module links libgomp.so.1 and is imported after torch, so the loader hands it the runtime torch
   already loaded, and each thread reads the part of the tensor that torch's threads just wrote, from its own
   cache.

   Pointers arrive as integers (Tensor.data_ptr()); initprobe/fused.py checks device, dtype, size and contiguity
   before calling, and is the only caller. Results are written as doubles to `out`, a pointer into the probe's
   float64 row buffer: nothing goes back to Python per layer. Without OpenMP (a compiler that lacks it) the same
   code runs on one thread. Partial sums are taken in the tensor's dtype over blocks of BLOCK elements
   (vectorised: `omp simd` lets the compiler reorder those sums, nothing else) and added up in double. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#else /* a compiler without OpenMP (Apple clang): one thread, the pragmas are ignored */
static int omp_get_thread_num(void) { return 0; }
static int omp_get_num_threads(void) { return 1; }
static int omp_get_max_threads(void) { return 1; }
#endif

#define BLOCK 1024
#define GRAIN 32768 /* fewer elements than this: one thread (torch's grain size for reductions) */

/* AVX-512, AVX2 and baseline builds of each loop, picked when the module loads (GCC on x86-64 Linux) */
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

typedef struct {
    double sum, sq;
} Sums;

/* Sum and sum of squares of n elements */
#define DEFINE_SUMS(T, NAME)                                                                  \
    CLONES static Sums NAME(const T *v, int64_t n) {                                          \
        double s = 0, q = 0;                                                                  \
        for (int64_t start = 0; start < n; start += BLOCK) {                                  \
            int64_t stop = start + BLOCK < n ? start + BLOCK : n;                             \
            T bs = 0, bq = 0;                                                                 \
            _Pragma("omp simd reduction(+:bs,bq)")                                            \
            for (int64_t i = start; i < stop; i++) {                                          \
                bs += v[i];                                                                   \
                bq += v[i] * v[i];                                                            \
            }                                                                                 \
            s += bs;                                                                          \
            q += bq;                                                                          \
        }                                                                                     \
        return (Sums){s, q};                                                                  \
    }

/* Sums of n elements of each of `count` tensors (1 or 2) into sums[k]: each thread takes one contiguous part,
   as torch's parallel_for does. */
#define DEFINE_TOTAL(T, NAME, SUMS)                                                           \
    static void NAME(const T *const *v, int count, int64_t n, Sums *sums) {                   \
        double s0 = 0, q0 = 0, s1 = 0, q1 = 0;                                                \
        _Pragma("omp parallel if (n * count >= GRAIN) reduction(+:s0,q0,s1,q1)")              \
        {                                                                                     \
            int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();                     \
            int64_t a = n * t / nt, b = n * (t + 1) / nt;                                     \
            Sums part = SUMS(v[0] + a, b - a);                                                \
            s0 += part.sum;                                                                   \
            q0 += part.sq;                                                                    \
            if (count > 1) {                                                                  \
                part = SUMS(v[1] + a, b - a);                                                 \
                s1 += part.sum;                                                               \
                q1 += part.sq;                                                                \
            }                                                                                 \
        }                                                                                     \
        sums[0] = (Sums){s0, q0};                                                             \
        sums[1] = (Sums){s1, q1};                                                             \
    }

/* A layer's running sums: h's sum, sum of squares and elements outside [lo, hi]; x's sum and sum of squares
   about a shift, and elements not 0 (nan included, as count_nonzero) */
typedef struct {
    double hs, hq, xs, xq, out, nonzero;
} LayerSums;

/* One row of h and the same row of x in one loop, added into acc; returns the row's sum of squares */
#define DEFINE_ROW(T, NAME)                                                                   \
    CLONES static double NAME(const T *h, const T *x, int64_t n, T shift, T lo, T hi, LayerSums *acc) { \
        double hq = 0;                                                                        \
        for (int64_t start = 0; start < n; start += BLOCK) {                                  \
            int64_t stop = start + BLOCK < n ? start + BLOCK : n;                             \
            T bhs = 0, bhq = 0, bxs = 0, bxq = 0, bout = 0, bnz = 0; /* counts: exact in T */ \
            _Pragma("omp simd reduction(+:bhs,bhq,bxs,bxq,bout,bnz)")                         \
            for (int64_t i = start; i < stop; i++) {                                          \
                T v = h[i], d = x[i] - shift;                                                 \
                bhs += v;                                                                     \
                bhq += v * v;                                                                 \
                bout += (v < lo) | (v > hi) ? (T)1 : (T)0;                                    \
                bxs += d;                                                                     \
                bxq += d * d;                                                                 \
                bnz += x[i] != 0 ? (T)1 : (T)0;                                               \
            }                                                                                 \
            acc->hs += bhs;                                                                   \
            hq += bhq;                                                                        \
            acc->xs += bxs;                                                                   \
            acc->xq += bxq;                                                                   \
            acc->out += bout;                                                                 \
            acc->nonzero += bnz;                                                              \
        }                                                                                     \
        acc->hq += hq;                                                                        \
        return hq;                                                                            \
    }

/* unit += the sum of k (<= GROUP) rows, `stride` apart, each times its scale: a group of rows per pass over
   unit, not one: with one row per pass, unit's own loads and stores would cost as much as reading the rows */
#define GROUP 4
#define DEFINE_AXPY(T, NAME)                                                                  \
    CLONES static void NAME(T *unit, const T *row, int64_t n, int64_t stride, int k, const T *scale) { \
        if (k == GROUP) {                                                                     \
            const T *r0 = row, *r1 = row + stride, *r2 = row + 2 * stride, *r3 = row + 3 * stride; \
            T s0 = scale[0], s1 = scale[1], s2 = scale[2], s3 = scale[3];                     \
            _Pragma("omp simd")                                                               \
            for (int64_t i = 0; i < n; i++) unit[i] += r0[i] * s0 + r1[i] * s1 + r2[i] * s2 + r3[i] * s3; \
            return;                                                                           \
        }                                                                                     \
        for (int j = 0; j < k; j++) {                                                         \
            const T *r = row + j * stride;                                                    \
            T s = scale[j];                                                                   \
            _Pragma("omp simd")                                                               \
            for (int64_t i = 0; i < n; i++) unit[i] += r[i] * s;                              \
        }                                                                                     \
    }

/* x's column sums and sums of squares about a shift per column (x's first row), k (<= GROUP) rows `stride`
   apart, into csum and csq: a group of rows per pass over them, as AXPY */
#define DEFINE_COLUMNS(T, NAME)                                                               \
    CLONES static void NAME(T *csum, T *csq, const T *row, const T *shift, int64_t n, int64_t stride, int k) { \
        if (k == GROUP) {                                                                     \
            const T *r0 = row, *r1 = row + stride, *r2 = row + 2 * stride, *r3 = row + 3 * stride; \
            _Pragma("omp simd")                                                               \
            for (int64_t i = 0; i < n; i++) {                                                 \
                T c = shift[i], d0 = r0[i] - c, d1 = r1[i] - c, d2 = r2[i] - c, d3 = r3[i] - c; \
                csum[i] += (d0 + d1) + (d2 + d3);                                             \
                csq[i] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);                          \
            }                                                                                 \
            return;                                                                           \
        }                                                                                     \
        for (int j = 0; j < k; j++) {                                                         \
            const T *r = row + j * stride;                                                    \
            _Pragma("omp simd")                                                               \
            for (int64_t i = 0; i < n; i++) {                                                 \
                T d = r[i] - shift[i];                                                        \
                csum[i] += d;                                                                 \
                csq[i] += d * d;                                                              \
            }                                                                                 \
        }                                                                                     \
    }

/* Per-thread buffers of one layer() call: each thread's `cols` of the unit-row sum and of x's column sums and
   squares (nt_max threads), and x's first row as the columns' shift */
#define DEFINE_BUFFERS(T, NAME)                                                               \
    typedef struct {                                                                          \
        T *units, *csum, *csq, *shift;                                                        \
    } NAME;

/* One layer's forward: h and x (rows, cols), row by row, with the sum of h's rows scaled to unit norm (each
   thread adds its rows into its own `cols` of `units`, added up at the end; its squared norm is *pairs) and x's
   column sums and squares about the shift (each thread into its own `cols` of csum, csq), each thread the same
   rows of both, as torch's threads wrote them. x's sums are taken about `shift` (see layer()). */
#define DEFINE_LAYER(T, NAME, ROW, AXPY, COLUMNS, BUFFERS)                                    \
    static void NAME(const T *h, const T *x, int64_t rows, int64_t cols, T lo, T hi, T shift, BUFFERS *buf, \
                     int nt_max, LayerSums *sums, double *pairs, int *threads) {              \
        double hs = 0, hq = 0, xs = 0, xq = 0, out = 0, nonzero = 0;                          \
        int used = 1;                                                                         \
        _Pragma("omp parallel if (rows * cols >= GRAIN) num_threads(nt_max) reduction(+:hs,hq,xs,xq,out,nonzero)") \
        {                                                                                     \
            int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();                     \
            int64_t first = rows * t / nt, last = rows * (t + 1) / nt;                        \
            T *unit = buf->units + t * cols, *csum = buf->csum + t * cols, *csq = buf->csq + t * cols; \
            memset(unit, 0, cols * sizeof(T));                                               \
            memset(csum, 0, cols * sizeof(T));                                               \
            memset(csq, 0, cols * sizeof(T));                                                \
            if (t == 0) used = (int)nt;                                                       \
            LayerSums acc = {0, 0, 0, 0, 0, 0};                                               \
            for (int64_t r = first; r < last; r += GROUP) {                                   \
                int k = last - r < GROUP ? (int)(last - r) : GROUP;                           \
                T scale[GROUP];                                                               \
                for (int j = 0; j < k; j++) {                                                 \
                    double sq = ROW(h + (r + j) * cols, x + (r + j) * cols, cols, shift, lo, hi, &acc); \
                    scale[j] = (T)(1.0 / sqrt(sq));                                           \
                }                                                                             \
                AXPY(unit, h + r * cols, cols, cols, k, scale);                               \
                COLUMNS(csum, csq, x + r * cols, buf->shift, cols, cols, k);                  \
            }                                                                                 \
            hs += acc.hs;                                                                     \
            hq += acc.hq;                                                                     \
            xs += acc.xs;                                                                     \
            xq += acc.xq;                                                                     \
            out += acc.out;                                                                   \
            nonzero += acc.nonzero;                                                           \
        }                                                                                     \
        double p = 0;                                                                         \
        for (int64_t j = 0; j < cols; j++) {                                                  \
            double u = 0;                                                                     \
            for (int t = 0; t < used; t++) u += buf->units[t * cols + j];                     \
            p += u * u;                                                                       \
        }                                                                                     \
        *sums = (LayerSums){hs, hq, xs, xq, out, nonzero};                                    \
        *pairs = p;                                                                           \
        *threads = used;                                                                      \
    }

/* The channel statistics of x (rows, cols) from the threads' column sums: channel c is the `cols / channels`
   contiguous columns c * per .. (c + 1) * per - 1 (the positions of an (N, C, H, W) tensor; one column per unit for
   an (N, C) one). Each column's mean and (biased) variance over the rows, in double, from its sums about its shift;
   a channel's mean is its columns' mean, its variance their mean variance plus the variance of their means.
   *sq_mean = mean over channels of the squared channel means (each squared in T), *var = mean over channels of
   their variances. */
#define DEFINE_CHANNELS(T, NAME, BUFFERS)                                                     \
    static int NAME(const BUFFERS *buf, int used, int64_t rows, int64_t cols, int64_t channels, double *sq_mean, \
                    double *var) {                                                            \
        double *mean = malloc((2 * (size_t)cols + 1) * sizeof(double)), *cvar = mean + cols; \
        if (!mean) return -1;                                                                 \
        for (int64_t j = 0; j < cols; j++) {                                                  \
            double s = 0, q = 0;                                                              \
            for (int t = 0; t < used; t++) {                                                  \
                s += buf->csum[t * cols + j];                                                 \
                q += buf->csq[t * cols + j];                                                  \
            }                                                                                 \
            double d = s / rows, v = q / rows - d * d;                                        \
            mean[j] = (double)buf->shift[j] + d;                                              \
            cvar[j] = v < 0 ? 0.0 : v; /* rounding; nan stays nan */                         \
        }                                                                                     \
        int64_t per = cols / channels;                                                        \
        double sq = 0, vsum = 0;                                                              \
        for (int64_t c = 0; c < channels; c++) {                                              \
            double m = 0, spread = 0, within = 0;                                             \
            for (int64_t j = c * per; j < (c + 1) * per; j++) m += mean[j];                   \
            m /= per;                                                                         \
            for (int64_t j = c * per; j < (c + 1) * per; j++) {                               \
                spread += (mean[j] - m) * (mean[j] - m);                                      \
                within += cvar[j];                                                            \
            }                                                                                 \
            T held = (T)m; /* squared in T: beyond T's range it overflows as T's own statistics do */ \
            sq += held * held;                                                                \
            vsum += (within + spread) / per;                                                  \
        }                                                                                     \
        free(mean);                                                                           \
        *sq_mean = sq / channels;                                                             \
        *var = vsum / channels;                                                               \
        return 0;                                                                             \
    }

DEFINE_SUMS(float, sums_f)
DEFINE_SUMS(double, sums_d)
DEFINE_TOTAL(float, total_f, sums_f)
DEFINE_TOTAL(double, total_d, sums_d)
DEFINE_ROW(float, row_f)
DEFINE_ROW(double, row_d)
DEFINE_AXPY(float, axpy_f)
DEFINE_AXPY(double, axpy_d)
DEFINE_COLUMNS(float, columns_f)
DEFINE_COLUMNS(double, columns_d)
DEFINE_BUFFERS(float, Buffers_f)
DEFINE_BUFFERS(double, Buffers_d)
DEFINE_LAYER(float, layer_f, row_f, axpy_f, columns_f, Buffers_f)
DEFINE_LAYER(double, layer_d, row_d, axpy_d, columns_d, Buffers_d)
DEFINE_CHANNELS(float, channels_f, Buffers_f)
DEFINE_CHANNELS(double, channels_d, Buffers_d)

static void *at(unsigned long long address) { return (void *)(uintptr_t)address; }

/* moments(out, is_double, n, ptr[, ptr2]): out[0] = sum, out[1] = sum of squares of the n elements at ptr;
   out[2], out[3] the same of ptr2 (dL/dh and dL/dx in one call) */
static PyObject *moments(PyObject *self, PyObject *args) {
    unsigned long long out, ptr[2] = {0, 0};
    long long n;
    int is_double;
    if (!PyArg_ParseTuple(args, "KpLK|K", &out, &is_double, &n, &ptr[0], &ptr[1])) return NULL;
    int count = ptr[1] ? 2 : 1;
    Sums r[2];
    Py_BEGIN_ALLOW_THREADS
    if (is_double) {
        const double *v[2] = {at(ptr[0]), at(ptr[1])};
        total_d(v, count, n, r);
    } else {
        const float *v[2] = {at(ptr[0]), at(ptr[1])};
        total_f(v, count, n, r);
    }
    Py_END_ALLOW_THREADS
    double *o = at(out);
    for (int k = 0; k < count; k++) {
        o[2 * k] = r[k].sum;
        o[2 * k + 1] = r[k].sq;
    }
    Py_RETURN_NONE;
}

/* The buffers of one layer() call in one allocation: units, csum, csq (nt_max * cols each) and shift (cols);
   shift = x's first row, 0 where it is not finite */
#define DEFINE_ALLOCATE(T, NAME, BUFFERS)                                                     \
    static int NAME(BUFFERS *buf, const T *x, int64_t rows, int64_t cols, int nt_max) {      \
        size_t per = (size_t)nt_max * cols;                                                   \
        T *all = malloc((3 * per + cols + 1) * sizeof(T));                                      \
        if (!all) return -1;                                                                  \
        *buf = (BUFFERS){all, all + per, all + 2 * per, all + 3 * per};                       \
        for (int64_t j = 0; j < cols; j++) buf->shift[j] = rows > 0 && isfinite(x[j]) ? x[j] : (T)0; \
        return 0;                                                                             \
    }

DEFINE_ALLOCATE(float, allocate_f, Buffers_f)
DEFINE_ALLOCATE(double, allocate_d, Buffers_d)

/* layer(out, is_double, rows, cols, channels, h, x, lo, hi): h^l and x^l, both (rows, cols), x's `channels`
   channels each `cols / channels` contiguous columns.
   out[0] = sum of h, out[1] = its sum of squares, out[2] = squared norm of the sum of h's rows scaled to unit
   norm, out[3] = elements of h outside [lo, hi]; out[4] = sum of x, out[5] = its sum of squared deviations from
   the mean, out[6] = elements of x not 0; out[7] = x's mean over channels of the squared channel means, out[8] its
   mean over channels of the channel variances (see DEFINE_CHANNELS). x's deviations are taken from its first
   element (when finite) and corrected in double: exact enough where the mean dominates the spread (sigmoid's 0.5),
   unlike E[x^2] - E[x]^2 in float32; each column's from its first row's element, likewise. */
static PyObject *layer(PyObject *self, PyObject *args) {
    unsigned long long out, h, x;
    long long rows, cols, channels;
    int is_double, used, failed;
    double lo, hi, pairs, shift, chan_sq_mean = NAN, chan_var = NAN;
    if (!PyArg_ParseTuple(args, "KpLLLKKdd", &out, &is_double, &rows, &cols, &channels, &h, &x, &lo, &hi))
        return NULL;
    int nt_max = omp_get_max_threads();
    Buffers_f buf_f;
    Buffers_d buf_d;
    failed = is_double ? allocate_d(&buf_d, at(x), rows, cols, nt_max) : allocate_f(&buf_f, at(x), rows, cols, nt_max);
    if (failed) return PyErr_NoMemory();
    LayerSums sums;
    Py_BEGIN_ALLOW_THREADS
    if (is_double) {
        const double *xv = at(x);
        shift = rows * cols > 0 && isfinite(xv[0]) ? xv[0] : 0.0;
        layer_d(at(h), xv, rows, cols, lo, hi, shift, &buf_d, nt_max, &sums, &pairs, &used);
        failed = channels_d(&buf_d, used, rows, cols, channels, &chan_sq_mean, &chan_var);
        free(buf_d.units);
    } else {
        const float *xv = at(x);
        shift = rows * cols > 0 && isfinite(xv[0]) ? xv[0] : 0.0f;
        layer_f(at(h), xv, rows, cols, (float)lo, (float)hi, (float)shift, &buf_f, nt_max, &sums, &pairs, &used);
        failed = channels_f(&buf_f, used, rows, cols, channels, &chan_sq_mean, &chan_var);
        free(buf_f.units);
    }
    Py_END_ALLOW_THREADS
    if (failed) return PyErr_NoMemory();
    double n = (double)(rows * cols), m2 = sums.xq - sums.xs * sums.xs / n;
    double *o = at(out);
    o[0] = sums.hs;
    o[1] = sums.hq;
    o[2] = pairs;
    o[3] = sums.out;
    o[4] = sums.xs + shift * n;
    o[5] = m2 < 0 ? 0.0 : m2; /* rounding; nan stays nan */
    o[6] = sums.nonzero;
    o[7] = chan_sq_mean;
    o[8] = chan_var;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"moments", moments, METH_VARARGS, "moments(out, is_double, n, ptr[, ptr2]): sum, sum of squares of each"},
    {"layer", layer, METH_VARARGS,
     "layer(out, is_double, rows, cols, channels, h, x, lo, hi): a layer's forward sums and x's channel moments"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fused", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fused(void) { return PyModule_Create(&module); }
