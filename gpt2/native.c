/* Decoding on a CPU, compiled on first use by gpt2/native.py: batch-1 matrix-vector products, one-query
 * attention over the KV cache, and a whole decoding step through every block (decode_layers).
 *
 * Decoding one token reads every weight once, so its speed is the speed at which the weights stream from
 * memory. torch's fp32 GEMV (MKL) streams about half of what two cores can read, and its int8 kernel wants
 * bf16 inputs (two casts per product). These loops stream at the memory's speed: each thread reads one
 * contiguous share of the matrix, and the inner loops are plain C that the compiler vectorizes for the
 * machine it runs on (-O3 -march=native; `omp simd` allows the reordered sums without -ffast-math).
 * Threads come from torch's own OpenMP runtime (the library links the libgomp torch loaded).
 *
 * Every product: y (N) = x (K) @ W^T + b, W being the (N, K) weight of nn.Linear; b may be NULL.
 */
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define BIAS(n) (b ? b[n] : 0.f)

/* W stored as (K, N) rows: nn.Linear's (N, K) weight with strides (1, N), the layout HF's Conv1D
 * checkpoints load into. Each thread owns a slice of y and adds four rows of W to it per pass. */
void gemv_kn_f32(const float *x, const float *w, const float *b, float *y, int K, int N, int nt) {
#pragma omp parallel num_threads(nt)
  {
    int threads = 1, t = 0;
#ifdef _OPENMP
    threads = omp_get_num_threads();
    t = omp_get_thread_num();
#endif
    int per = ((N + threads - 1) / threads + 15) & ~15; /* whole cache lines per thread */
    int n0 = t * per, n1 = n0 + per < N ? n0 + per : N;
    if (n0 < n1) {
      float *yy = y + n0;
      int m = n1 - n0, k = 0;
      for (int n = 0; n < m; n++) yy[n] = BIAS(n0 + n);
      for (; k + 4 <= K; k += 4) {
        const float x0 = x[k], x1 = x[k + 1], x2 = x[k + 2], x3 = x[k + 3];
        const float *w0 = w + (size_t)k * N + n0, *w1 = w0 + N, *w2 = w1 + N, *w3 = w2 + N;
#pragma omp simd
        for (int n = 0; n < m; n++) yy[n] += x0 * w0[n] + x1 * w1[n] + x2 * w2[n] + x3 * w3[n];
      }
      for (; k < K; k++) {
        const float xk = x[k], *wk = w + (size_t)k * N + n0;
#pragma omp simd
        for (int n = 0; n < m; n++) yy[n] += xk * wk[n];
      }
    }
  }
}

/* W stored as (N, K) rows (a contiguous nn.Linear weight): one dot product per output, each thread streaming
 * one contiguous run of rows (as the int8 loops below, where that read faster than four rows at a time). */
void gemv_nk_f32(const float *x, const float *w, const float *b, float *y, int K, int N, int nt) {
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int n = 0; n < N; n++) {
    const float *wn = w + (size_t)n * K;
    float a = 0.f;
#pragma omp simd reduction(+ : a)
    for (int k = 0; k < K; k++) a += wn[k] * x[k];
    y[n] = a + BIAS(n);
  }
}

/* W = q * s[:, None]: q (N, K) int8 rows, one fp32 scale per output. fp32 in and out, the scale and bias
 * applied once per output. This portable loop converts every weight to float; with AVX-512 VNNI or AVX2 the
 * products are int8 x int8 instead (below), a third of the instructions per weight. */
static void gemv_q8_f32(const float *x, const int8_t *q, const float *s, const float *b, float *y, int K, int N,
                        int nt) {
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int n = 0; n < N; n++) {
    const int8_t *qn = q + (size_t)n * K;
    float a = 0.f;
#pragma omp simd reduction(+ : a)
    for (int k = 0; k < K; k++) a += qn[k] * x[k];
    y[n] = s[n] * a + BIAS(n);
  }
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define Q8_INT8 1 /* int8 x int8 products by vpdpbusd (AVX-512 VNNI) */
#elif defined(__AVX2__)
#define Q8_INT8 2 /* int8 x int8 products by vpmaddubsw + vpmaddwd (AVX2) */
#endif

#ifdef Q8_INT8
#include <immintrin.h>
#define Q8_MAX_K 16384

/* The activations as int8 with one scale per group of four (the four products one 32-bit lane sums): an
 * outlier shares its scale with three neighbours only, so the rounding stays near bf16's. VNNI's vpdpbusd wants
 * unsigned weights, so they are read as q + 128 (xor 0x80) and each lane starts from xc = -128 * (its x sum);
 * AVX2's vpmaddubsw takes |x| (xa) against the weights with x's signs. */
static void q8_prep(const float *x, int K, int8_t *xq, uint8_t *xa, float *xs, int32_t *xc) {
  for (int j = 0; j < K / 4; j++) {
    const float *v = x + 4 * j;
    float m = fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3])));
    float inv = m > 0.f ? 127.f / m : 0.f;
    int sum = 0;
    for (int i = 0; i < 4; i++) {
      int r = (int)nearbyintf(v[i] * inv);
      xq[4 * j + i] = (int8_t)r;
      xa[4 * j + i] = (uint8_t)(r < 0 ? -r : r);
      sum += r;
    }
    xs[j] = m / 127.f;
    xc[j] = -128 * sum;
  }
}

static void gemv_q8_int8(const float *x, const int8_t *q, const float *s, const float *b, float *y, int K, int N,
                         int nt) {
  int8_t xq[Q8_MAX_K] __attribute__((aligned(64)));
  uint8_t xa[Q8_MAX_K] __attribute__((aligned(64)));
  float xs[Q8_MAX_K / 4] __attribute__((aligned(64)));
  int32_t xc[Q8_MAX_K / 4] __attribute__((aligned(64)));
  q8_prep(x, K, xq, xa, xs, xc);
#if Q8_INT8 == 1
  const __m512i flip = _mm512_set1_epi8((char)0x80);
  /* A row at a time, two accumulators: each thread streams one contiguous run of rows (measured: 92% of a
   * plain read's speed, against 72% for four rows at a time). */
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int n = 0; n < N; n++) {
    const int8_t *qn = q + (size_t)n * K;
    __m512 f0 = _mm512_setzero_ps(), f1 = f0;
    int k = 0;
    for (; k + 128 <= K; k += 128) {
      __m512i w0 = _mm512_xor_si512(_mm512_loadu_si512(qn + k), flip);
      __m512i w1 = _mm512_xor_si512(_mm512_loadu_si512(qn + k + 64), flip);
      __m512i a0 = _mm512_dpbusd_epi32(_mm512_load_si512(xc + k / 4), w0, _mm512_load_si512(xq + k));
      __m512i a1 = _mm512_dpbusd_epi32(_mm512_load_si512(xc + k / 4 + 16), w1, _mm512_load_si512(xq + k + 64));
      f0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a0), _mm512_load_ps(xs + k / 4), f0);
      f1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a1), _mm512_load_ps(xs + k / 4 + 16), f1);
    }
    if (k < K) { /* K % 128 == 64 */
      __m512i w0 = _mm512_xor_si512(_mm512_loadu_si512(qn + k), flip);
      __m512i a0 = _mm512_dpbusd_epi32(_mm512_load_si512(xc + k / 4), w0, _mm512_load_si512(xq + k));
      f0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a0), _mm512_load_ps(xs + k / 4), f0);
    }
    y[n] = s[n] * _mm512_reduce_add_ps(_mm512_add_ps(f0, f1)) + BIAS(n);
  }
#else
  const __m256i ones = _mm256_set1_epi16(1);
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int n = 0; n < N; n++) {
    const int8_t *qn = q + (size_t)n * K;
    __m256 f0 = _mm256_setzero_ps(), f1 = f0;
    for (int k = 0; k < K; k += 64) {
      __m256i x0 = _mm256_load_si256((const __m256i *)(xq + k)), x1 = _mm256_load_si256((const __m256i *)(xq + k + 32));
      __m256i w0 = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(qn + k)), x0);
      __m256i w1 = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(qn + k + 32)), x1);
      __m256i a0 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_load_si256((const __m256i *)(xa + k)), w0), ones);
      __m256i a1 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_load_si256((const __m256i *)(xa + k + 32)), w1), ones);
      f0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a0), _mm256_load_ps(xs + k / 4), f0);
      f1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a1), _mm256_load_ps(xs + k / 4 + 8), f1);
    }
    __m256 f = _mm256_add_ps(f0, f1);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(f), _mm256_extractf128_ps(f, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    y[n] = s[n] * _mm_cvtss_f32(h) + BIAS(n);
  }
#endif
}
#endif

int q8_native_products(void) { /* 1: int8 x int8 products where K % 64 == 0 (VNNI or AVX2), 0: float only */
#ifdef Q8_INT8
  return 1;
#else
  return 0;
#endif
}

void gemv_q8(const float *x, const int8_t *q, const float *s, const float *b, float *y, int K, int N, int nt) {
#ifdef Q8_INT8
  if (K % 64 == 0 && K <= Q8_MAX_K) {
    gemv_q8_int8(x, q, s, b, y, K, N, nt);
    return;
  }
#endif
  gemv_q8_f32(x, q, s, b, y, K, N, nt);
}

/* One new query per (batch, head) against its first L cached keys: y = softmax(q k^T / sqrt(hs)) v, the
 * decoding step of attention (torch's flash-attention kernel spends ~40 us per call on 12 heads of GPT-2 at
 * a few hundred positions; this is a few). Strides in elements: q[b*qb + h*hs + d], k/v[b*kb + h*kh + j*hs + d],
 * y (B, nh, hs) contiguous. */
void attn_one(const float *q, const float *k, const float *v, float *y, int B, int nh, int hs, int L, long qb,
              long kb, long kh, int nt) {
  const float scale = 1.0f / sqrtf((float)hs);
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int bh = 0; bh < B * nh; bh++) {
    int b = bh / nh, h = bh % nh;
    const float *qh = q + b * qb + (long)h * hs, *kh0 = k + b * kb + h * kh, *vh0 = v + b * kb + h * kh;
    float *out = y + (long)bh * hs;
    float sc[L];
    float m = -INFINITY, sum = 0.f;
    for (int j = 0; j < L; j++) {
      const float *kj = kh0 + (long)j * hs;
      float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int d = 0; d < hs; d++) s += qh[d] * kj[d];
      sc[j] = s * scale;
      m = sc[j] > m ? sc[j] : m;
    }
    for (int j = 0; j < L; j++) {
      sc[j] = expf(sc[j] - m);
      sum += sc[j];
    }
    for (int d = 0; d < hs; d++) out[d] = 0.f;
    for (int j = 0; j < L; j++) {
      const float p = sc[j] / sum, *vj = vh0 + (long)j * hs;
#pragma omp simd
      for (int d = 0; d < hs; d++) out[d] += p * vj[d];
    }
  }
}

/* ---- One decoding step through every block (no trace, no edit, no adapter: the plain serving path) ---- */

typedef struct { /* a projection: which loop, its shape and its tensors (scales only for int8) */
  int kind;      /* 0: fp32 (K, N) rows, 1: fp32 (N, K) rows, 2: int8 (N, K) rows */
  int K, N;
  const void *w;
  const float *s, *b;
} lin_t;

typedef struct { /* one block's parameters and its layer of the KV cache ((nh, max_len, hs), batch 1) */
  const float *ln1_w, *ln1_b, *ln2_w, *ln2_b;
  lin_t attn, proj, fc, out;
  float *k, *v;
} layer_t;

static void lin(const lin_t *l, const float *x, float *y, int nt) {
  if (l->kind == 0)
    gemv_kn_f32(x, (const float *)l->w, l->b, y, l->K, l->N, nt);
  else if (l->kind == 1)
    gemv_nk_f32(x, (const float *)l->w, l->b, y, l->K, l->N, nt);
  else
    gemv_q8(x, (const int8_t *)l->w, l->s, l->b, y, l->K, l->N, nt);
}

static void layer_norm(const float *x, const float *w, const float *b, float *y, int C, float eps) {
  float mean = 0.f, var = 0.f;
  for (int i = 0; i < C; i++) mean += x[i];
  mean /= C;
  for (int i = 0; i < C; i++) var += (x[i] - mean) * (x[i] - mean);
  float inv = 1.f / sqrtf(var / C + eps);
  for (int i = 0; i < C; i++) y[i] = (x[i] - mean) * inv * w[i] + b[i];
}

static void gelu_tanh(float *x, int n, int nt) {
  const float c = 0.7978845608028654f; /* sqrt(2 / pi) */
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int i = 0; i < n; i++) x[i] = 0.5f * x[i] * (1.f + tanhf(c * (x[i] + 0.044715f * x[i] * x[i] * x[i])));
}

/* x (C): the residual stream of the new position, updated in place; pos: its index (keys 0..pos). */
void decode_layers(float *x, const layer_t *layers, int n_layer, int C, int nh, int pos, long head_stride,
                   float eps, int nt) {
  int hs = C / nh;
  float h[C], qkv[3 * C], att[C], f[4 * C], o[C];
  for (int l = 0; l < n_layer; l++) {
    const layer_t *L = layers + l;
    layer_norm(x, L->ln1_w, L->ln1_b, h, C, eps);
    lin(&L->attn, h, qkv, nt);
    for (int i = 0; i < nh; i++) { /* this position's key and value into the cache */
      memcpy(L->k + i * head_stride + (long)pos * hs, qkv + C + i * hs, hs * sizeof(float));
      memcpy(L->v + i * head_stride + (long)pos * hs, qkv + 2 * C + i * hs, hs * sizeof(float));
    }
    attn_one(qkv, L->k, L->v, att, 1, nh, hs, pos + 1, 0, 0, head_stride, nt);
    lin(&L->proj, att, o, nt);
    for (int i = 0; i < C; i++) x[i] += o[i];
    layer_norm(x, L->ln2_w, L->ln2_b, h, C, eps);
    lin(&L->fc, h, f, nt);
    gelu_tanh(f, 4 * C, nt);
    lin(&L->out, f, o, nt);
    for (int i = 0; i < C; i++) x[i] += o[i];
  }
}

/* ---- What the app shows about a step: statistics of one row of logits (GPT-2: 50,257, 200 kB) ----
 * In one thread: a row read twice costs less than torch's eight vocabulary-wide ops, each waking the
 * OpenMP team and most reading a row the decoding step just pushed out of the caches (~0.8 ms a token). */

/* Sums over e = exp(s) for s = x - m <= 0, floored at -87 (exp(-87) is still a normal float, and adds
 * nothing visible to a sum of at least 1, the maximum's own term): z += e, es += e s. Without a call, so the
 * loops vectorize: Cephes' expf (s = n ln2 + r, a degree-6 polynomial in r, ~1 ulp), 2^n built in the
 * exponent bits of a block of integers, then read as floats. */
#define EXP_BLOCK 256
static void exp_sums(const float *x, int len, float m, float *z, float *es) {
  float s[EXP_BLOCK], p[EXP_BLOCK], scale[EXP_BLOCK];
  int32_t bits[EXP_BLOCK];
  for (int i = 0; i < len; i++) { /* a loop of its own: GCC vectorizes no conversion after a select */
    const float si = x[i] - m;
    s[i] = si > -87.f ? si : -87.f;
  }
  for (int i = 0; i < len; i++) {
    const float n = (float)(int32_t)(s[i] * 1.44269504f - 0.5f); /* round(s log2 e): truncation is ceil below 0 */
    const float r = s[i] - n * 0.693359375f + n * 2.12194440e-4f;
    float q = 1.9875691500e-4f;
    q = q * r + 1.3981999507e-3f;
    q = q * r + 8.3334519073e-3f;
    q = q * r + 4.1665795894e-2f;
    q = q * r + 1.6666665459e-1f;
    q = q * r + 5.0000001201e-1f;
    p[i] = q * r * r + r + 1.f;
    bits[i] = ((int32_t)n + 127) << 23;
  }
  memcpy(scale, bits, sizeof(float) * len);
  float zs = 0.f, e_s = 0.f;
#pragma omp simd reduction(+ : zs, e_s)
  for (int i = 0; i < len; i++) {
    const float e = p[i] * scale[i];
    zs += e;
    e_s += e * s[i];
  }
  *z += zs;
  *es += e_s;
}

/* The k (1..64) largest of x, largest first (ties: the lower index first), into idx; their values into val.
 * Blocks of 16 whose maximum cannot enter are skipped, so past the first blocks a row costs one compare
 * per element. */
void top_k(const float *x, long V, int k, int64_t *idx, float *val) {
  int n = 0;
  for (long b0 = 0; b0 < V; b0 += 16) {
    const long b1 = b0 + 16 < V ? b0 + 16 : V;
    if (n == k) {
      float bm = x[b0];
      for (long i = b0 + 1; i < b1; i++) bm = x[i] > bm ? x[i] : bm;
      if (!(bm > val[k - 1])) continue;
    }
    for (long i = b0; i < b1; i++) {
      const float v = x[i];
      if (n == k && !(v > val[k - 1])) continue;
      int j = n < k ? n++ : k - 1; /* a free slot, or the smallest kept one */
      for (; j > 0 && val[j - 1] < v; j--) {
        val[j] = val[j - 1];
        idx[j] = idx[j - 1];
      }
      val[j] = v;
      idx[j] = i;
    }
  }
}

/* out = (max, log of the softmax's normaliser, the softmax's entropy in nats) of x (V > 0, not all -inf),
 * and with k > 0 the indices of its k largest values into top (largest first). The entropy is
 * log z - sum(e s) / z over s = x - max and e = exp(s): its terms are small, so fp32 loses nothing. */
void logit_stats(const float *x, long V, int k, int64_t *top, float *out) {
  float m = x[0], z = 0.f, es = 0.f;
  if (k > 0) {
    float val[64];
    top_k(x, V, k, top, val);
    m = val[0];
  } else {
#pragma omp simd reduction(max : m)
    for (long i = 0; i < V; i++) m = x[i] > m ? x[i] : m;
  }
  for (long i = 0; i < V; i += EXP_BLOCK) exp_sums(x + i, V - i < EXP_BLOCK ? (int)(V - i) : EXP_BLOCK, m, &z, &es);
  out[0] = m;
  out[1] = m + logf(z);
  out[2] = logf(z) - es / z;
}
