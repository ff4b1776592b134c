// One layer of the fused decode step (engine.Engine._decode_rows) on the CPU, for B sequences
// x R loop rows, in place on the rows U [B*R, H] (f32):
//   rms_norm -> qkv (+ bias) -> RoPE -> K/V into the f16 caches -> attention over the loop-0
//   cache (and, for loops r >= 1, over the loop's ring, mixed by the G-SWA gate) -> wo +
//   residual -> rms_norm -> gate_up -> silu(g) * u -> down + residual.
// The same arithmetic as the torch ops it replaces (Engine._layers_in_torch; summation order
// aside), without their ~100 small calls per layer, each with its own dispatch and temporaries.
// Matmuls go through loopcli_qgemm (qgemm.cpp); attention is split over (sequence, K/V head)
// with at::parallel_for (torch's pool), each K/V head read once for all its query heads and rows.

#include <ATen/Parallel.h>

#include "half.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <dlfcn.h>
#include <immintrin.h>
#define ST_X86 1
#endif

extern "C" int loopcli_qgemm(const float* x, int64_t M, int64_t K, const uint8_t* w, int64_t N, int type,
                             int scalar, int unpacked, float* y);
extern "C" int loopcli_qgemm_has_avx2();

namespace {

// One layer's constants and weights; built once in Python (cpu_kernels.StepLayer mirrors it).
// Every field is 8 bytes, so the two layouts cannot disagree on padding. qkv and gate_up may be
// row blocks of different formats (q4_k_m keeps some v and down rows in Q6_K): up to 3 and 2 parts.
struct LayerArgs {
  int64_t H, nh, nkv, hd, inter, R, ring, layer, layers, gate_hidden, scalar, decode_rows;
  int64_t wo_type, down_type, qkv_parts, qkv_type[3], qkv_rows[3], gate_up_parts, gate_up_type[2], gate_up_rows[2];
  double eps;
  const uint8_t *qkv[3], *wo, *gate_up[2], *down;  // as the kernel reads them (GGUF rows or its x8 layout)
  const float *attn_norm, *ffn_norm, *qkv_bias, *gate_w, *gate_b, *gate_norm;  // bias, gate: may be null
};

// One sequence in this step: its position and its caches (whole tensors; the layer is found here).
struct Seq {
  int64_t t, cap;
  uint16_t *k0, *v0;  // [L, nkv, cap, hd] f16
  uint16_t *rk, *rv;  // [R-1, L, nkv, ring, hd] f16
};

// ---------------------------------------------------------------- attention primitives
// scores[i * S + j] = scale * q_i . k_j for nq queries (contiguous [nq, hd]) and S keys [S, hd].
void scores_scalar(const uint16_t* K, int64_t S, int64_t hd, const float* q, int64_t nq, float scale, float* sc) {
  std::vector<float> kf(hd);
  for (int64_t j = 0; j < S; ++j) {
    for (int64_t d = 0; d < hd; ++d) kf[d] = half_to_float(K[j * hd + d]);
    for (int64_t i = 0; i < nq; ++i) {
      float s = 0;
      for (int64_t d = 0; d < hd; ++d) s += q[i * hd + d] * kf[d];
      sc[i * S + j] = s * scale;
    }
  }
}

// out[i] += sum_j p[i * S + j] v_j
void values_scalar(const uint16_t* V, int64_t S, int64_t hd, const float* p, int64_t nq, float* out) {
  std::vector<float> vf(hd);
  for (int64_t j = 0; j < S; ++j) {
    for (int64_t d = 0; d < hd; ++d) vf[d] = half_to_float(V[j * hd + d]);
    for (int64_t i = 0; i < nq; ++i) {
      const float w = p[i * S + j];
      if (w == 0) continue;
      for (int64_t d = 0; d < hd; ++d) out[i * hd + d] += w * vf[d];
    }
  }
}

#ifdef ST_X86
#define AVX2 __attribute__((target("avx2,fma,f16c")))

AVX2 float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

AVX2 float dot_avx2(const float* a, const float* b, int64_t n) {
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  int64_t i = 0;
  for (; i + 32 <= n; i += 32)
    for (int k = 0; k < 4; ++k)
      acc[k] = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8 * k), _mm256_loadu_ps(b + i + 8 * k), acc[k]);
  for (; i + 8 <= n; i += 8) acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc[0]);
  float s = hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// glibc's vector expf for AVX2 (libmvec), looked up at run time: without it, the scalar expf.
using VecExp = __m256 (*)(__m256);
VecExp vec_exp() {
  static const VecExp f = [] {
    void* lib = dlopen("libmvec.so.1", RTLD_NOW | RTLD_LOCAL);
    return lib ? reinterpret_cast<VecExp>(dlsym(lib, "_ZGVdN8v_expf")) : nullptr;
  }();
  return f;
}

// x[i] = exp(x[i] - sub)
AVX2 void exp_avx2(float* x, int64_t n, float sub, VecExp f) {
  int64_t i = 0;
  if (f)
    for (const __m256 sv = _mm256_set1_ps(sub); i + 8 <= n; i += 8)
      _mm256_storeu_ps(x + i, f(_mm256_sub_ps(_mm256_loadu_ps(x + i), sv)));
  for (; i < n; ++i) x[i] = std::exp(x[i] - sub);
}

// act[i] = silu(g[i]) * up[i] = g / (1 + exp(-g)) * up
AVX2 void silu_mul_avx2(const float* g, const float* up, int64_t n, VecExp f, float* act) {
  int64_t i = 0;
  if (f)
    for (const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps(); i + 8 <= n; i += 8) {
      const __m256 gv = _mm256_loadu_ps(g + i);
      const __m256 e = f(_mm256_sub_ps(zero, gv));
      _mm256_storeu_ps(act + i, _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(one, e)), _mm256_loadu_ps(up + i)));
    }
  for (; i < n; ++i) act[i] = g[i] / (1.0f + std::exp(-g[i])) * up[i];
}

constexpr int64_t CHUNK = 64;  // keys converted to f32 at a time, then read by every query (16 KB at hd 64)

AVX2 void f16_to_f32_avx2(const uint16_t* src, int64_t n, float* dst) {  // n: a multiple of 8
  for (int64_t i = 0; i < n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(src + i))));
}

// Per chunk of keys and query, 8 keys at a time: 8 running dot products, one transposing reduction.
AVX2 void scores_avx2(const uint16_t* K, int64_t S, int64_t hd, const float* q, int64_t nq, float scale, float* sc) {
  thread_local std::vector<float> buf;
  buf.resize(CHUNK * hd);
  float* kf = buf.data();
  const __m256 sv = _mm256_set1_ps(scale);
  for (int64_t j0 = 0; j0 < S; j0 += CHUNK) {
    const int64_t nk = std::min(CHUNK, S - j0);
    f16_to_f32_avx2(K + j0 * hd, nk * hd, kf);
    for (int64_t i = 0; i < nq; ++i) {
      const float* qi = q + i * hd;
      float* si = sc + i * S + j0;
      int64_t j = 0;
      for (; j + 8 <= nk; j += 8) {
        __m256 a[8];
        for (int k = 0; k < 8; ++k) a[k] = _mm256_setzero_ps();
        for (int64_t d = 0; d < hd; d += 8) {
          const __m256 qv = _mm256_loadu_ps(qi + d);
#pragma GCC unroll 8
          for (int k = 0; k < 8; ++k) a[k] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kf + (j + k) * hd + d), a[k]);
        }
        const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
        const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
        const __m256 r = _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
        _mm256_storeu_ps(si + j, _mm256_mul_ps(r, sv));
      }
      for (; j < nk; ++j) {
        __m256 acc = _mm256_setzero_ps();
        for (int64_t d = 0; d < hd; d += 8)
          acc = _mm256_fmadd_ps(_mm256_loadu_ps(qi + d), _mm256_loadu_ps(kf + j * hd + d), acc);
        si[j] = hsum(acc) * scale;
      }
    }
  }
}

// Per chunk of keys, query and piece of NA x 8 dimensions: the weighted sum kept in registers.
template <int NA>
AVX2 void values_avx2(const uint16_t* V, int64_t S, int64_t hd, const float* p, int64_t nq, float* out) {
  thread_local std::vector<float> buf;
  buf.resize(CHUNK * hd);
  float* vf = buf.data();
  std::fill(out, out + nq * hd, 0.0f);
  for (int64_t j0 = 0; j0 < S; j0 += CHUNK) {
    const int64_t nk = std::min(CHUNK, S - j0);
    f16_to_f32_avx2(V + j0 * hd, nk * hd, vf);
    for (int64_t i = 0; i < nq; ++i)
      for (int64_t d0 = 0; d0 < hd; d0 += 8 * NA) {
        float* o = out + i * hd + d0;
        __m256 acc[NA];
        for (int a = 0; a < NA; ++a) acc[a] = _mm256_loadu_ps(o + 8 * a);
        for (int64_t j = 0; j < nk; ++j) {
          const float w = p[i * S + j0 + j];
          if (w == 0) continue;  // masked ring slots
          const __m256 wv = _mm256_set1_ps(w);
#pragma GCC unroll 8
          for (int a = 0; a < NA; ++a) acc[a] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(vf + j * hd + d0 + 8 * a), acc[a]);
        }
        for (int a = 0; a < NA; ++a) _mm256_storeu_ps(o + 8 * a, acc[a]);
      }
  }
}
#endif

// softmax(scores of nq queries over S keys, -inf = masked) @ V into out [nq, hd] (overwritten).
void attend(const uint16_t* K, const uint16_t* V, int64_t S, int64_t hd, const float* q, int64_t nq, float scale,
            const char* valid, bool simd, float* out) {
  std::vector<float> sc(nq * S);
#ifdef ST_X86
  if (simd) scores_avx2(K, S, hd, q, nq, scale, sc.data());
  else
#endif
    scores_scalar(K, S, hd, q, nq, scale, sc.data());
  for (int64_t i = 0; i < nq; ++i) {
    float* s = sc.data() + i * S;
    if (valid)
      for (int64_t j = 0; j < S; ++j)
        if (!valid[j]) s[j] = -std::numeric_limits<float>::infinity();
    float mx = -std::numeric_limits<float>::infinity(), sum = 0;
    for (int64_t j = 0; j < S; ++j) mx = std::max(mx, s[j]);
#ifdef ST_X86
    if (simd) exp_avx2(s, S, mx, vec_exp());
    else
#endif
      for (int64_t j = 0; j < S; ++j) s[j] = std::exp(s[j] - mx);
    for (int64_t j = 0; j < S; ++j) sum += s[j];
    for (int64_t j = 0; j < S; ++j) s[j] /= sum;
  }
#ifdef ST_X86
  if (simd) {  // as many registers as the head dimension's pieces of 8 allow
    if (hd % 64 == 0) values_avx2<8>(V, S, hd, sc.data(), nq, out);
    else if (hd % 32 == 0) values_avx2<4>(V, S, hd, sc.data(), nq, out);
    else if (hd % 16 == 0) values_avx2<2>(V, S, hd, sc.data(), nq, out);
    else values_avx2<1>(V, S, hd, sc.data(), nq, out);
    return;
  }
#endif
  std::fill(out, out + nq * hd, 0.0f);
  values_scalar(V, S, hd, sc.data(), nq, out);
}

// ---------------------------------------------------------------- row ops
float dot(const float* a, const float* b, int64_t n, bool simd) {
#ifdef ST_X86
  if (simd) return dot_avx2(a, b, n);
#endif
  float s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

void rms_norm(const float* x, const float* w, int64_t n, int64_t H, float eps, bool simd, float* out) {
  for (int64_t m = 0; m < n; ++m) {
    const float* xr = x + m * H;
    const float inv = 1.0f / std::sqrt(dot(xr, xr, H, simd) / H + eps);
    for (int64_t i = 0; i < H; ++i) out[m * H + i] = w[i] * (xr[i] * inv);
  }
}

// rotate-half RoPE of `heads` heads of one row in place: x cos + rotate_half(x) sin
void rope(float* x, int64_t heads, int64_t hd, const float* cos, const float* sin) {
  const int64_t half = hd / 2;
  for (int64_t h = 0; h < heads; ++h) {
    float* v = x + h * hd;
    for (int64_t d = 0; d < half; ++d) {
      const float a = v[d], b = v[d + half];
      v[d] = a * cos[d] + (-b) * sin[d];
      v[d + half] = b * cos[d + half] + a * sin[d + half];
    }
  }
}

float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// torch.lerp's formula (start + w (end - start), or from the end side for w >= 0.5)
float lerp(float start, float end, float w) {
  return std::abs(w) < 0.5f ? start + w * (end - start) : end - (end - start) * (1.0f - w);
}

struct Scratch {
  std::vector<float> a, qkv, y, gate, gu, act, o, part;
};

// y [n, sum rows] = x [n, K] . W^T for W given as row blocks (each its own GGUF type)
int matmul_parts(const float* x, int64_t n, int64_t K, int64_t parts, const uint8_t* const* w, const int64_t* type,
                 const int64_t* rows, int unpacked, std::vector<float>& tmp, float* y) {
  if (parts == 1) return loopcli_qgemm(x, n, K, w[0], rows[0], (int)type[0], 0, unpacked, y);
  int64_t N = 0, off = 0;
  for (int64_t p = 0; p < parts; ++p) N += rows[p];
  for (int64_t p = 0; p < parts; ++p) {
    tmp.resize(n * rows[p]);
    if (loopcli_qgemm(x, n, K, w[p], rows[p], (int)type[p], 0, unpacked, tmp.data())) return 1;
    for (int64_t m = 0; m < n; ++m) std::memcpy(y + m * N + off, tmp.data() + m * rows[p], rows[p] * sizeof(float));
    off += rows[p];
  }
  return 0;
}

int step_layer(const LayerArgs& L, int64_t B, const Seq* seqs, const float* cos, const float* sin, float* U) {
  const int64_t H = L.H, nh = L.nh, nkv = L.nkv, hd = L.hd, R = L.R, I = L.inter, n = B * R;
  const int64_t nq = nh * hd, nk = nkv * hd, nqkv = nq + 2 * nk, G = nh / nkv, ring = L.ring;
  const float eps = (float)L.eps, scale = 1.0f / std::sqrt((float)hd);
  const int unpacked = n > L.decode_rows;  // as qmatmul's BlockWeight.linear chooses the path
  const bool simd = !L.scalar && loopcli_qgemm_has_avx2() && hd % 8 == 0;
  thread_local Scratch w;
  w.a.resize(n * H), w.qkv.resize(n * nqkv), w.y.resize(n * nq), w.gate.resize(n * nh);
  w.gu.resize(n * 2 * I), w.act.resize(n * I), w.o.resize(n * H);

  rms_norm(U, L.attn_norm, n, H, eps, simd, w.a.data());
  if (matmul_parts(w.a.data(), n, H, L.qkv_parts, L.qkv, L.qkv_type, L.qkv_rows, unpacked, w.part, w.qkv.data()))
    return 1;
  for (int64_t m = 0; m < n; ++m) {
    float* row = w.qkv.data() + m * nqkv;
    if (L.qkv_bias)
      for (int64_t i = 0; i < nqkv; ++i) row[i] += L.qkv_bias[i];
    const float *c = cos + (m / R) * hd, *s = sin + (m / R) * hd;
    rope(row, nh, hd, c, s);
    rope(row + nq, nkv, hd, c, s);
  }
  // the G-SWA gate of rows r >= 1, from the layer's input (before U changes) or the query
  if (R > 1) {
    std::vector<float> xn(H);
    for (int64_t m = 0; m < n; ++m) {
      if (m % R == 0) continue;
      const float* q = w.qkv.data() + m * nqkv;
      if (L.gate_hidden) rms_norm(U + m * H, L.gate_norm, 1, H, eps, simd, xn.data());
      for (int64_t h = 0; h < nh; ++h) {
        const float z = L.gate_hidden ? dot(xn.data(), L.gate_w + h * H, H, simd)
                                      : dot(q + h * hd, L.gate_w + h * hd, hd, simd);
        w.gate[m * nh + h] = sigmoid(z + L.gate_b[h]);
      }
    }
  }
  // K/V into the caches: row 0 (loop 0) at position t, row r >= 1 into ring r - 1 at slot t % ring
  for (int64_t b = 0; b < B; ++b) {
    const Seq& sq = seqs[b];
    for (int64_t r = 0; r < R; ++r) {
      const float* row = w.qkv.data() + (b * R + r) * nqkv;
      for (int64_t g = 0; g < nkv; ++g) {
        uint16_t *kd, *vd;
        if (r == 0) {
          const int64_t off = ((L.layer * nkv + g) * sq.cap + sq.t) * hd;
          kd = sq.k0 + off, vd = sq.v0 + off;
        } else {
          const int64_t off = ((((r - 1) * L.layers + L.layer) * nkv + g) * ring + sq.t % ring) * hd;
          kd = sq.rk + off, vd = sq.rv + off;
        }
        for (int64_t d = 0; d < hd; ++d) {
          kd[d] = float_to_half(row[nq + g * hd + d]);
          vd[d] = float_to_half(row[nq + nk + g * hd + d]);
        }
      }
    }
  }
  // attention: one unit per (sequence, K/V head); its G query heads x R rows read that head once.
  // (Pointers, not `w`: inside the lambda `w` would name the worker thread's own scratch.)
  const float *qkv = w.qkv.data(), *gate = w.gate.data();
  float* y = w.y.data();
  at::parallel_for(0, B * nkv, 1, [&](int64_t u0, int64_t u1) {
    std::vector<float> q(G * R * hd), out(G * R * hd);
    std::vector<char> mask(ring);
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t b = u / nkv, g = u % nkv;
      const Seq& sq = seqs[b];
      const int64_t S = sq.t + 1;
      for (int64_t r = 0; r < R; ++r)
        for (int64_t j = 0; j < G; ++j)
          std::memcpy(&q[(r * G + j) * hd], qkv + (b * R + r) * nqkv + (g * G + j) * hd, hd * sizeof(float));
      const int64_t off = (L.layer * nkv + g) * sq.cap * hd;
      attend(sq.k0 + off, sq.v0 + off, S, hd, q.data(), G * R, scale, nullptr, simd, out.data());
      for (int64_t r = 0; r < R; ++r)
        for (int64_t j = 0; j < G; ++j)
          std::memcpy(y + (b * R + r) * nq + (g * G + j) * hd, &out[(r * G + j) * hd], hd * sizeof(float));
      if (R == 1) continue;
      // loops r >= 1: their ring (slots not yet written are masked while t + 1 < ring), then the gate
      for (int64_t s = 0; s < ring; ++s) mask[s] = sq.t + 1 >= ring || s <= sq.t;
      for (int64_t r = 1; r < R; ++r) {
        const int64_t roff = ((((r - 1) * L.layers + L.layer) * nkv + g) * ring) * hd;
        attend(sq.rk + roff, sq.rv + roff, ring, hd, &q[r * G * hd], G, scale,
               mask.data(), simd, out.data());
        const int64_t m = b * R + r;
        for (int64_t j = 0; j < G; ++j) {
          const int64_t h = g * G + j;
          const float gt = gate[m * nh + h];
          float* yg = y + m * nq + h * hd;
          for (int64_t d = 0; d < hd; ++d) yg[d] = lerp(out[j * hd + d], yg[d], gt);
        }
      }
    }
  });
  if (loopcli_qgemm(w.y.data(), n, nq, L.wo, H, (int)L.wo_type, 0, unpacked, w.o.data())) return 1;
  for (int64_t i = 0; i < n * H; ++i) U[i] += w.o[i];
  rms_norm(U, L.ffn_norm, n, H, eps, simd, w.a.data());
  if (matmul_parts(w.a.data(), n, H, L.gate_up_parts, L.gate_up, L.gate_up_type, L.gate_up_rows, unpacked, w.part,
                   w.gu.data()))
    return 1;
  for (int64_t m = 0; m < n; ++m) {
    const float *g = w.gu.data() + m * 2 * I, *up = g + I;
    float* act = w.act.data() + m * I;
#ifdef ST_X86
    if (simd) { silu_mul_avx2(g, up, I, vec_exp(), act); continue; }
#endif
    for (int64_t i = 0; i < I; ++i) act[i] = g[i] / (1.0f + std::exp(-g[i])) * up[i];
  }
  if (loopcli_qgemm(w.act.data(), n, I, L.down, H, (int)L.down_type, 0, unpacked, w.o.data())) return 1;
  for (int64_t i = 0; i < n * H; ++i) U[i] += w.o[i];
  return 0;
}

}  // namespace

// One layer of the fused decode step for B sequences (their R rows each, in U [B*R, H]);
// cos/sin [B, hd] at each sequence's position. Returns non-zero for a weight type qgemm refuses.
extern "C" int loopcli_step_layer(const LayerArgs* layer, int64_t B, const Seq* seqs, const float* cos,
                                  const float* sin, float* U) {
  return step_layer(*layer, B, seqs, cos, sin, U);
}
