/* Fused inward-window attention for x86-64 CPUs with AVX-512 (float32): attnctl.core.window_cpu builds and
 * calls this file; attnctl.core.window_attention's "reference" backend is its oracle.
 *
 * For a query x with inward window W(x) (a box of wt x wh x ww keys, attnctl.core.windows) it computes
 *     out(x) = sum_{y in W(x)} p(x, y) v(y),   p(x, y) = exp(s(x, y) - m(x)) / l(x),   s(x, y) = scale q(x).k(y),
 *     m(x) = max_y s(x, y),   l(x) = sum_y exp(s(x, y) - m(x)),   lse(x) = m(x) + log l(x),
 * visiting only the keys of each window: no score outside a window is ever computed.
 *
 * Work unit: the queries of one (height, width) position whose frames share a frame window (all frames when
 * the window spans them, FreeSwim's case), up to GROUP of them. They attend exactly the same keys, so
 *   scores:  S[GROUP, keys] = Q[GROUP, dim] K^T[dim, keys]     (GROUP x 3 vectors of 16 keys per step of dim)
 *   softmax: in place on S (Q is pre-scaled by scale), as exp2((s - m) log2 e): the log2 e factor rounds the
 *            difference to the row maximum, not the score, so large logits lose no extra precision
 *   values:  O[GROUP, dim] = P[GROUP, keys] V[keys, dim]       (4 queries x 4 vectors of 16 channels per key)
 * are small dense products with register blocking and no wasted key.
 *
 * Layouts (floats; the Python side copies keys and values into them, one strip of key columns at a time):
 *   q:   query (batch, heads, tokens, dim) with the given strides, dim contiguous
 *   kt:  (batch * heads, frames, height, key_row): row = K^T of the strip (dim, key_col), then >= 16 zero floats
 *   v:   (batch * heads, frames, height, value_row): row = V of the strip (key_col, dim), then padding
 *   out: (batch, heads, tokens, dim) contiguous;  lse: (batch, heads, tokens) or NULL
 * A strip holds key columns [key_col0, key_col0 + key_col) and serves the query columns [w_begin, w_end):
 * keeping the keys of a row of positions small keeps the sliding window's keys in the L2 cache.
 * Jobs are (batch * heads) x height rows of positions; a caller splits [0, jobs) across threads.
 * Returns 0, or 1 when scratch memory cannot be allocated. */

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define GROUP 8      /* queries per work unit (frames sharing one window) */
#define KEY_BLOCK 3  /* 16-key vectors per step of the scores kernel: GROUP x KEY_BLOCK accumulators */
#define INLINE static inline __attribute__((always_inline))
#define LN2 0.69314718055994531f
#define LOG2E 1.44269504088896341f

/* 2^x for x <= 0: x = n + f with |f| <= 1/2, 2^f = e^(f ln 2) by its Taylor series to degree 7
 * (relative error < 2e-8 on |f ln 2| <= 0.35), 2^n by vscalefps. */
INLINE __m512 exp2_ps(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-150.0f));
    __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_mul_ps(_mm512_sub_ps(x, n), _mm512_set1_ps(LN2));
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* S[:, block] = Q K^T for `count` 16-key vectors; also folds each query's running max over its valid keys.
 * qp: (dim, GROUP) queries times the softmax scale; key vector c of step d at kt + offset[c] + d * key_col. */
INLINE void score_block(const float *qp, const float *kt, const int64_t *offset, const __mmask16 *valid,
                        int64_t key_col, int64_t dim, float *s, int64_t s_row, __m512 *row_max, const int count) {
    __m512 acc[GROUP][KEY_BLOCK];
    for (int m = 0; m < GROUP; m++)
        for (int c = 0; c < count; c++) acc[m][c] = _mm512_setzero_ps();
    for (int64_t d = 0; d < dim; d++) {
        __m512 k[KEY_BLOCK];
        /* lanes past a row's window read the next channel's keys or the zero padding: masked below */
        for (int c = 0; c < count; c++) k[c] = _mm512_loadu_ps(kt + offset[c] + d * key_col);
        for (int m = 0; m < GROUP; m++) {
            __m512 q = _mm512_set1_ps(qp[d * GROUP + m]);
            for (int c = 0; c < count; c++) acc[m][c] = _mm512_fmadd_ps(q, k[c], acc[m][c]);
        }
    }
    for (int m = 0; m < GROUP; m++)
        for (int c = 0; c < count; c++) {
            _mm512_storeu_ps(s + m * s_row + 16 * c, acc[m][c]);
            row_max[m] = _mm512_mask_max_ps(row_max[m], valid[c], row_max[m], acc[m][c]);
        }
}

/* O[4 queries, channels c0 .. c0 + 16 * count) = P V over every valid key; masks cover a channel tail. */
INLINE void value_block(const float *p, int64_t s_row, const float *v, const int64_t *offset, const int *keys,
                        int64_t vectors, int64_t dim, int64_t c0, const __mmask16 *channels, float *o,
                        const int count) {
    __m512 acc[4][4];
    for (int m = 0; m < 4; m++)
        for (int x = 0; x < count; x++) acc[m][x] = _mm512_setzero_ps();
    for (int64_t vec = 0; vec < vectors; vec++) {
        const float *row = v + offset[vec] + c0, *pv = p + 16 * vec;
        for (int j = 0; j < keys[vec]; j++) {
            __m512 value[4];
            for (int x = 0; x < count; x++) value[x] = _mm512_maskz_loadu_ps(channels[x], row + j * dim + 16 * x);
            for (int m = 0; m < 4; m++) {
                __m512 weight = _mm512_set1_ps(pv[m * s_row + j]);
                for (int x = 0; x < count; x++) acc[m][x] = _mm512_fmadd_ps(weight, value[x], acc[m][x]);
            }
        }
    }
    for (int m = 0; m < 4; m++)
        for (int x = 0; x < count; x++) _mm512_mask_storeu_ps(o + m * dim + c0 + 16 * x, channels[x], acc[m][x]);
}

int attnctl_window_attention(const float *q, int64_t q_batch_stride, int64_t q_head_stride, int64_t q_token_stride,
                             const float *kt, const float *v, float *out, float *lse, int64_t heads, int64_t frames,
                             int64_t height, int64_t width, int64_t dim, int64_t wt, int64_t wh, int64_t ww,
                             const int64_t *start_t, const int64_t *start_h, const int64_t *start_w, float scale,
                             int64_t key_row, int64_t value_row, int64_t key_col, int64_t w_begin, int64_t w_end,
                             int64_t key_col0, int64_t job_begin, int64_t job_end) {
    const int64_t per_row = (ww + 15) / 16, vectors = wt * wh * per_row, s_row = 16 * vectors;
    const int64_t tokens = frames * height * width, bh_keys = frames * height * key_row,
                  bh_values = frames * height * value_row;
    float *s = aligned_alloc(64, sizeof(float) * (size_t)(GROUP * s_row + GROUP * dim + 16));
    float *o = aligned_alloc(64, sizeof(float) * (size_t)(GROUP * ((dim + 15) / 16) * 16 + 16));
    int64_t *key_offset = malloc(sizeof(int64_t) * (size_t)vectors);
    int64_t *value_offset = malloc(sizeof(int64_t) * (size_t)vectors);
    __mmask16 *valid = malloc(sizeof(__mmask16) * (size_t)vectors);
    int *keys = malloc(sizeof(int) * (size_t)vectors);
    int status = !s || !o || !key_offset || !value_offset || !valid || !keys;
    float *qp = s + GROUP * s_row; /* (dim, GROUP) */
    for (int64_t job = job_begin; job < job_end && !status; job++) {
        const int64_t bh = job / height, h = job % height, b = bh / heads, head = bh % heads;
        const float *qb = q + b * q_batch_stride + head * q_head_stride;
        const float *kb = kt + bh * bh_keys, *vb = v + bh * bh_values;
        for (int64_t w = w_begin; w < w_end; w++) {
            for (int64_t t0 = 0, t1; t0 < frames; t0 = t1) {
                for (t1 = t0 + 1; t1 < frames && t1 - t0 < GROUP && start_t[t1] == start_t[t0]; t1++) {}
                const int group = (int)(t1 - t0);
                for (int64_t d = 0; d < dim; d++)
                    for (int m = 0; m < GROUP; m++)
                        qp[d * GROUP + m] =
                            m < group ? qb[(((t0 + m) * height + h) * width + w) * q_token_stride + d] * scale
                                      : 0.0f;
                int64_t vec = 0;
                for (int64_t tk = start_t[t0]; tk < start_t[t0] + wt; tk++)
                    for (int64_t hk = start_h[h]; hk < start_h[h] + wh; hk++)
                        for (int64_t j = 0; j < per_row; j++, vec++) {
                            const int64_t column = start_w[w] - key_col0 + 16 * j, n = ww - 16 * j < 16 ? ww - 16 * j : 16;
                            key_offset[vec] = (tk * height + hk) * key_row + column;
                            value_offset[vec] = (tk * height + hk) * value_row + column * dim;
                            keys[vec] = (int)n;
                            valid[vec] = (__mmask16)((1u << n) - 1u);
                        }
                __m512 row_max[GROUP];
                for (int m = 0; m < GROUP; m++) row_max[m] = _mm512_set1_ps(-INFINITY);
                int64_t c = 0;
                for (; c + KEY_BLOCK <= vectors; c += KEY_BLOCK)
                    score_block(qp, kb, key_offset + c, valid + c, key_col, dim, s + 16 * c, s_row, row_max, KEY_BLOCK);
                for (; c < vectors; c++)
                    score_block(qp, kb, key_offset + c, valid + c, key_col, dim, s + 16 * c, s_row, row_max, 1);
                float total[GROUP], top[GROUP];
                for (int m = 0; m < GROUP; m++) {
                    float *row = s + m * s_row;
                    top[m] = _mm512_reduce_max_ps(row_max[m]);
                    __m512 peak = _mm512_set1_ps(top[m]), log2e = _mm512_set1_ps(LOG2E), sum = _mm512_setzero_ps();
                    for (int64_t x = 0; x < vectors && m < group; x++) {
                        __m512 p = _mm512_maskz_mov_ps(valid[x], exp2_ps(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(row + 16 * x), peak), log2e)));
                        _mm512_storeu_ps(row + 16 * x, p);
                        sum = _mm512_add_ps(sum, p);
                    }
                    total[m] = _mm512_reduce_add_ps(sum);
                }
                for (int m0 = 0; m0 < group; m0 += 4)
                    for (int64_t c0 = 0; c0 < dim; c0 += 64) {
                        __mmask16 channels[4];
                        int count = 0;
                        for (int64_t x = c0; x < dim && x < c0 + 64; x += 16, count++)
                            channels[count] = (__mmask16)(dim - x >= 16 ? 0xFFFFu : (1u << (dim - x)) - 1u);
                        const float *p = s + m0 * s_row;
                        float *om = o + m0 * dim;
                        if (count == 4) value_block(p, s_row, vb, value_offset, keys, vectors, dim, c0, channels, om, 4);
                        else if (count == 3) value_block(p, s_row, vb, value_offset, keys, vectors, dim, c0, channels, om, 3);
                        else if (count == 2) value_block(p, s_row, vb, value_offset, keys, vectors, dim, c0, channels, om, 2);
                        else value_block(p, s_row, vb, value_offset, keys, vectors, dim, c0, channels, om, 1);
                    }
                for (int m = 0; m < group; m++) {
                    const int64_t token = bh * tokens + ((t0 + m) * height + h) * width + w;
                    const float inverse = 1.0f / total[m];
                    for (int64_t d = 0; d < dim; d++) out[token * dim + d] = o[m * dim + d] * inverse;
                    if (lse) lse[token] = top[m] + log2f(total[m]) * LN2;
                }
            }
        }
    }
    free(s);
    free(o);
    free(key_offset);
    free(value_offset);
    free(valid);
    free(keys);
    return status;
}
