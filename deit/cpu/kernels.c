/* Vectorized CPU kernels for the ViT's element-wise and normalization ops, fp32, contiguous.
 *
 * Paddle's CPU LayerNorm backward, softmax and attention's split and transposes run well below
 * memory speed; these are faster forward + backward (bench/cpu_kernels.py: LayerNorm 7-13x,
 * the attention core 1.2-2x, the exact erf GELU up to 1.4x). The loops are written so that
 * gcc/clang vectorize them at -O3: erf as Eigen's rational approximation on [-4, 4], exp as
 * Cephes' polynomial with the 2^n scale built from the exponent bits. No -ffast-math: a NaN
 * input stays NaN (the NaN guard needs it).
 * One thread: Paddle's MKL keeps its OpenMP threads spinning between GEMMs, and a second
 * OpenMP runtime's threads fight them for the cores (measured: the demo step went from 61 ms
 * with one-thread kernels to 244 ms with two threads). The `omp simd` pragmas (-fopenmp-simd)
 * only allow vectorized sums.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float exp_f(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float n = rintf(x * 1.44269504088896341f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } bits;
    bits.i = ((int32_t)n + 127) << 23;
    return p * bits.f;
}

static inline float erf_f(float a) {
    float x = a > 4.0f ? 4.0f : a;
    x = x < -4.0f ? -4.0f : x;
    float x2 = x * x;
    float p = -2.72614225801306e-10f;
    p = p * x2 + 2.77068142495902e-08f;
    p = p * x2 - 2.10102402082508e-06f;
    p = p * x2 - 5.69250639462346e-05f;
    p = p * x2 - 7.34990630326855e-04f;
    p = p * x2 - 2.95459980854025e-03f;
    p = p * x2 - 1.60960333262415e-02f;
    float q = -1.45660718464996e-05f;
    q = q * x2 - 2.13374055278905e-04f;
    q = q * x2 - 1.68282697438203e-03f;
    q = q * x2 - 7.37332916720468e-03f;
    q = q * x2 - 1.42647390514189e-02f;
    return x * p / q;
}

#define SQRT1_2 0.70710678118654752f
#define INV_SQRT_2PI 0.39894228040143268f

/* y = x * Phi(x), Phi the normal CDF (the exact, erf GELU). */
void gelu_forward(const float *restrict x, float *restrict y, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        y[i] = 0.5f * x[i] * (1.0f + erf_f(x[i] * SQRT1_2));
}

/* dx = dy * (Phi(x) + x * phi(x)). */
void gelu_backward(const float *restrict x, const float *restrict dy, float *restrict dx, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        float cdf = 0.5f * (1.0f + erf_f(v * SQRT1_2));
        dx[i] = dy[i] * (cdf + v * INV_SQRT_2PI * exp_f(-0.5f * v * v));
    }
}

/* LayerNorm over the last axis (d) of `rows` rows; keeps each row's mean and 1/std for backward. */
void layer_norm_forward(const float *restrict x, const float *restrict w, const float *restrict b,
                        float *restrict y, float *restrict mean, float *restrict rstd,
                        int64_t rows, int64_t d, float eps) {
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * d;
        float *yr = y + r * d;
        float s = 0.0f, v = 0.0f;
#pragma omp simd reduction(+:s)
        for (int64_t j = 0; j < d; j++) s += xr[j];
        float m = s / (float)d;
#pragma omp simd reduction(+:v)
        for (int64_t j = 0; j < d; j++) v += (xr[j] - m) * (xr[j] - m);
        float rs = 1.0f / sqrtf(v / (float)d + eps);
        mean[r] = m;
        rstd[r] = rs;
        for (int64_t j = 0; j < d; j++) yr[j] = (xr[j] - m) * rs * w[j] + b[j];
    }
}

/* dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * w; dw = sum(dy * xhat) and
   db = sum(dy) over the rows. */
void layer_norm_backward(const float *restrict x, const float *restrict w, const float *restrict mean,
                         const float *restrict rstd, const float *restrict dy, float *restrict dx,
                         float *restrict dw, float *restrict db, int64_t rows, int64_t d) {
    memset(dw, 0, d * sizeof(float));
    memset(db, 0, d * sizeof(float));
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * d, *gr = dy + r * d;
        float *dxr = dx + r * d;
        float m = mean[r], rs = rstd[r], sum_g = 0.0f, sum_gx = 0.0f;
#pragma omp simd reduction(+:sum_g, sum_gx)
        for (int64_t j = 0; j < d; j++) {
            float xhat = (xr[j] - m) * rs, g = gr[j] * w[j];
            sum_g += g;
            sum_gx += g * xhat;
            dw[j] += gr[j] * xhat;
            db[j] += gr[j];
        }
        sum_g /= (float)d;
        sum_gx /= (float)d;
        for (int64_t j = 0; j < d; j++)
            dxr[j] = rs * (gr[j] * w[j] - sum_g - (xr[j] - m) * rs * sum_gx);
    }
}

/* y = softmax(scale * x) over the last axis (d) of `rows` rows; scale > 0 (attention's 1/sqrt(head_dim)). */
void softmax_forward(const float *restrict x, float *restrict y, int64_t rows, int64_t d, float scale) {
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * d;
        float *yr = y + r * d;
        float top = xr[0], s = 0.0f;
#pragma omp simd reduction(max:top)
        for (int64_t j = 1; j < d; j++) top = xr[j] > top ? xr[j] : top;
#pragma omp simd reduction(+:s)
        for (int64_t j = 0; j < d; j++) {
            yr[j] = exp_f(scale * (xr[j] - top));
            s += yr[j];
        }
        float inv = 1.0f / s;
        for (int64_t j = 0; j < d; j++) yr[j] *= inv;
    }
}

/* dx = scale * y * (dy - sum(dy * y)) per row. */
void softmax_backward(const float *restrict y, const float *restrict dy, float *restrict dx, int64_t rows, int64_t d,
                      float scale) {
    for (int64_t r = 0; r < rows; r++) {
        const float *yr = y + r * d, *gr = dy + r * d;
        float *dxr = dx + r * d;
        float s = 0.0f;
#pragma omp simd reduction(+:s)
        for (int64_t j = 0; j < d; j++) s += yr[j] * gr[j];
        for (int64_t j = 0; j < d; j++) dxr[j] = scale * yr[j] * (gr[j] - s);
    }
}

/* Attention's layout changes, one pass each, in place of a split and four transposes (and their
   backward copies). Tokens-first is [batch, tokens, groups, heads, head_dim] (the qkv Linear's
   output with groups = 3, the attention output with groups = 1); heads-first is one
   [batch, heads, tokens, head_dim] tensor per group: q, k and v, each ready for batched GEMMs. */
void tokens_to_heads(const float *restrict src, float *const *dst, int64_t groups, int64_t batch,
                     int64_t tokens, int64_t heads, int64_t head_dim) {
    for (int64_t b = 0; b < batch; b++)
        for (int64_t t = 0; t < tokens; t++)
            for (int64_t g = 0; g < groups; g++)
                for (int64_t h = 0; h < heads; h++)
                    memcpy(dst[g] + ((b * heads + h) * tokens + t) * head_dim,
                           src + (((b * tokens + t) * groups + g) * heads + h) * head_dim, head_dim * sizeof(float));
}

/* The inverse of tokens_to_heads (and so its gradient). */
void heads_to_tokens(const float *const *src, float *restrict dst, int64_t groups, int64_t batch,
                     int64_t tokens, int64_t heads, int64_t head_dim) {
    for (int64_t b = 0; b < batch; b++)
        for (int64_t t = 0; t < tokens; t++)
            for (int64_t g = 0; g < groups; g++)
                for (int64_t h = 0; h < heads; h++)
                    memcpy(dst + (((b * tokens + t) * groups + g) * heads + h) * head_dim,
                           src[g] + ((b * heads + h) * tokens + t) * head_dim, head_dim * sizeof(float));
}

/* dst[t] += weight * (src[t] - dst[t]) for every tensor t: an EMA update over all parameters in
   one call, in place of a Paddle op (and its dispatch) per tensor. */
void lerp_many(float *const *dst, const float *const *src, const int64_t *sizes, int64_t count, float weight) {
    for (int64_t t = 0; t < count; t++) {
        float *restrict d = dst[t];
        const float *restrict s = src[t];
        for (int64_t i = 0; i < sizes[t]; i++) d[i] += weight * (s[i] - d[i]);
    }
}
