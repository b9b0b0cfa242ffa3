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

/* One layer's forward: h and x (rows, cols), row by row, with the sum of h's rows scaled to unit norm (each
   thread adds its rows into its own `cols` of `units`, nt_max * cols, added up at the end; its squared norm is
   *pairs), each thread the same rows of both, as torch's threads wrote them. x's sums are taken about `shift`
   (see layer()). */
#define DEFINE_LAYER(T, NAME, ROW, AXPY)                                                      \
    static void NAME(const T *h, const T *x, int64_t rows, int64_t cols, T lo, T hi, T shift, T *units, \
                     int nt_max, LayerSums *sums, double *pairs) {                            \
        double hs = 0, hq = 0, xs = 0, xq = 0, out = 0, nonzero = 0;                          \
        int used = 1;                                                                         \
        _Pragma("omp parallel if (rows * cols >= GRAIN) num_threads(nt_max) reduction(+:hs,hq,xs,xq,out,nonzero)") \
        {                                                                                     \
            int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();                     \
            int64_t first = rows * t / nt, last = rows * (t + 1) / nt;                        \
            T *unit = units + t * cols;                                                       \
            memset(unit, 0, cols * sizeof(T));                                               \
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
            for (int t = 0; t < used; t++) u += units[t * cols + j];                          \
            p += u * u;                                                                       \
        }                                                                                     \
        *sums = (LayerSums){hs, hq, xs, xq, out, nonzero};                                    \
        *pairs = p;                                                                           \
    }

DEFINE_SUMS(float, sums_f)
DEFINE_SUMS(double, sums_d)
DEFINE_TOTAL(float, total_f, sums_f)
DEFINE_TOTAL(double, total_d, sums_d)
DEFINE_ROW(float, row_f)
DEFINE_ROW(double, row_d)
DEFINE_AXPY(float, axpy_f)
DEFINE_AXPY(double, axpy_d)
DEFINE_LAYER(float, layer_f, row_f, axpy_f)
DEFINE_LAYER(double, layer_d, row_d, axpy_d)

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

/* layer(out, is_double, rows, cols, h, x, lo, hi): h^l and x^l = phi(h^l), both (rows, cols).
   out[0] = sum of h, out[1] = its sum of squares, out[2] = squared norm of the sum of h's rows scaled to unit
   norm, out[3] = elements of h outside [lo, hi]; out[4] = sum of x, out[5] = its sum of squared deviations from
   the mean, out[6] = elements of x not 0. x's deviations are taken from its first element (when finite) and
   corrected in double: exact enough where the mean dominates the spread (sigmoid's 0.5), unlike
   E[x^2] - E[x]^2 in float32. */
static PyObject *layer(PyObject *self, PyObject *args) {
    unsigned long long out, h, x;
    long long rows, cols;
    int is_double;
    double lo, hi, pairs, shift;
    if (!PyArg_ParseTuple(args, "KpLLKKdd", &out, &is_double, &rows, &cols, &h, &x, &lo, &hi)) return NULL;
    int nt_max = omp_get_max_threads();
    void *units = malloc((size_t)nt_max * cols * (is_double ? sizeof(double) : sizeof(float)));
    if (!units) return PyErr_NoMemory();
    LayerSums sums;
    Py_BEGIN_ALLOW_THREADS
    if (is_double) {
        const double *xv = at(x);
        shift = rows * cols > 0 && isfinite(xv[0]) ? xv[0] : 0.0;
        layer_d(at(h), xv, rows, cols, lo, hi, shift, units, nt_max, &sums, &pairs);
    } else {
        const float *xv = at(x);
        shift = rows * cols > 0 && isfinite(xv[0]) ? xv[0] : 0.0f;
        layer_f(at(h), xv, rows, cols, (float)lo, (float)hi, (float)shift, units, nt_max, &sums, &pairs);
    }
    Py_END_ALLOW_THREADS
    free(units);
    double n = (double)(rows * cols), m2 = sums.xq - sums.xs * sums.xs / n;
    double *o = at(out);
    o[0] = sums.hs;
    o[1] = sums.hq;
    o[2] = pairs;
    o[3] = sums.out;
    o[4] = sums.xs + shift * n;
    o[5] = m2 < 0 ? 0.0 : m2; /* rounding; nan stays nan */
    o[6] = sums.nonzero;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"moments", moments, METH_VARARGS, "moments(out, is_double, n, ptr[, ptr2]): sum, sum of squares of each"},
    {"layer", layer, METH_VARARGS, "layer(out, is_double, rows, cols, h, x, lo, hi): a layer's forward sums"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fused", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fused(void) { return PyModule_Create(&module); }
