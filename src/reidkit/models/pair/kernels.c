/* Fused NCC forward for reidkit.models.ncc (inference): normalised patches and band correlations of whole
 * (map, channel) blocks, kept in cache, instead of materialising patch stores for a batched matrix product.
 *
 * For every block (n, c) of two (N, C, H, W) float32 maps A and B:
 *   P[j][y][x]  = normalised k x k patch of A at (y, x), component j = u*k + v  (zero padding counts)
 *   Q[j][y'][x] = the same for B, with `radius` zero rows above and below (rows outside B correlate to 0)
 *   out[n][c][y][x][t] = sum_j P[j][y][x] * Q[j][y + t / W][t % W],  t < (2r+1)*W, rows y < H only
 * `out` has the (N, C, H + 2r, W, (2r+1)*W) layout of NormalizedCrossCorrelation.correlate_padded; its padding
 * rows are set to 0. Normalisation: mean and sum of squared deviations over the k*k values (zeros outside
 * the map included), scale = 1 / sqrt(ss + eps), as NormalizedCrossCorrelation._patch_terms computes it.
 * Built by reidkit.models.native with the system C compiler (-O3 -march=native); plain C, no OpenMP: the caller
 * splits blocks across threads (ctypes releases the GIL). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __linux__
#include <sys/mman.h>
#endif

static void normalised_patches(const float *map, int h, int w, int k, float eps, float *dst, int dst_rows,
                               int first_row, float *scratch, float *scale_out) {
    /* dst: (k*k, dst_rows, w); patches of map rows 0..h-1 go to dst rows first_row..first_row+h-1.
     * scratch: k * (h + k - 1) * w + 3 * h * w floats. shifted[v] is the zero-padded map shifted left by
     * v - k/2 columns, with pitch w: patch component (u, v) of all positions is then the contiguous run
     * shifted[v][u * w ..], so every loop below is one long vectorised run over the h * w positions. */
    const int half = k / 2, kk = k * k, ph = h + 2 * half, hw = h * w;
    float *shifted = scratch, *sum = shifted + (size_t)k * ph * w, *sum_sq = sum + hw, *scale = sum_sq + hw;
    for (int v = 0; v < k; ++v) {
        float *sv = shifted + (size_t)v * ph * w;
        memset(sv, 0, sizeof(float) * ph * w);
        for (int y = 0; y < h; ++y)
            for (int x = 0; x < w; ++x) {
                int xx = x + v - half;
                sv[(size_t)(y + half) * w + x] = (xx < 0 || xx >= w) ? 0.0f : map[(size_t)y * w + xx];
            }
    }
    memset(sum, 0, sizeof(float) * 2 * hw);
    for (int u = 0; u < k; ++u)
        for (int v = 0; v < k; ++v) {
            const float *run = shifted + (size_t)v * ph * w + (size_t)u * w;
            for (int i = 0; i < hw; ++i) {
                sum[i] += run[i];
                sum_sq[i] += run[i] * run[i];
            }
        }
    const float inv = 1.0f / (float)kk;
    float *offset = sum; /* reuse: the mean is folded into the offset */
    for (int i = 0; i < hw; ++i) {
        float mean = sum[i] * inv;
        float ss = (sum_sq[i] * inv - mean * mean) * (float)kk;
        float sc = 1.0f / sqrtf((ss > 0.0f ? ss : 0.0f) + eps);
        scale[i] = sc;
        offset[i] = -mean * sc;
    }
    if (scale_out) memcpy(scale_out, scale, sizeof(float) * hw);
    for (int u = 0; u < k; ++u)
        for (int v = 0; v < k; ++v) {
            const float *run = shifted + (size_t)v * ph * w + (size_t)u * w;
            float *plane = dst + ((size_t)(u * k + v) * dst_rows + first_row) * w;
            for (int i = 0; i < hw; ++i) plane[i] = run[i] * scale[i] + offset[i];
        }
}

/* Generic band product: out[y][x][t] for any band width T (accumulators in L1). */
static void band_rows(const float *p, const float *q, float *out, int h, int w, int kk, int hq, int T) {
    const size_t p_stride = (size_t)h * w, q_stride = (size_t)hq * w;
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x) {
            float *o = out + ((size_t)y * w + x) * T;
            memset(o, 0, sizeof(float) * T);
            for (int j = 0; j < kk; ++j) {
                const float pv = p[j * p_stride + (size_t)y * w + x];
                const float *qj = q + j * q_stride + (size_t)y * w;
                for (int t = 0; t < T; ++t) o[t] += pv * qj[t];
            }
        }
}

/* The paper's shape, T = 60 (5 rows x 12 columns): register-blocked with GCC/Clang vector types. XB output
 * positions x share each load of Q's 4 x 16 band values; the 4th vector covers t = 48..63 and its last 4 lanes
 * spill into the next output row, which is written after it (or is one of the block's padding rows). Q must
 * have 4 readable floats past its end. */
typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4), may_alias));
typedef int vi16 __attribute__((vector_size(64)));

static inline v16 relu16(v16 x) { return (v16)((vi16)x & (x > (v16){0})); }
#ifdef __AVX512F__
#define XB 4 /* 16 accumulators + 4 band vectors fit the 32 zmm registers */
#else
#define XB 2
#endif

static inline void band_block60(const float *p, const float *q, float *out, int y, int x, int nx, int w, int kk,
                                size_t p_stride, size_t q_stride) {
    v16 acc[XB][4];
    for (int i = 0; i < XB; ++i)
        for (int v = 0; v < 4; ++v) acc[i][v] = (v16){0};
    for (int j = 0; j < kk; ++j) {
        const float *qj = q + j * q_stride + (size_t)y * w;
        const v16 q0 = *(const v16u *)qj, q1 = *(const v16u *)(qj + 16), q2 = *(const v16u *)(qj + 32),
                  q3 = *(const v16u *)(qj + 48);
        const float *pj = p + j * p_stride + (size_t)y * w + x;
        for (int i = 0; i < XB; ++i) {
            if (i >= nx) break;
            const float pv = pj[i];
            acc[i][0] += q0 * pv;
            acc[i][1] += q1 * pv;
            acc[i][2] += q2 * pv;
            acc[i][3] += q3 * pv;
        }
    }
    for (int i = 0; i < nx && i < XB; ++i) {
        float *o = out + ((size_t)y * w + x + i) * 60;
        for (int v = 0; v < 4; ++v) *(v16u *)(o + 16 * v) = acc[i][v];
    }
}

static void band_rows60(const float *p, const float *q, float *out, int h, int w, int kk, int hq) {
    const size_t p_stride = (size_t)h * w, q_stride = (size_t)hq * w;
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; x += XB) band_block60(p, q, out, y, x, w - x < XB ? w - x : XB, w, kk, p_stride, q_stride);
}

/* Blocks first..last-1 of the N*C (map, channel) blocks. Returns 0, or -1 if scratch memory was unavailable. */
int ncc_forward_blocks(const float *a, const float *b, float *out, int h, int w, int k, int radius, float eps,
                       long first, long last) {
    const int kk = k * k, hq = h + 2 * radius, T = (2 * radius + 1) * w;
    const size_t map = (size_t)h * w, out_block = (size_t)hq * w * T;
    float *p = malloc(sizeof(float) * kk * map);
    /* zero rows stay zero (only rows r..r+h-1 are rewritten); +16 floats: band_rows60 reads 4 past the end */
    float *q = calloc((size_t)kk * hq * w + 16, sizeof(float));
    float *scratch = malloc(sizeof(float) * ((size_t)k * (h + k - 1) * w + 3 * map));
    if (!p || !q || !scratch) {
        free(p);
        free(q);
        free(scratch);
        return -1;
    }
    for (long block = first; block < last; ++block) {
        normalised_patches(a + block * map, h, w, k, eps, p, h, 0, scratch, NULL);
        normalised_patches(b + block * map, h, w, k, eps, q, hq, radius, scratch, NULL);
        float *dst = out + block * out_block;
        if (T == 60 && radius > 0) /* radius 0: no padding rows to absorb band_rows60's 4-float spill */
            band_rows60(p, q, dst, h, w, kk, hq);
        else
            band_rows(p, q, dst, h, w, kk, hq, T);
        /* padding rows: zeros rather than stale memory (consumers multiply them before dropping them) */
        memset(dst + (size_t)h * w * T, 0, sizeof(float) * (hq - h) * w * T);
    }
    free(p);
    free(q);
    free(scratch);
    return 0;
}

/* Ask for transparent huge pages on the 2 MiB-aligned interior of a large, not yet touched output buffer:
 * the correlations of a 64-pair batch are ~190 MB, and first-touch faults of 4 KiB pages cost more than
 * computing them (measured). Best effort: returns madvise's result, 1 where unsupported. */
int advise_huge_pages(void *ptr, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const uintptr_t huge = (uintptr_t)2 << 20;
    uintptr_t start = ((uintptr_t)ptr + huge - 1) & ~(huge - 1), end = ((uintptr_t)ptr + bytes) & ~(huge - 1);
    if (end <= start) return 0;
    return madvise((void *)start, end - start, MADV_HUGEPAGE);
#else
    (void)ptr;
    (void)bytes;
    return 1;
#endif
}

/* ---------------------------------------------------------------------------------------------------------------
 * IDLA (reidkit.models.idla) inference: cross-input neighbourhood differences fused with the patch summary.
 *
 * For every pair n, output o and position p = (y, x) of the (C, H, W) maps f, g:
 *   out[n][o][p] = ReLU(bias[o] + sum_{c, k} weight[o][c*25 + k] * ReLU(f[c][p] - g[c][y + dy_k][x + dx_k]))
 * with the 5x5 neighbourhood k = (dy + 2) * 5 + (dx + 2) and g zero outside its map - exactly
 * PatchSummary(neighbourhood_differences(f, g)). The (C*25, N*H*W) difference matrix is never materialised: for
 * 16 consecutive positions at a time the differences are formed in registers and fed straight into 25
 * accumulators. shifted[dx] is g zero-padded and shifted by dx - 2 columns with pitch W, so the neighbour at
 * (dy, dx) of positions p..p+15 is the contiguous run shifted[dx][p + (dy + 2) * W]. */
#define IDLA_OUT 25

/* shifted[v][ch] (planes of `plane` floats, pitch w) = map channel ch zero-padded by k/2 rows above and below and
 * shifted by v - k/2 columns: row y + k/2, column x holds g[ch][y][x + v - k/2] (0 outside the map). */
static void shift_columns(const float *g, int c, int h, int w, int k, size_t plane, float *shifted) {
    const int half = k / 2;
    for (int v = 0; v < k; ++v)
        for (int ch = 0; ch < c; ++ch) {
            float *sv = shifted + ((size_t)v * c + ch) * plane;
            memset(sv, 0, sizeof(float) * plane);
            for (int y = 0; y < h; ++y)
                for (int x = 0; x < w; ++x) {
                    int xx = x + v - half;
                    if (xx >= 0 && xx < w) sv[(size_t)(y + half) * w + x] = g[((size_t)ch * h + y) * w + xx];
                }
        }
}

static void idla_one_pair(const float *f, const float *g, const float *weight_t, const float *bias, float *out,
                          int c, int h, int w, int k, float *shifted) {
    const int half = k / 2, kk = k * k, hw = h * w, ph = h + 2 * half;
    const size_t plane = (size_t)ph * w + 16; /* +16: the last tile reads past the map */
    shift_columns(g, c, h, w, k, plane, shifted);
    for (int p = 0; p < hw; p += 16) {
        v16 acc[IDLA_OUT]; /* fully unrolled below so that the 25 accumulators live in registers */
#pragma GCC unroll 32
        for (int o = 0; o < IDLA_OUT; ++o) acc[o] = (v16){0};
        for (int ch = 0; ch < c; ++ch) {
            v16 fv;
            if (p + 16 <= hw) {
                fv = *(const v16u *)(f + (size_t)ch * hw + p);
            } else { /* last partial tile: lanes past the map are computed on zeros and not stored */
                float tail[16] = {0};
                memcpy(tail, f + (size_t)ch * hw + p, sizeof(float) * (hw - p));
                fv = *(const v16u *)tail;
            }
            for (int j = 0; j < kk; ++j) {
                const int dy = j / k, dx = j % k;
                const v16 nb = *(const v16u *)(shifted + ((size_t)dx * c + ch) * plane + (size_t)dy * w + p);
                const v16 d = relu16(fv - nb);
                const float *wt = weight_t + ((size_t)ch * kk + j) * IDLA_OUT;
#pragma GCC unroll 32
                for (int o = 0; o < IDLA_OUT; ++o) acc[o] += d * wt[o];
            }
        }
        const int lanes = hw - p < 16 ? hw - p : 16;
#pragma GCC unroll 32
        for (int o = 0; o < IDLA_OUT; ++o) {
            const v16 r = relu16(acc[o] + bias[o]);
            float *dst = out + (size_t)o * hw + p;
            if (lanes == 16)
                *(v16u *)dst = r;
            else
                for (int i = 0; i < lanes; ++i) dst[i] = r[i];
        }
    }
}

/* Pairs first..last-1. f, g: (N, C, H, W); weight_t: (C*k*k, 25), the patch-summary weights transposed; bias:
 * (25); out: (N, 25, H, W). Returns 0, or -1 if scratch memory was unavailable. */
int idla_summary_pairs(const float *f, const float *g, const float *weight_t, const float *bias, float *out, int c,
                       int h, int w, int k, long first, long last) {
    const size_t plane = (size_t)(h + k - 1) * w + 16;
    float *shifted = malloc(sizeof(float) * (size_t)k * c * plane);
    if (!shifted) return -1;
    const size_t map = (size_t)c * h * w;
    for (long n = first; n < last; ++n)
        idla_one_pair(f + n * map, g + n * map, weight_t, bias, out + n * (size_t)IDLA_OUT * h * w, c, h, w, k,
                      shifted);
    free(shifted);
    return 0;
}

/* Backward of idla_summary_pairs for pairs first..last-1 (training). Inputs: f, g (N, C, H, W); weight_t as in the
 * forward; gz = dL/d(summary output) already multiplied by the output ReLU's mask, (N, 25, H, W). Outputs:
 * grad_f, grad_g (N, C, H, W), written; grad_wt (C*k*k, 25), accumulated (each thread passes its own buffer).
 * With d = f[c][p] - g[c][p + offset_j] and K = ReLU(d): dL/dW[o][c,j] = sum_p gz[o][p] K[c,j][p] and
 * dL/dd[c,j][p] = [d > 0] sum_o W[o][c,j] gz[o][p], which adds to grad_f[c][p] and subtracts from g's neighbour.
 * Loop order: (c, j) outer, tiles of 16 positions inner, so the 25 weight-gradient accumulators stay in registers
 * for a whole map and the 25 gz vectors of a tile are loaded once for both products. */
int idla_summary_backward_pairs(const float *f, const float *g, const float *weight_t, const float *gz_all,
                                float *grad_f, float *grad_g, float *grad_wt, int c, int h, int w, int k,
                                long first, long last) {
    const int half = k / 2, kk = k * k, hw = h * w, ph = h + 2 * half, tiles = (hw + 15) / 16;
    const size_t plane = (size_t)ph * w + 16, padded = (size_t)tiles * 16;
    float *shifted = malloc(sizeof(float) * (size_t)k * c * plane);
    float *shifted_grad = malloc(sizeof(float) * (size_t)k * c * plane);
    float *gz = malloc(sizeof(float) * IDLA_OUT * padded);
    float *fpad = malloc(sizeof(float) * (size_t)c * padded);
    float *gf = malloc(sizeof(float) * (size_t)c * padded);
    if (!shifted || !shifted_grad || !gz || !fpad || !gf) {
        free(shifted);
        free(shifted_grad);
        free(gz);
        free(fpad);
        free(gf);
        return -1;
    }
    const size_t map = (size_t)c * hw;
    for (long n = first; n < last; ++n) {
        const float *fn = f + n * map, *gn = g + n * map;
        /* inputs in tile-padded layouts (zeros past the map, so the last tile's extra lanes contribute nothing) */
        shift_columns(gn, c, h, w, k, plane, shifted);
        memset(shifted_grad, 0, sizeof(float) * (size_t)k * c * plane);
        memset(gz, 0, sizeof(float) * IDLA_OUT * padded);
        memset(fpad, 0, sizeof(float) * (size_t)c * padded);
        memset(gf, 0, sizeof(float) * (size_t)c * padded);
        for (int o = 0; o < IDLA_OUT; ++o)
            memcpy(gz + (size_t)o * padded, gz_all + (n * IDLA_OUT + o) * (size_t)hw, sizeof(float) * hw);
        for (int ch = 0; ch < c; ++ch) memcpy(fpad + (size_t)ch * padded, fn + (size_t)ch * hw, sizeof(float) * hw);

        for (int ch = 0; ch < c; ++ch)
            for (int j = 0; j < kk; ++j) {
                const int dy = j / k, dx = j % k;
                const float *wt = weight_t + ((size_t)ch * kk + j) * IDLA_OUT;
                const float *nb_run = shifted + ((size_t)dx * c + ch) * plane + (size_t)dy * w;
                float *nb_grad = shifted_grad + ((size_t)dx * c + ch) * plane + (size_t)dy * w;
                float *gfc = gf + (size_t)ch * padded;
                v16 gw[IDLA_OUT];
#pragma GCC unroll 32
                for (int o = 0; o < IDLA_OUT; ++o) gw[o] = (v16){0};
                for (int t = 0; t < tiles; ++t) {
                    const int p = t * 16;
                    const v16 diff = *(const v16u *)(fpad + (size_t)ch * padded + p) - *(const v16u *)(nb_run + p);
                    const vi16 positive = diff > (v16){0};
                    const v16 relu = (v16)((vi16)diff & positive);
                    v16 gd = (v16){0};
#pragma GCC unroll 32
                    for (int o = 0; o < IDLA_OUT; ++o) {
                        const v16 gzo = *(const v16u *)(gz + (size_t)o * padded + p);
                        gw[o] += gzo * relu;
                        gd += gzo * wt[o];
                    }
                    gd = (v16)((vi16)gd & positive);
                    *(v16u *)(gfc + p) += gd;
                    *(v16u *)(nb_grad + p) -= gd;
                }
                float *dst = grad_wt + ((size_t)ch * kk + j) * IDLA_OUT;
#pragma GCC unroll 32
                for (int o = 0; o < IDLA_OUT; ++o) {
                    float sum = 0.0f;
                    for (int i = 0; i < 16; ++i) sum += gw[o][i];
                    dst[o] += sum;
                }
            }
        /* un-shift: shifted_grad[dx][c][(y + half) * w + x] belongs to g[c][y][x + dx - half] */
        float *ggn = grad_g + n * map, *gfn = grad_f + n * map;
        memset(ggn, 0, sizeof(float) * map);
        for (int v = 0; v < k; ++v)
            for (int ch = 0; ch < c; ++ch) {
                const float *sv = shifted_grad + ((size_t)v * c + ch) * plane;
                for (int y = 0; y < h; ++y)
                    for (int x = 0; x < w; ++x) {
                        int xx = x + v - half;
                        if (xx >= 0 && xx < w) ggn[((size_t)ch * h + y) * w + xx] += sv[(size_t)(y + half) * w + x];
                    }
            }
        for (int ch = 0; ch < c; ++ch) memcpy(gfn + (size_t)ch * hw, gf + (size_t)ch * padded, sizeof(float) * hw);
    }
    free(shifted);
    free(shifted_grad);
    free(gz);
    free(fpad);
    free(gf);
    return 0;
}

/* ---------------------------------------------------------------------------------------------------------------
 * IDLA-NCC training (reidkit.models.ncc): patch normalisation, band correlation and the 1x1 summary convolution
 * that consumes the correlations, fused, forward and backward. Neither the normalised patches (25x the maps) nor
 * the correlation tensor (~1 GB for a 400-pair training batch) is ever written to memory: each (pair, channel)
 * block is normalised into cache-resident buffers and processed one map row at a time.
 *
 * a, b: (N, C, H, W) maps; P, Q their normalised patches (as ncc_forward_blocks); wt: summary weights
 * (C, T, opad), T = (2r+1)*W <= 64 candidates, t = d*W + x2 the candidate at row y + d - r, column x2;
 *   corr[n][c][y][x][t] = sum_j P[j][y][x] * Q[j][y + d - r][x2]
 *   s[n][y][x][o]       = sum_{c, t} corr[n][c][y][x][t] * wt[c][t][o]   (before the bias and ReLU)
 * s: (N, H, W, opad), opad a multiple of 16 (<= 32). The correlation row of one (pair, channel, y) is W x 64
 * floats (t padded to 64: lanes t >= T hold products with the next row and are never used). */
#define NCC_T 64
#define NCC_XB 4

static inline v16 load16(const float *ptr) { return *(const v16u *)ptr; }

/* The three 64-lane products of these kernels: acc[i][0..63] += sum_k scalars[i * step_i + k * step_k] *
 * rows[k * row_stride + 0..63] for i < nx (<= NCC_XB), k < count. acc stays in registers. */
static inline __attribute__((always_inline)) void accumulate_rows64(v16 acc[NCC_XB][4], int nx, const float *rows,
                                                                    size_t row_stride, const float *scalars,
                                                                    size_t step_i, size_t step_k, int count) {
    for (int k = 0; k < count; ++k) {
        const float *row = rows + k * row_stride;
        const v16 r0 = load16(row), r1 = load16(row + 16), r2 = load16(row + 32), r3 = load16(row + 48);
        for (int i = 0; i < NCC_XB; ++i) {
            if (i >= nx) break;
            const float sv = scalars[i * step_i + k * step_k];
            acc[i][0] += r0 * sv;
            acc[i][1] += r1 * sv;
            acc[i][2] += r2 * sv;
            acc[i][3] += r3 * sv;
        }
    }
}

typedef struct {
    float *p, *q, *scratch, *scale_p, *scale_q, *corr, *dcorr, *dp, *dq, *qt;
} ncc_buffers;

static void ncc_free(ncc_buffers *buf) {
    free(buf->p);
    free(buf->q);
    free(buf->scratch);
    free(buf->scale_p);
    free(buf->scale_q);
    free(buf->corr);
    free(buf->dcorr);
    free(buf->dp);
    free(buf->dq);
    free(buf->qt);
}

static int ncc_alloc(ncc_buffers *buf, int h, int w, int k, int radius, int backward) {
    const size_t kk = (size_t)k * k, hw = (size_t)h * w, hq = (size_t)(h + 2 * radius) * w;
    memset(buf, 0, sizeof(*buf));
    buf->p = malloc(sizeof(float) * kk * hw);
    buf->q = calloc(kk * hq + NCC_T, sizeof(float)); /* zero rows stay zero; slack: the last band read spills */
    buf->scratch = malloc(sizeof(float) * ((size_t)k * (h + k - 1) * w + 3 * hw));
    buf->scale_p = malloc(sizeof(float) * hw);
    buf->scale_q = malloc(sizeof(float) * hw);
    buf->corr = malloc(sizeof(float) * (size_t)w * NCC_T);
    int ok = buf->p && buf->q && buf->scratch && buf->scale_p && buf->scale_q && buf->corr;
    if (backward) {
        buf->dcorr = malloc(sizeof(float) * (size_t)w * NCC_T);
        buf->dp = malloc(sizeof(float) * kk * hw);
        buf->dq = malloc(sizeof(float) * (kk * hq + NCC_T));
        buf->qt = malloc(sizeof(float) * (hq + NCC_T) * 32); /* Q position-major, components padded to 32 */
        ok = ok && buf->dcorr && buf->dp && buf->dq && buf->qt;
    }
    if (!ok) ncc_free(buf);
    return ok ? 0 : -1;
}

/* corr[x][0..63] for row y of a block: P planes of h*w, Q planes of (h+2r)*w (band of row y starts at y*w) */
static void ncc_corr_row(const ncc_buffers *buf, int y, int h, int w, int kk, int radius) {
    const size_t p_plane = (size_t)h * w, q_plane = (size_t)(h + 2 * radius) * w;
    for (int x = 0; x < w; x += NCC_XB) {
        const int nx = w - x < NCC_XB ? w - x : NCC_XB;
        v16 acc[NCC_XB][4];
        for (int i = 0; i < NCC_XB; ++i)
            for (int v = 0; v < 4; ++v) acc[i][v] = (v16){0};
        accumulate_rows64(acc, nx, buf->q + (size_t)y * w, q_plane, buf->p + (size_t)y * w + x, 1, p_plane, kk);
        for (int i = 0; i < nx; ++i)
            for (int v = 0; v < 4; ++v) *(v16u *)(buf->corr + (size_t)(x + i) * NCC_T + 16 * v) = acc[i][v];
    }
}

static void ncc_normalise_block(ncc_buffers *buf, const float *a, const float *b, int h, int w, int k, int radius,
                                float eps) {
    normalised_patches(a, h, w, k, eps, buf->p, h, 0, buf->scratch, buf->scale_p);
    normalised_patches(b, h, w, k, eps, buf->q, h + 2 * radius, radius, buf->scratch, buf->scale_q);
}

static inline __attribute__((always_inline)) void ncc_summary_pair(ncc_buffers *buf, const float *a, const float *b,
                                                                   const float *wt, float *s, long n, int c, int h,
                                                                   int w, int k, int radius, float eps, int no) {
    const int kk = k * k, T = (2 * radius + 1) * w, opad = 16 * no;
    const size_t hw = (size_t)h * w;
    float *sn = s + (size_t)n * hw * opad;
    memset(sn, 0, sizeof(float) * hw * opad);
    for (int ch = 0; ch < c; ++ch) {
        const size_t block = ((size_t)n * c + ch) * hw;
        ncc_normalise_block(buf, a + block, b + block, h, w, k, radius, eps);
        const float *wtc = wt + (size_t)ch * T * opad;
        for (int y = 0; y < h; ++y) {
            ncc_corr_row(buf, y, h, w, kk, radius);
            for (int x = 0; x < w; x += NCC_XB) {
                const int nx = w - x < NCC_XB ? w - x : NCC_XB;
                v16 acc[NCC_XB][2];
                for (int i = 0; i < nx; ++i) {
                    acc[i][0] = load16(sn + ((size_t)y * w + x + i) * opad);
                    acc[i][1] = no > 1 ? load16(sn + ((size_t)y * w + x + i) * opad + 16) : (v16){0};
                }
                for (int t = 0; t < T; ++t) {
                    const v16 w0 = load16(wtc + (size_t)t * opad), w1 = no > 1 ? load16(wtc + (size_t)t * opad + 16)
                                                                               : (v16){0};
                    for (int i = 0; i < NCC_XB; ++i) {
                        if (i >= nx) break;
                        const float cv = buf->corr[(size_t)(x + i) * NCC_T + t];
                        acc[i][0] += w0 * cv;
                        if (no > 1) acc[i][1] += w1 * cv;
                    }
                }
                for (int i = 0; i < nx; ++i) {
                    *(v16u *)(sn + ((size_t)y * w + x + i) * opad) = acc[i][0];
                    if (no > 1) *(v16u *)(sn + ((size_t)y * w + x + i) * opad + 16) = acc[i][1];
                }
            }
        }
    }
}

/* Pairs first..last-1. Returns 0, -1 without scratch memory, -2 for unsupported sizes. */
int ncc_summary_pairs(const float *a, const float *b, const float *wt, float *s, int c, int h, int w, int k,
                      int radius, float eps, int opad, long first, long last) {
    if (opad % 16 || opad < 16 || opad > 32 || (2 * radius + 1) * w > NCC_T || k * k > 32) return -2;
    ncc_buffers buf;
    if (ncc_alloc(&buf, h, w, k, radius, 0)) return -1;
    for (long n = first; n < last; ++n) {
        if (opad == 16)
            ncc_summary_pair(&buf, a, b, wt, s, n, c, h, w, k, radius, eps, 1);
        else
            ncc_summary_pair(&buf, a, b, wt, s, n, c, h, w, k, radius, eps, 2);
    }
    ncc_free(&buf);
    return 0;
}

/* Backward of the patch normalisation for one map: P = (X - mean) * scale per position, X_j the k*k patch values
 * (zero padding included), scale = 1/sqrt(sum (X - mean)^2 + eps). With g = dL/dP:
 *   dL/dY_j = scale * (g_j - P_j * sum_i g_i P_i),   dL/dX_j = dL/dY_j - mean_i dL/dY_i,
 * and patch value X_j of position (y, x), j = u*k + v, is map[y + u - k/2][x + v - k/2]: its gradient is added
 * there (positions outside the map are padding). p, g: planes j at plane * j + row0 * w; g is overwritten;
 * scratch: 2 * h * w floats. */
static void ncc_normalisation_backward(const float *p, float *g, const float *scale, float *dmap, int h, int w,
                                       int k, size_t plane, int row0, float *scratch) {
    const int kk = k * k, half = k / 2;
    const size_t hw = (size_t)h * w, off = (size_t)row0 * w;
    float *dot = scratch, *mean = scratch + hw;
    memset(scratch, 0, sizeof(float) * 2 * hw);
    for (int j = 0; j < kk; ++j) {
        const float *pj = p + j * plane + off, *gj = g + j * plane + off;
        for (size_t i = 0; i < hw; ++i) dot[i] += gj[i] * pj[i];
    }
    for (int j = 0; j < kk; ++j) {
        const float *pj = p + j * plane + off;
        float *gj = g + j * plane + off;
        for (size_t i = 0; i < hw; ++i) {
            gj[i] = scale[i] * (gj[i] - pj[i] * dot[i]);
            mean[i] += gj[i];
        }
    }
    const float inv = 1.0f / (float)kk;
    memset(dmap, 0, sizeof(float) * hw);
    for (int u = 0; u < k; ++u)
        for (int v = 0; v < k; ++v) {
            const float *gj = g + (u * k + v) * plane + off;
            const int dy = u - half, dx = v - half, x0 = dx < 0 ? -dx : 0, x1 = dx > 0 ? w - dx : w;
            for (int y = 0; y < h; ++y) {
                const int yy = y + dy;
                if (yy < 0 || yy >= h) continue;
                const float *src = gj + (size_t)y * w, *m = mean + (size_t)y * w;
                float *dst = dmap + (size_t)yy * w + dx;
                for (int x = x0; x < x1; ++x) dst[x] += src[x] - m[x] * inv;
            }
        }
}

/* Backward for pairs first..last-1, given ds = dL/ds (N, H, W, opad; zero in padded lanes):
 *   dcorr[x][t] = sum_o ds[y][x][o] wt[c][t][o]      dwt[c][t][o] += sum_x corr[x][t] ds[y][x][o]
 *   dP[j][y][x] = sum_t dcorr[x][t] Q[j][band t]     dQ[j][band t] += sum_x P[j][y][x] dcorr[x][t]
 * then through the normalisation to da, db (written). wtt: wt transposed, (C, outs, 64), zero for t >= T (wt
 * itself is not needed);
 * dwt: (C, T, opad), accumulated (one buffer per span of pairs). */
static inline __attribute__((always_inline)) void ncc_summary_backward_pair(
    ncc_buffers *buf, const float *a, const float *b, const float *wtt, const float *ds, float *da,
    float *db, float *dwt, long n, int c, int h, int w, int k, int radius, float eps, int outs, int no) {
    const int kk = k * k, T = (2 * radius + 1) * w, opad = 16 * no, hq = h + 2 * radius;
    const size_t hw = (size_t)h * w, p_plane = hw, q_plane = (size_t)hq * w;
    const float *dsn = ds + (size_t)n * hw * opad;
    for (int ch = 0; ch < c; ++ch) {
        const size_t block = ((size_t)n * c + ch) * hw;
        ncc_normalise_block(buf, a + block, b + block, h, w, k, radius, eps);
        const float *wttc = wtt + (size_t)ch * outs * NCC_T;
        float *dwtc = dwt + (size_t)ch * T * opad;
        /* Q position-major: qt[(row * w + x2) * 32 + j], rows in padded coordinates */
        memset(buf->qt, 0, sizeof(float) * (q_plane + NCC_T) * 32);
        for (int j = 0; j < kk; ++j)
            for (size_t i = 0; i < q_plane; ++i) buf->qt[i * 32 + j] = buf->q[j * q_plane + i];
        memset(buf->dq, 0, sizeof(float) * (kk * q_plane + NCC_T));
        for (int y = 0; y < h; ++y) {
            ncc_corr_row(buf, y, h, w, kk, radius);
            const float *dsy = dsn + (size_t)y * w * opad;
            /* dcorr rows (lanes t >= T stay 0: wtt is zero there) */
            for (int x = 0; x < w; x += NCC_XB) {
                const int nx = w - x < NCC_XB ? w - x : NCC_XB;
                v16 acc[NCC_XB][4];
                for (int i = 0; i < NCC_XB; ++i)
                    for (int v = 0; v < 4; ++v) acc[i][v] = (v16){0};
                accumulate_rows64(acc, nx, wttc, NCC_T, dsy + (size_t)x * opad, opad, 1, outs);
                for (int i = 0; i < nx; ++i)
                    for (int v = 0; v < 4; ++v) *(v16u *)(buf->dcorr + (size_t)(x + i) * NCC_T + 16 * v) = acc[i][v];
            }
            /* weight gradient, 4 candidates at a time */
            for (int t = 0; t < T; t += 4) {
                const int nt = T - t < 4 ? T - t : 4;
                v16 acc[4][2];
                for (int i = 0; i < nt; ++i) {
                    acc[i][0] = load16(dwtc + (size_t)(t + i) * opad);
                    acc[i][1] = no > 1 ? load16(dwtc + (size_t)(t + i) * opad + 16) : (v16){0};
                }
                for (int x = 0; x < w; ++x) {
                    const v16 d0 = load16(dsy + (size_t)x * opad), d1 = no > 1 ? load16(dsy + (size_t)x * opad + 16)
                                                                               : (v16){0};
                    for (int i = 0; i < 4; ++i) {
                        if (i >= nt) break;
                        const float cv = buf->corr[(size_t)x * NCC_T + t + i];
                        acc[i][0] += d0 * cv;
                        if (no > 1) acc[i][1] += d1 * cv;
                    }
                }
                for (int i = 0; i < nt; ++i) {
                    *(v16u *)(dwtc + (size_t)(t + i) * opad) = acc[i][0];
                    if (no > 1) *(v16u *)(dwtc + (size_t)(t + i) * opad + 16) = acc[i][1];
                }
            }
            /* dP: the band of row y in qt starts at position y * w and runs over t */
            for (int x = 0; x < w; x += NCC_XB) {
                const int nx = w - x < NCC_XB ? w - x : NCC_XB;
                v16 acc[NCC_XB][2];
                for (int i = 0; i < NCC_XB; ++i) acc[i][0] = acc[i][1] = (v16){0};
                for (int t = 0; t < T; ++t) {
                    const float *qv = buf->qt + ((size_t)y * w + t) * 32;
                    const v16 q0 = load16(qv), q1 = load16(qv + 16);
                    for (int i = 0; i < NCC_XB; ++i) {
                        if (i >= nx) break;
                        const float g = buf->dcorr[(size_t)(x + i) * NCC_T + t];
                        acc[i][0] += q0 * g;
                        acc[i][1] += q1 * g;
                    }
                }
                for (int i = 0; i < nx; ++i) {
                    float tmp[32];
                    *(v16u *)tmp = acc[i][0];
                    *(v16u *)(tmp + 16) = acc[i][1];
                    for (int j = 0; j < kk; ++j) buf->dp[j * p_plane + (size_t)y * w + x + i] = tmp[j];
                }
            }
            /* dQ: 4 components at a time, accumulated over the band (lanes t >= T add dcorr's zeros) */
            for (int j0 = 0; j0 < kk; j0 += NCC_XB) {
                const int nj = kk - j0 < NCC_XB ? kk - j0 : NCC_XB;
                v16 acc[NCC_XB][4];
                for (int i = 0; i < nj; ++i)
                    for (int v = 0; v < 4; ++v) acc[i][v] = load16(buf->dq + (j0 + i) * q_plane + (size_t)y * w + 16 * v);
                accumulate_rows64(acc, nj, buf->dcorr, NCC_T, buf->p + j0 * p_plane + (size_t)y * w, p_plane, 1, w);
                for (int i = 0; i < nj; ++i)
                    for (int v = 0; v < 4; ++v)
                        *(v16u *)(buf->dq + (j0 + i) * q_plane + (size_t)y * w + 16 * v) = acc[i][v];
            }
        }
        ncc_normalisation_backward(buf->p, buf->dp, buf->scale_p, da + block, h, w, k, p_plane, 0, buf->scratch);
        ncc_normalisation_backward(buf->q, buf->dq, buf->scale_q, db + block, h, w, k, q_plane, radius,
                                   buf->scratch);
    }
}

int ncc_summary_backward_pairs(const float *a, const float *b, const float *wtt, const float *ds,
                               float *da, float *db, float *dwt, int c, int h, int w, int k, int radius, float eps,
                               int opad, int outs, long first, long last) {
    if (opad % 16 || opad < 16 || opad > 32 || outs > opad || (2 * radius + 1) * w > NCC_T || k * k > 32) return -2;
    ncc_buffers buf;
    if (ncc_alloc(&buf, h, w, k, radius, 1)) return -1;
    for (long n = first; n < last; ++n) {
        if (opad == 16)
            ncc_summary_backward_pair(&buf, a, b, wtt, ds, da, db, dwt, n, c, h, w, k, radius, eps, outs, 1);
        else
            ncc_summary_backward_pair(&buf, a, b, wtt, ds, da, db, dwt, n, c, h, w, k, radius, eps, outs, 2);
    }
    ncc_free(&buf);
    return 0;
}
