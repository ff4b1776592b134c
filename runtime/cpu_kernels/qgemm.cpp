// y = x . W^T straight from GGUF blocks (Q8_0, Q4_0, Q4_K, Q5_K, Q6_K) on the CPU.
//
// Activations are quantized to int8 (scale amax / 127, round to nearest even) as llama.cpp
// does: per 32 values for Q8_0 / Q4_0 (its q8_0), per 256 with integer sums per 16 for the K
// formats (its q8_K). Every 32-value piece of a weight row is a small unsigned integer vector u
// (signed for Q8_0: |q| . sign(x, q)), so a piece is an integer dot product (AVX2 maddubs).
// Q8_0 / Q4_0: w = s * u + z per block, one float multiply-add per piece. K formats: the
// sub-block scales stay integers (madd), the offsets are an integer dot product with the
// activation sums, and a super-block costs one float multiply-add per activation row.
// Q8_0, Q4_K and Q6_K weights are repacked once at load into the x8 layout (8 rows interleaved,
// below), read by one kernel for any number of rows. For the other formats, decode (few rows)
// decodes each block in registers once for all rows and prefill unpacks a tile of weight rows
// once (Q5_K: 8 rows interleaved) for all rows. Each output is summed in the same order whatever
// the number of rows M on a path, so a prefill row does not depend on the chunk it came in.
// Work is split over output columns with at::parallel_for: torch's own thread pool, so the
// extension never adds threads on top of torch's. The AVX2 code is compiled for that target
// only (function attributes) and chosen at run time; the scalar code is the fallback.

#include <ATen/Parallel.h>

#include "half.h"

#include <algorithm>
#include <cmath>
#include <vector>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define QG_X86 1
#endif

namespace {

enum Type { Q4_0 = 2, Q8_0 = 8, Q4_K = 12, Q5_K = 13, Q6_K = 14 };

int block_values(int t) { return (t == Q8_0 || t == Q4_0) ? 32 : 256; }
int block_bytes(int t) {
  switch (t) {
    case Q8_0: return 34;
    case Q4_0: return 18;
    case Q4_K: return 144;
    case Q5_K: return 176;
    case Q6_K: return 210;
  }
  return 0;
}

float f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return half_to_float(h);
}

// The 6-bit scales and mins of a Q4_K / Q5_K super-block.
void k_scales(const uint8_t* s, uint8_t sc[8], uint8_t mn[8]) {
  for (int j = 0; j < 4; ++j) {
    sc[j] = s[j] & 63;
    mn[j] = s[j + 4] & 63;
    sc[j + 4] = (s[j + 8] & 15) | ((s[j] >> 6) << 4);
    mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
  }
}

// Q8_0 / Q4_0 block: w = s * u + z (for Q8_0 u is the signed value itself and z is 0).
struct Scales {
  float s, z;
};

void block_scales(int t, const uint8_t* b, Scales& out) {
  out.s = f16(b);
  out.z = t == Q4_0 ? -8.f * out.s : 0.f;
}

// K super-block as integers: w = d * sc[j] * u - dmin * mn[j] per 16 values j (Q4_K, Q5_K: the
// 6-bit scale and min of the 32 values that hold j), or w = d * sc[j] * (u - 32) (Q6_K).
// `off[j]` multiplies the activations' sum over the 16 values: mn[j], or 32 * sc[j] for Q6_K.
struct KParams {
  int16_t sc[16], off[16];
  float d, dmin;
};

void k_params(int t, const uint8_t* b, KParams& k) {
  if (t == Q6_K) {
    const int8_t* sc = (const int8_t*)(b + 192);
    for (int j = 0; j < 16; ++j) { k.sc[j] = sc[j]; k.off[j] = (int16_t)(32 * sc[j]); }
    k.d = f16(b + 208);
    k.dmin = 0.f;
    return;
  }
  uint8_t sc[8], mn[8];
  k_scales(b + 4, sc, mn);
  for (int j = 0; j < 16; ++j) { k.sc[j] = sc[j / 2]; k.off[j] = mn[j / 2]; }
  k.d = f16(b);
  k.dmin = f16(b + 2);
}

// The 32 integers of piece g (0..block_values/32) of a block, scalar.
void piece(int t, const uint8_t* b, int g, int u[32]) {
  switch (t) {
    case Q8_0: for (int i = 0; i < 32; ++i) u[i] = (int8_t)b[2 + i]; break;
    case Q4_0: for (int i = 0; i < 16; ++i) { u[i] = b[2 + i] & 15; u[i + 16] = b[2 + i] >> 4; } break;
    case Q4_K:
    case Q5_K: {
      const uint8_t* qs = b + (t == Q4_K ? 16 : 48) + 32 * (g / 2);
      int shift = 4 * (g & 1);
      for (int i = 0; i < 32; ++i) {
        u[i] = (qs[i] >> shift) & 15;
        if (t == Q5_K) u[i] |= ((b[16 + i] >> g) & 1) << 4;
      }
      break;
    }
    case Q6_K: {
      int h = g / 4, k = g % 4;  // half of the block, quarter of the half
      const uint8_t* ql = b + 64 * h + 32 * (k & 1);
      const uint8_t* qh = b + 128 + 32 * h;
      for (int i = 0; i < 32; ++i)
        u[i] = ((ql[i] >> (4 * (k >> 1))) & 15) | (((qh[i] >> (2 * k)) & 3) << 4);
      break;
    }
  }
}

// Activations: int8 values, a scale per 32 and, per 16, scale * sum of the values.
struct Acts {
  const int8_t* q;
  const float* d;  // per 32 values (Q8_0, Q4_0) or per 256 (K formats)
  const float* dsum;  // Q8_0 / Q4_0: per 16 values, scale * sum of the values
  const int16_t* bs;  // K formats: per 16 values, the sum of the values
  int64_t K;
};

bool is_k(int t) { return t == Q4_K || t == Q5_K || t == Q6_K; }

// One activation row: per `group` values (32, or 256 for the K formats) the scale amax / 127,
// the values times its inverse rounded half to even as int8, and the sum of every 16 of them.
void quantize_row_scalar(const float* x, int64_t K, int group, int8_t* q, float* d, int16_t* bs) {
  for (int64_t b = 0; b < K / group; ++b) {
    float amax = 0.f;
    for (int i = 0; i < group; ++i) amax = std::max(amax, std::fabs(x[group * b + i]));
    float s = amax / 127.f, inv = s > 0.f ? 1.f / s : 0.f;
    d[b] = s;
    for (int64_t j = group * b / 16; j < group * (b + 1) / 16; ++j) {
      int sum = 0;
      for (int64_t i = 16 * j; i < 16 * j + 16; ++i) {
        int v = (int)std::nearbyint(x[i] * inv);
        q[i] = (int8_t)v;
        sum += v;
      }
      bs[j] = (int16_t)sum;
    }
  }
}

// One weight row against `mr` activation rows, scalar (Q8_0, Q4_0).
void row_scalar(int t, const uint8_t* w, const Acts& a, const int64_t* rows, int mr, float* out) {
  int nb = (int)(a.K / 32), bb = block_bytes(t);
  for (int m = 0; m < mr; ++m) out[m] = 0.f;
  Scales sc;
  int u[32];
  for (int b = 0; b < nb; ++b) {
    const uint8_t* blk = w + (int64_t)b * bb;
    block_scales(t, blk, sc);
    piece(t, blk, 0, u);
    for (int m = 0; m < mr; ++m) {
      const int8_t* xq = a.q + rows[m] * a.K + 32 * b;
      int s0 = 0;
      for (int i = 0; i < 32; ++i) s0 += u[i] * xq[i];
      const float* ds = a.dsum + rows[m] * (a.K / 16) + 2 * b;
      out[m] += a.d[rows[m] * nb + b] * sc.s * s0 + sc.z * (ds[0] + ds[1]);
    }
  }
}

// One weight row of a K format against `mr` activation rows, scalar.
void krow_scalar(int t, const uint8_t* w, const Acts& a, const int64_t* rows, int mr, float* out) {
  const int nb = (int)(a.K / 256), bb = block_bytes(t);
  float acc[4] = {0.f, 0.f, 0.f, 0.f}, accm[4] = {0.f, 0.f, 0.f, 0.f};
  KParams k;
  int u[32];
  for (int b = 0; b < nb; ++b) {
    const uint8_t* blk = w + (int64_t)b * bb;
    k_params(t, blk, k);
    int64_t isum[4] = {0, 0, 0, 0}, off[4] = {0, 0, 0, 0};
    for (int g = 0; g < 8; ++g) {
      piece(t, blk, g, u);
      for (int m = 0; m < mr; ++m) {
        const int8_t* xq = a.q + rows[m] * a.K + 256 * b + 32 * g;
        for (int i = 0; i < 32; ++i) isum[m] += k.sc[2 * g + i / 16] * u[i] * xq[i];
      }
    }
    for (int m = 0; m < mr; ++m) {
      const int16_t* bs = a.bs + rows[m] * (a.K / 16) + 16 * b;
      for (int j = 0; j < 16; ++j) off[m] += k.off[j] * bs[j];
      const float xd = a.d[rows[m] * nb + b];
      if (t == Q6_K) {
        acc[m] += (float)(isum[m] - off[m]) * (k.d * xd);
      } else {
        acc[m] += (float)isum[m] * (k.d * xd);
        accm[m] += (float)off[m] * (k.dmin * xd);
      }
    }
  }
  for (int m = 0; m < mr; ++m) out[m] = acc[m] - accm[m];
}

// A tile of weight rows unpacked once for many activation rows (prefill): per row, the 32-value
// pieces as bytes (signed for Q8_0), per piece the scales [s0 x4, s1 x4] (s0 for the first 16
// values, s1 for the next 16), and per 16 values the offset z.
struct Tile {
  std::vector<uint8_t> u;
  std::vector<float> sv, z;
  int64_t K = 0;
  void resize(int64_t rows, int64_t k) {
    K = k;
    u.resize(rows * k);
    sv.resize(rows * (k / 32) * 8);
    z.resize(rows * (k / 16));
  }
};

void unpack_scalar(int t, const uint8_t* w, int64_t K, uint8_t* u, float* sv, float* z) {
  int nb = (int)(K / 32), bb = block_bytes(t);
  Scales sc;
  int v[32];
  for (int j = 0; j < nb; ++j) {
    const uint8_t* blk = w + (int64_t)j * bb;
    block_scales(t, blk, sc);
    piece(t, blk, 0, v);
    for (int i = 0; i < 32; ++i) u[32 * j + i] = (uint8_t)v[i];
    for (int i = 0; i < 8; ++i) sv[8 * j + i] = sc.s;
    z[2 * j] = z[2 * j + 1] = sc.z;
  }
}

// Activation row m against unpacked weight row: sum over pieces of xd * (s . u xq) + z . dsum.
float tile_dot_scalar(bool is_signed, const uint8_t* u, const float* sv, const float* z, const Acts& a, int64_t m) {
  const int64_t P = a.K / 32;
  const int8_t* xq = a.q + m * a.K;
  const float* xd = a.d + m * P;
  const float* ds = a.dsum + m * 2 * P;
  float acc = 0.f, corr = 0.f;
  for (int64_t j = 0; j < P; ++j) {
    int s0 = 0, s1 = 0;
    for (int i = 0; i < 16; ++i) {
      int w0 = is_signed ? (int8_t)u[32 * j + i] : u[32 * j + i];
      int w1 = is_signed ? (int8_t)u[32 * j + 16 + i] : u[32 * j + 16 + i];
      s0 += w0 * xq[32 * j + i];
      s1 += w1 * xq[32 * j + 16 + i];
    }
    acc += xd[j] * (sv[8 * j] * s0 + sv[8 * j + 4] * s1);
  }
  for (int64_t h = 0; h < 2 * P; ++h) corr += z[h] * ds[h];
  return acc + corr;
}

// f(std::integral_constant<int, MR>) for MR = mr (1 to 4): the row count as a template argument.
template <typename F>
inline void with_rows(int mr, F&& f) {
  switch (mr) {
    case 1: f(std::integral_constant<int, 1>()); break;
    case 2: f(std::integral_constant<int, 2>()); break;
    case 3: f(std::integral_constant<int, 3>()); break;
    default: f(std::integral_constant<int, 4>()); break;
  }
}

#ifdef QG_X86
#define AVX2 __attribute__((target("avx2,fma,f16c")))

AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

AVX2 inline float amax_avx2(const float* x, int n) {
  const __m256 sign = _mm256_set1_ps(-0.f);
  __m256 mx = _mm256_setzero_ps();
  for (int i = 0; i < n; i += 8) mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)));
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
  return _mm_cvtss_f32(m4);
}

// 32 values times `inv`, rounded to nearest even, stored as int8; the sums of each 16.
AVX2 inline void round32_avx2(const float* x, float inv, int8_t* q, int sums[2]) {
  const __m256 iv = _mm256_set1_ps(inv);
  __m256i i32[4];
  for (int i = 0; i < 4; ++i) i32[i] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * i), iv));
  // sums per 16: lanes of i32[0..1] and i32[2..3]
  __m256i s01 = _mm256_add_epi32(i32[0], i32[1]), s23 = _mm256_add_epi32(i32[2], i32[3]);
  __m256i h = _mm256_hadd_epi32(s01, s23);  // [a0+a1, a2+a3, c0+c1, c2+c3 | a4+a5, a6+a7, c4+c5, c6+c7]
  h = _mm256_hadd_epi32(h, h);  // [A03, C03, ., . | A47, C47, ., .]
  int32_t hs[8];
  _mm256_storeu_si256((__m256i*)hs, h);
  sums[0] = hs[0] + hs[4];
  sums[1] = hs[1] + hs[5];
  __m256i p16a = _mm256_packs_epi32(i32[0], i32[1]), p16b = _mm256_packs_epi32(i32[2], i32[3]);
  __m256i p8 = _mm256_packs_epi16(p16a, p16b);
  // packs interleave 128-bit lanes: restore order 0..31
  p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  _mm256_storeu_si256((__m256i*)q, p8);
}

AVX2 void quantize_row_avx2(const float* x, int64_t K, int group, int8_t* q, float* d, int16_t* bs) {
  for (int64_t b = 0; b < K / group; ++b) {
    float s = amax_avx2(x + group * b, group) / 127.f, inv = s > 0.f ? 1.f / s : 0.f;
    d[b] = s;
    for (int64_t c = group * b / 32; c < group * (b + 1) / 32; ++c) {
      int sums[2];
      round32_avx2(x + 32 * c, inv, q + 32 * c, sums);
      bs[2 * c] = (int16_t)sums[0];
      bs[2 * c + 1] = (int16_t)sums[1];
    }
  }
}

// block_scales compiled for AVX2 (F16C conversions, no SSE/AVX switch inside the hot loop).
AVX2 inline float h(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return _cvtsh_ss(v);
}


// The 32 unsigned (signed for Q8_0) bytes of piece g of a block.
template <int T>
AVX2 inline __m256i piece_avx2(const uint8_t* b, int g, __m256i& qh) {
  const __m256i m4 = _mm256_set1_epi8(15);
  if constexpr (T == Q8_0) {
    return _mm256_loadu_si256((const __m256i*)(b + 2));
  } else if constexpr (T == Q4_0) {
    __m128i qs = _mm_loadu_si128((const __m128i*)(b + 2));
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(qs, 4), qs), m4);
  } else if constexpr (T == Q4_K || T == Q5_K) {
    __m256i qs = _mm256_loadu_si256((const __m256i*)(b + (T == Q4_K ? 16 : 48) + 32 * (g / 2)));
    __m256i u = _mm256_and_si256(_mm256_srli_epi16(qs, 4 * (g & 1)), m4);
    if constexpr (T == Q5_K) {
      if (g == 0) qh = _mm256_loadu_si256((const __m256i*)(b + 16));
      __m256i hb = _mm256_and_si256(_mm256_srli_epi16(qh, g), _mm256_set1_epi8(1));
      u = _mm256_or_si256(u, _mm256_slli_epi16(hb, 4));
    }
    return u;
  } else {  // Q6_K
    int h = g / 4, k = g % 4;
    __m256i ql = _mm256_loadu_si256((const __m256i*)(b + 64 * h + 32 * (k & 1)));
    if (k == 0) qh = _mm256_loadu_si256((const __m256i*)(b + 128 + 32 * h));
    __m256i lo = _mm256_and_si256(_mm256_srli_epi16(ql, 4 * (k >> 1)), m4);
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * k), _mm256_set1_epi8(3));
    return _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4));
  }
}

// Decode reads each weight once, straight from memory: ask for it this far ahead. The hardware
// prefetchers stop at 4 KB pages; on this project's 2-core EPYC this made decode 1.3x faster.
constexpr int PREFETCH = 2048;

AVX2 inline void prefetch(const uint8_t* p, int bytes) {
  for (int o = 0; o < bytes; o += 64) _mm_prefetch((const char*)p + PREFETCH + o, _MM_HINT_T0);
}

// One weight row against MR activation rows (Q8_0, Q4_0).
template <int T, int MR>
AVX2 void row_avx2(const uint8_t* w, const Acts& a, const int64_t* rows, float* out) {
  constexpr int bb = T == Q8_0 ? 34 : 18;
  const int nb = (int)(a.K / 32);
  const __m256i ones = _mm256_set1_epi16(1);
  const int8_t* xq[MR];
  const float *xd[MR], *ds[MR];
  __m256 acc[MR];
  float corr[MR];
  for (int m = 0; m < MR; ++m) {
    xq[m] = a.q + rows[m] * a.K;
    xd[m] = a.d + rows[m] * nb;
    ds[m] = a.dsum + rows[m] * (a.K / 16);
    acc[m] = _mm256_setzero_ps();
    corr[m] = 0.f;
  }
  __m256i qh = _mm256_setzero_si256();
  for (int j = 0; j < nb; ++j) {
    const uint8_t* blk = w + (int64_t)j * bb;
    if ((j & 1) == 0) prefetch(blk, 64);
    const float s = h(blk);
    const __m256i u = piece_avx2<T>(blk, 0, qh);
    const __m256i au = T == Q8_0 ? _mm256_sign_epi8(u, u) : u;
    for (int m = 0; m < MR; ++m) {
      __m256i x = _mm256_loadu_si256((const __m256i*)(xq[m] + 32 * j));
      if constexpr (T == Q8_0) x = _mm256_sign_epi8(x, u);
      const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(au, x), ones);
      acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(s * xd[m][j]), acc[m]);
      if constexpr (T == Q4_0) corr[m] += (ds[m][2 * j] + ds[m][2 * j + 1]) * s;
    }
  }
  for (int m = 0; m < MR; ++m) out[m] = hsum(acc[m]) + (T == Q4_0 ? -8.f * corr[m] : 0.f);
}

template <int T>
AVX2 void rows_avx2(const uint8_t* w, const Acts& a, const int64_t* rows, int mr, float* out) {
  with_rows(mr, [&](auto MR) { row_avx2<T, decltype(MR)::value>(w, a, rows, out); });
}

template <int T>
AVX2 void unpack_avx2(const uint8_t* w, int64_t K, uint8_t* u, float* sv, float* z) {
  constexpr int bb = T == Q8_0 ? 34 : 18;
  __m256i qh = _mm256_setzero_si256();
  for (int64_t j = 0; j < K / 32; ++j) {
    const uint8_t* blk = w + j * bb;
    const float s = h(blk);
    _mm256_storeu_si256((__m256i*)(u + 32 * j), piece_avx2<T>(blk, 0, qh));
    _mm256_storeu_ps(sv + 8 * j, _mm256_set1_ps(s));
    z[2 * j] = z[2 * j + 1] = T == Q4_0 ? -8.f * s : 0.f;
  }
}

AVX2 void unpack_dispatch_avx2(int t, const uint8_t* w, int64_t K, uint8_t* u, float* sv, float* z) {
  if (t == Q8_0) unpack_avx2<Q8_0>(w, K, u, sv, z);
  else unpack_avx2<Q4_0>(w, K, u, sv, z);
}

// K formats. A super-block as integer multipliers, in registers: per piece g the int16 scales
// of its pair sums (maddubs lanes 0-7 hold values 0-15, lanes 8-15 values 16-31), the offsets'
// multipliers of the 16 activation sums, and d, dmin.
struct KRegs {
  __m256i sc[8];
  __m256i off;
  float d, dmin;
};

// Byte shuffle that fills a 128-bit lane with int16 element e (of that lane): bytes 2e, 2e + 1.
AVX2 inline __m256i pick16(int lo, int hi) {
  return _mm256_set_m128i(_mm_set1_epi16((short)(0x0101 * 2 * hi + 0x0100)), _mm_set1_epi16((short)(0x0101 * 2 * lo + 0x0100)));
}

template <int T>
AVX2 inline void kregs_avx2(const uint8_t* b, KRegs& k) {
  if constexpr (T == Q6_K) {
    const __m256i s16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(b + 192)));  // 16 scales
    k.off = _mm256_slli_epi16(s16, 5);  // 32 * sc
    const __m256i first = _mm256_permute2x128_si256(s16, s16, 0x00), second = _mm256_permute2x128_si256(s16, s16, 0x11);
    for (int g = 0; g < 4; ++g) {  // piece g: scale 2g on its first 16 values, 2g + 1 on the next 16
      k.sc[g] = _mm256_shuffle_epi8(first, pick16(2 * g, 2 * g + 1));
      k.sc[g + 4] = _mm256_shuffle_epi8(second, pick16(2 * g, 2 * g + 1));
    }
    k.d = h(b + 208);
    k.dmin = 0.f;
  } else {
    // the 12 scale bytes -> 8 six-bit scales (bytes 0-7) and 8 mins (bytes 8-15), as 32-bit words
    uint32_t w[3];
    std::memcpy(w, b + 4, 12);
    const uint32_t low6 = 0x3f3f3f3f, low4 = 0x0f0f0f0f, top2 = 0x03030303;
    const __m128i sm = _mm_set_epi32((int)(((w[2] >> 4) & low4) | (((w[1] >> 6) & top2) << 4)), (int)(w[1] & low6),
                                     (int)((w[2] & low4) | (((w[0] >> 6) & top2) << 4)), (int)(w[0] & low6));
    const __m256i sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm));
    for (int g = 0; g < 8; ++g) k.sc[g] = _mm256_shuffle_epi8(sc, pick16(g, g));
    const __m128i mn = _mm_cvtepu8_epi16(_mm_srli_si128(sm, 8));  // 8 mins as int16
    k.off = _mm256_set_m128i(_mm_unpackhi_epi16(mn, mn), _mm_unpacklo_epi16(mn, mn));  // each min twice
    k.d = h(b);
    k.dmin = h(b + 2);
  }
}

// One super-block (pieces u) against one activation row: sum over the pieces of sc * (u . xq)
// in integers, then one float multiply-add (and one for the offsets).
template <int T>
AVX2 inline void kdot_avx2(const __m256i* u, const KRegs& k, const int8_t* xq, const int16_t* bs, float xd,
                           __m256& acc, __m256& accm) {
  __m256i isum = _mm256_setzero_si256();
  for (int g = 0; g < 8; ++g) {
    const __m256i p = _mm256_maddubs_epi16(u[g], _mm256_loadu_si256((const __m256i*)(xq + 32 * g)));
    isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, k.sc[g]));
  }
  const __m256i off = _mm256_madd_epi16(k.off, _mm256_loadu_si256((const __m256i*)bs));
  if constexpr (T == Q6_K) {  // w = d * sc * (u - 32): the offset is an integer too
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(isum, off)), _mm256_set1_ps(k.d * xd), acc);
  } else {
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(k.d * xd), acc);
    accm = _mm256_fmadd_ps(_mm256_cvtepi32_ps(off), _mm256_set1_ps(k.dmin * xd), accm);
  }
}

// Decode: one weight row against MR activation rows, each super-block decoded in registers once.
template <int T, int MR>
AVX2 void krow_avx2(const uint8_t* w, const Acts& a, const int64_t* rows, float* out) {
  constexpr int bb = T == Q4_K ? 144 : T == Q5_K ? 176 : 210;
  const int nb = (int)(a.K / 256);
  __m256 acc[MR], accm[MR];
  for (int m = 0; m < MR; ++m) acc[m] = accm[m] = _mm256_setzero_ps();
  KRegs k;
  __m256i u[8], qh = _mm256_setzero_si256();
  for (int b = 0; b < nb; ++b) {
    const uint8_t* blk = w + (int64_t)b * bb;
    prefetch(blk, bb);
    kregs_avx2<T>(blk, k);
    for (int g = 0; g < 8; ++g) u[g] = piece_avx2<T>(blk, g, qh);
    for (int m = 0; m < MR; ++m)
      kdot_avx2<T>(u, k, a.q + rows[m] * a.K + 256 * b, a.bs + rows[m] * (a.K / 16) + 16 * b,
                   a.d[rows[m] * nb + b], acc[m], accm[m]);
  }
  for (int m = 0; m < MR; ++m) out[m] = hsum(acc[m]) - hsum(accm[m]);
}

template <int T>
AVX2 void krows_avx2(const uint8_t* w, const Acts& a, const int64_t* rows, int mr, float* out) {
  with_rows(mr, [&](auto MR) { krow_avx2<T, decltype(MR)::value>(w, a, rows, out); });
}

AVX2 void row_dispatch_avx2(int t, const uint8_t* w, const Acts& a, const int64_t* rows, int mr, float* out) {
  switch (t) {
    case Q8_0: rows_avx2<Q8_0>(w, a, rows, mr, out); break;
    case Q4_0: rows_avx2<Q4_0>(w, a, rows, mr, out); break;
    case Q4_K: krows_avx2<Q4_K>(w, a, rows, mr, out); break;
    case Q5_K: krows_avx2<Q5_K>(w, a, rows, mr, out); break;
    case Q6_K: krows_avx2<Q6_K>(w, a, rows, mr, out); break;
  }
}

// MR activation rows against one unpacked weight row; the same arithmetic for every MR.
template <bool SIGNED, bool ZERO, int MR>
AVX2 void tile_rows_avx2(const uint8_t* u, const float* sv, const float* z, const Acts& a, int64_t m0, float* out) {
  const int64_t P = a.K / 32;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[MR];
  for (int m = 0; m < MR; ++m) acc[m] = _mm256_setzero_ps();
  const int8_t* xq = a.q + m0 * a.K;
  const float* xd = a.d + m0 * P;
  for (int64_t j = 0; j < P; ++j) {
    const __m256i w = _mm256_loadu_si256((const __m256i*)(u + 32 * j));
    const __m256i aw = SIGNED ? _mm256_sign_epi8(w, w) : w;
    const __m256 s = _mm256_loadu_ps(sv + 8 * j);
    for (int m = 0; m < MR; ++m) {
      __m256i x = _mm256_loadu_si256((const __m256i*)(xq + m * a.K + 32 * j));
      if (SIGNED) x = _mm256_sign_epi8(x, w);
      const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, x), ones);
      acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(s, _mm256_broadcast_ss(xd + m * P + j)), acc[m]);
    }
  }
  for (int m = 0; m < MR; ++m) {
    float corr = 0.f;
    if (ZERO) {
      const float* ds = a.dsum + (m0 + m) * 2 * P;
      __m256 c = _mm256_setzero_ps();
      int64_t h = 0;
      for (; h + 8 <= 2 * P; h += 8) c = _mm256_fmadd_ps(_mm256_loadu_ps(z + h), _mm256_loadu_ps(ds + h), c);
      corr = hsum(c);
      for (; h < 2 * P; ++h) corr += z[h] * ds[h];
    }
    out[m] = hsum(acc[m]) + corr;
  }
}

template <bool SIGNED, bool ZERO>
AVX2 void tile_avx2(const uint8_t* u, const float* sv, const float* z, const Acts& a, int64_t m0, int mr, float* out) {
  with_rows(mr, [&](auto MR) { tile_rows_avx2<SIGNED, ZERO, decltype(MR)::value>(u, sv, z, a, m0, out); });
}

// The same for two weight rows at once: each activation piece loaded once for both (the
// arithmetic of every output is tile_rows_avx2's).
template <bool SIGNED, bool ZERO, int MR>
AVX2 void tile_rows2_avx2(const uint8_t* const u[2], const float* const sv[2], const float* const z[2], const Acts& a,
                          int64_t m0, float* out0, float* out1) {
  const int64_t P = a.K / 32;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[2][MR];
  for (int m = 0; m < MR; ++m) acc[0][m] = acc[1][m] = _mm256_setzero_ps();
  const int8_t* xq = a.q + m0 * a.K;
  const float* xd = a.d + m0 * P;
  for (int64_t j = 0; j < P; ++j) {
    __m256i w[2], aw[2];
    __m256 s[2];
    for (int n = 0; n < 2; ++n) {
      w[n] = _mm256_loadu_si256((const __m256i*)(u[n] + 32 * j));
      aw[n] = SIGNED ? _mm256_sign_epi8(w[n], w[n]) : w[n];
      s[n] = _mm256_loadu_ps(sv[n] + 8 * j);
    }
    for (int m = 0; m < MR; ++m) {
      const __m256i x = _mm256_loadu_si256((const __m256i*)(xq + m * a.K + 32 * j));
      const __m256 xb = _mm256_broadcast_ss(xd + m * P + j);
      for (int n = 0; n < 2; ++n) {
        const __m256i xs = SIGNED ? _mm256_sign_epi8(x, w[n]) : x;
        const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw[n], xs), ones);
        acc[n][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(s[n], xb), acc[n][m]);
      }
    }
  }
  float* outs[2] = {out0, out1};
  for (int n = 0; n < 2; ++n) {
    for (int m = 0; m < MR; ++m) {
      float corr = 0.f;
      if (ZERO) {
        const float* ds = a.dsum + (m0 + m) * 2 * P;
        __m256 c = _mm256_setzero_ps();
        int64_t h = 0;
        for (; h + 8 <= 2 * P; h += 8) c = _mm256_fmadd_ps(_mm256_loadu_ps(z[n] + h), _mm256_loadu_ps(ds + h), c);
        corr = hsum(c);
        for (; h < 2 * P; ++h) corr += z[n][h] * ds[h];
      }
      outs[n][m] = hsum(acc[n][m]) + corr;
    }
  }
}

template <bool SIGNED, bool ZERO>
AVX2 void tile2_avx2(const uint8_t* const u[2], const float* const sv[2], const float* const z[2], const Acts& a,
                     int64_t m0, int mr, float* out0, float* out1) {
  with_rows(mr, [&](auto MR) { tile_rows2_avx2<SIGNED, ZERO, decltype(MR)::value>(u, sv, z, a, m0, out0, out1); });
}

// Prefill GEMM for Q4_K / Q5_K: 8 weight rows interleaved, so one 32-byte vector holds 4 values
// of each row and the 8 rows' results sit in the 8 lanes of one accumulator. The activation's 4
// values are broadcast, and since 4-bit (5-bit) values times int8 stay small, the int16 pair sums
// of a whole 32-value piece (half a piece) add up before one multiply by the rows' scales: about
// 1.1 multiplies per 32 products instead of 2.
struct K8Block {
  uint8_t u[8][8][32];  // [piece][group of 4 values][4 r + i]: row r's values 4 g + i of the piece
  int16_t sc[8][16];  // [piece][2 r + p]: row r's scale of the piece (twice: its two pair sums)
  int16_t mn[4][16];  // [q][2 r + p]: row r's min of piece 2 q + p
  float d[8], dmin[8];
};

template <int T>
AVX2 void k8unpack_avx2(const uint8_t* w, int64_t rb, int64_t K, K8Block* out) {
  constexpr int bb = T == Q4_K ? 144 : 176;
  alignas(32) uint8_t rows[8][256];
  for (int64_t b = 0; b < K / 256; ++b) {
    K8Block& o = out[b];
    for (int r = 0; r < 8; ++r) {
      const uint8_t* blk = w + r * rb + b * bb;
      __m256i qh = _mm256_setzero_si256();
      for (int g = 0; g < 8; ++g) _mm256_store_si256((__m256i*)(rows[r] + 32 * g), piece_avx2<T>(blk, g, qh));
      KParams p;
      k_params(T, blk, p);
      for (int j = 0; j < 8; ++j) o.sc[j][2 * r] = o.sc[j][2 * r + 1] = p.sc[2 * j];
      for (int q = 0; q < 4; ++q) { o.mn[q][2 * r] = p.off[4 * q]; o.mn[q][2 * r + 1] = p.off[4 * q + 2]; }
      o.d[r] = p.d;
      o.dmin[r] = p.dmin;
    }
    for (int j = 0; j < 8; ++j)
      for (int g = 0; g < 8; ++g)
        for (int r = 0; r < 8; ++r) std::memcpy(o.u[j][g] + 4 * r, rows[r] + 32 * j + 4 * g, 4);
  }
}

// MR activation rows against 8 interleaved weight rows: out[m * 8 + r].
template <int T, int MR>
AVX2 void k8rows_avx2(const K8Block* kb, const Acts& a, int64_t m0, float* out) {
  const int nb = (int)(a.K / 256);
  __m256 acc[MR], accm[MR];
  for (int m = 0; m < MR; ++m) acc[m] = accm[m] = _mm256_setzero_ps();
  for (int b = 0; b < nb; ++b) {
    const K8Block& B = kb[b];
    __m256i isum[MR];
    for (int m = 0; m < MR; ++m) isum[m] = _mm256_setzero_si256();
    for (int j = 0; j < 8; ++j) {
      const __m256i sc = _mm256_loadu_si256((const __m256i*)B.sc[j]);
      __m256i s16[MR];
      for (int m = 0; m < MR; ++m) s16[m] = _mm256_setzero_si256();
      for (int g = 0; g < 8; ++g) {
        const __m256i wv = _mm256_loadu_si256((const __m256i*)B.u[j][g]);
        for (int m = 0; m < MR; ++m) {
          int32_t x4;
          std::memcpy(&x4, a.q + (m0 + m) * a.K + 256 * b + 32 * j + 4 * g, 4);
          s16[m] = _mm256_add_epi16(s16[m], _mm256_maddubs_epi16(wv, _mm256_set1_epi32(x4)));
        }
        if (T == Q5_K && g == 3) {  // 5-bit values: int16 holds half a piece's sums
          for (int m = 0; m < MR; ++m) {
            isum[m] = _mm256_add_epi32(isum[m], _mm256_madd_epi16(s16[m], sc));
            s16[m] = _mm256_setzero_si256();
          }
        }
      }
      for (int m = 0; m < MR; ++m) isum[m] = _mm256_add_epi32(isum[m], _mm256_madd_epi16(s16[m], sc));
    }
    const __m256 d = _mm256_loadu_ps(B.d), dmin = _mm256_loadu_ps(B.dmin);
    for (int m = 0; m < MR; ++m) {
      const int16_t* bs = a.bs + (m0 + m) * (a.K / 16) + 16 * b;
      __m256i o = _mm256_setzero_si256();
      for (int q = 0; q < 4; ++q) {  // the activation sums of pieces 2q and 2q + 1
        const uint32_t pair = (uint16_t)(bs[4 * q] + bs[4 * q + 1]) | (uint32_t)(uint16_t)(bs[4 * q + 2] + bs[4 * q + 3]) << 16;
        o = _mm256_add_epi32(o, _mm256_madd_epi16(_mm256_loadu_si256((const __m256i*)B.mn[q]), _mm256_set1_epi32((int)pair)));
      }
      const __m256 xd = _mm256_set1_ps(a.d[(m0 + m) * nb + b]);
      acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[m]), _mm256_mul_ps(d, xd), acc[m]);
      accm[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(o), _mm256_mul_ps(dmin, xd), accm[m]);
    }
  }
  for (int m = 0; m < MR; ++m) _mm256_storeu_ps(out + 8 * m, _mm256_sub_ps(acc[m], accm[m]));
}

template <int T>
AVX2 void k8_avx2(const K8Block* kb, const Acts& a, int64_t m0, int mr, float* out) {
  with_rows(mr, [&](auto MR) { k8rows_avx2<T, decltype(MR)::value>(kb, a, m0, out); });
}

bool cpu_has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
#else
bool cpu_has_avx2() { return false; }
#endif

// Quantized activations for weight type t: int8 values, the scale per 32 values (Q8_0, Q4_0) or
// per 256 (K formats), the integer sums per 16, and for Q8_0 / Q4_0 those sums times the scale.
struct ActBuffers {
  std::vector<int8_t> q;
  std::vector<float> d, dsum;
  std::vector<int16_t> bs;
  Acts acts;

  ActBuffers(const float* x, int64_t M, int64_t K, int t, bool avx2) : q(M * K), bs(M * (K / 16)) {
    const int group = is_k(t) ? 256 : 32;
    d.resize(M * (K / group));
    at::parallel_for(0, M, 16, [&](int64_t a, int64_t b) {
      for (int64_t m = a; m < b; ++m) {
#ifdef QG_X86
        if (avx2) {
          quantize_row_avx2(x + m * K, K, group, q.data() + m * K, d.data() + m * (K / group), bs.data() + m * (K / 16));
          continue;
        }
#endif
        quantize_row_scalar(x + m * K, K, group, q.data() + m * K, d.data() + m * (K / group), bs.data() + m * (K / 16));
      }
    });
    if (!is_k(t)) {
      dsum.resize(bs.size());
      for (size_t i = 0; i < bs.size(); ++i) dsum[i] = d[i / 2] * (float)bs[i];
    }
    acts = Acts{q.data(), d.data(), dsum.data(), bs.data(), K};
  }
};

// Output columns n0..n1 on the decode path: each weight block decoded in registers once for up
// to 4 activation rows.
void decode_rows(const Acts& acts, int64_t M, const uint8_t* wp, int64_t rb, int type, bool avx2, int64_t n0,
                 int64_t n1, int64_t N, float* yp) {
  int64_t rows[4];
  float out[4];
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
      const int mr = (int)std::min<int64_t>(4, M - m0);
      for (int i = 0; i < mr; ++i) rows[i] = m0 + i;
#ifdef QG_X86
      if (avx2) row_dispatch_avx2(type, wp + n * rb, acts, rows, mr, out);
      else
#endif
      if (is_k(type)) krow_scalar(type, wp + n * rb, acts, rows, mr, out);
      else row_scalar(type, wp + n * rb, acts, rows, mr, out);
      for (int i = 0; i < mr; ++i) yp[(m0 + i) * N + n] = out[i];
    }
  }
}

#ifdef QG_X86
// Output columns n0..n1 on the prefill path, K formats: whole groups of 8 Q4_K / Q5_K rows
// through the interleaved GEMM, other rows (Q6_K outside the x8 layout, the rows past the last
// group) row by row on the decode path, whose results do not depend on M either.
void ktile_rows(const Acts& acts, int64_t M, const uint8_t* wp, int64_t rb, int type, int64_t n0, int64_t n1,
                int64_t N, float* yp) {
  const int64_t K = acts.K;
  if (type != Q6_K) {
    const int64_t n8 = n0 + (n1 - n0) / 8 * 8, nb = K / 256;
    std::vector<K8Block> kb8((n8 - n0) / 8 * nb);
    for (int64_t n = n0; n < n8; n += 8) {
      if (type == Q4_K) k8unpack_avx2<Q4_K>(wp + n * rb, rb, K, kb8.data() + (n - n0) / 8 * nb);
      else k8unpack_avx2<Q5_K>(wp + n * rb, rb, K, kb8.data() + (n - n0) / 8 * nb);
    }
    float out[32];
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
      const int mr = (int)std::min<int64_t>(4, M - m0);
      for (int64_t n = n0; n < n8; n += 8) {
        const K8Block* kn = kb8.data() + (n - n0) / 8 * nb;
        if (type == Q4_K) k8_avx2<Q4_K>(kn, acts, m0, mr, out);
        else k8_avx2<Q5_K>(kn, acts, m0, mr, out);
        for (int i = 0; i < mr; ++i) std::memcpy(yp + (m0 + i) * N + n, out + 8 * i, 8 * sizeof(float));
      }
    }
    n0 = n8;
  }
  decode_rows(acts, M, wp, rb, type, true, n0, n1, N, yp);
}
#endif

// Output columns n0..n1 on the prefill path, Q8_0 / Q4_0: the weight rows unpacked once (bytes,
// scale vectors, offsets), then every activation row passes, two weight rows per pass.
void tile_rows(const Acts& acts, int64_t M, const uint8_t* wp, int64_t rb, int type, bool avx2, int64_t n0,
               int64_t n1, int64_t N, float* yp) {
  const int64_t K = acts.K;
  const bool is_signed = type == Q8_0;
  Tile tl;
  tl.resize(n1 - n0, K);
  float out[4];
  for (int64_t n = n0; n < n1; ++n) {
    uint8_t* u = tl.u.data() + (n - n0) * K;
    float *sv = tl.sv.data() + (n - n0) * (K / 32) * 8, *z = tl.z.data() + (n - n0) * (K / 16);
#ifdef QG_X86
    if (avx2) unpack_dispatch_avx2(type, wp + n * rb, K, u, sv, z);
    else
#endif
      unpack_scalar(type, wp + n * rb, K, u, sv, z);
  }
  for (int64_t m0 = 0; m0 < M; m0 += 4) {
    const int mr = (int)std::min<int64_t>(4, M - m0);
    for (int64_t n = n0; n < n1; ++n) {
      const uint8_t* u = tl.u.data() + (n - n0) * K;
      const float *sv = tl.sv.data() + (n - n0) * (K / 32) * 8, *z = tl.z.data() + (n - n0) * (K / 16);
#ifdef QG_X86
      if (avx2 && n + 1 < n1) {
        const uint8_t* u2[2] = {u, u + K};
        const float* sv2[2] = {sv, sv + (K / 32) * 8};
        const float* z2[2] = {z, z + K / 16};
        float out1[4];
        if (is_signed) tile2_avx2<true, false>(u2, sv2, z2, acts, m0, mr, out, out1);
        else tile2_avx2<false, true>(u2, sv2, z2, acts, m0, mr, out, out1);
        for (int i = 0; i < mr; ++i) {
          yp[(m0 + i) * N + n] = out[i];
          yp[(m0 + i) * N + n + 1] = out1[i];
        }
        ++n;
        continue;
      }
      if (avx2) {
        if (is_signed) tile_avx2<true, false>(u, sv, z, acts, m0, mr, out);
        else tile_avx2<false, true>(u, sv, z, acts, m0, mr, out);
      } else
#endif
        for (int i = 0; i < mr; ++i) out[i] = tile_dot_scalar(is_signed, u, sv, z, acts, m0 + i);
      for (int i = 0; i < mr; ++i) yp[(m0 + i) * N + n] = out[i];
    }
  }
}

// ---- The x8 layout (weights repacked once at load, AVX2 only): Q8_0, Q4_K, Q6_K rows in groups
// of 8, each block of the 8 rows interleaved so that one 32-byte vector holds 4 values of every
// row (as in the prefill GEMMs above), and the 8 rows' results of a block sit in one vector.
// Decode and prefill run the same code on it, so a row's result never depends on M. Rows past
// the last whole group stay as GGUF rows after the groups. Same bytes as the GGUF for Q8_0 and
// Q6_K, +2.8 % for Q4_K (scales and mins unpacked to bytes).
//   Q8_0 block (8 rows x 32 values, 272 bytes): f16 d[8]; int8 w[8 groups][4 r + i].
//   Q4_K block (8 rows x 256 values, 1184 bytes): f16 d[8], dmin[8]; uint8 sc[8 pieces][8 rows],
//   mn[8][8]; q[8 pieces][4][32]: byte 4 r + i of [j][p] holds value 4 p + i (low nibble) and
//   4 (p + 4) + i (high nibble) of row r's piece j.
//   Q6_K block (8 rows x 256 values, 1680 bytes, as the GGUF): f16 d[8]; int8 sc[16][8 rows];
//   ql[8][4][32] as Q4_K's q (the low 4 bits); qh[8][2][32]: byte 4 r + i of [j][h], bits 2 p,
//   2 p + 1: the top 2 bits of value 4 (4 h + p) + i of row r's piece j.
constexpr int X8 = 0x100;  // added to a GGML type id: the x8 layout of that type

int x8_block_bytes(int t) { return t == Q8_0 ? 272 : t == Q4_K ? 1184 : t == Q6_K ? 1680 : 0; }

int64_t x8_bytes(int t, int64_t N, int64_t K) {
  return N / 8 * (K / block_values(t)) * x8_block_bytes(t) + N % 8 * (K / block_values(t)) * block_bytes(t);
}

void x8_repack(int t, const uint8_t* raw, int64_t N, int64_t K, uint8_t* out) {
  const int64_t nb = K / block_values(t), rb = nb * block_bytes(t), gb = nb * x8_block_bytes(t);
  for (int64_t g8 = 0; g8 < N / 8; ++g8) {
    for (int64_t b = 0; b < nb; ++b) {
      uint8_t* o = out + g8 * gb + b * x8_block_bytes(t);
      std::memset(o, 0, x8_block_bytes(t));
      for (int r = 0; r < 8; ++r) {
        const uint8_t* blk = raw + (g8 * 8 + r) * rb + b * block_bytes(t);
        if (t == Q8_0) {
          std::memcpy(o + 2 * r, blk, 2);
          for (int g = 0; g < 8; ++g) std::memcpy(o + 16 + 32 * g + 4 * r, blk + 2 + 4 * g, 4);
        } else if (t == Q6_K) {
          std::memcpy(o + 2 * r, blk + 208, 2);
          for (int sb = 0; sb < 16; ++sb) o[16 + 8 * sb + r] = blk[192 + sb];
          int u[32];
          for (int j = 0; j < 8; ++j) {
            piece(t, blk, j, u);
            for (int p = 0; p < 4; ++p)
              for (int i = 0; i < 4; ++i) {
                o[144 + 128 * j + 32 * p + 4 * r + i] = (uint8_t)((u[4 * p + i] & 15) | (u[4 * (p + 4) + i] & 15) << 4);
                for (int hh = 0; hh < 2; ++hh)
                  o[1168 + 64 * j + 32 * hh + 4 * r + i] |= (uint8_t)((u[4 * (4 * hh + p) + i] >> 4) << (2 * p));
              }
          }
        } else {
          std::memcpy(o + 2 * r, blk, 2);
          std::memcpy(o + 16 + 2 * r, blk + 2, 2);
          uint8_t sc[8], mn[8];
          k_scales(blk + 4, sc, mn);
          for (int j = 0; j < 8; ++j) { o[32 + 8 * j + r] = sc[j]; o[96 + 8 * j + r] = mn[j]; }
          int u[32];
          for (int j = 0; j < 8; ++j) {
            piece(t, blk, j, u);
            for (int p = 0; p < 4; ++p)
              for (int i = 0; i < 4; ++i)
                o[160 + 128 * j + 32 * p + 4 * r + i] = (uint8_t)(u[4 * p + i] | u[4 * (p + 4) + i] << 4);
          }
        }
      }
    }
  }
  std::memcpy(out + N / 8 * gb, raw + N / 8 * 8 * rb, N % 8 * rb);  // the rows past the last group
}

#ifdef QG_X86
AVX2 inline __m256 f16x8(const uint8_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }

AVX2 inline __m256i bcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// Int16 lanes 2 r, 2 r + 1 <- int8 s[r] (the 8 rows' scale of one sub-block, each twice).
AVX2 inline __m256i rows_twice(const uint8_t* s) {
  const __m128i v = _mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i*)s));
  return _mm256_set_m128i(_mm_unpackhi_epi16(v, v), _mm_unpacklo_epi16(v, v));
}

// MR activation rows against one x8 group of 8 rows: out[8 m + r].
template <int T, int MR>
AVX2 void x8rows_avx2(const uint8_t* grp, const Acts& a, const int64_t* rows, float* out) {
  constexpr int BV = T == Q8_0 ? 32 : 256, XB = T == Q8_0 ? 272 : T == Q4_K ? 1184 : 1680;
  const int nb = (int)(a.K / BV);
  const __m256i ones = _mm256_set1_epi16(1), m4 = _mm256_set1_epi8(15);
  const int8_t* xq[MR];
  const float* xd[MR];
  __m256 acc[MR], accm[MR];
  for (int m = 0; m < MR; ++m) {
    xq[m] = a.q + rows[m] * a.K;
    xd[m] = a.d + rows[m] * nb;
    acc[m] = accm[m] = _mm256_setzero_ps();
  }
  for (int b = 0; b < nb; ++b) {
    const uint8_t* o = grp + (int64_t)b * XB;
    prefetch(o, XB);
    __m256i isum[MR];
    for (int m = 0; m < MR; ++m) isum[m] = _mm256_setzero_si256();
    if constexpr (T == Q8_0) {
      for (int g = 0; g < 8; ++g) {
        const __m256i wv = _mm256_loadu_si256((const __m256i*)(o + 16 + 32 * g));
        const __m256i aw = _mm256_sign_epi8(wv, wv);
        for (int m = 0; m < MR; ++m) {
          const __m256i sx = _mm256_sign_epi8(bcast4(xq[m] + 32 * b + 4 * g), wv);
          isum[m] = _mm256_add_epi32(isum[m], _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), ones));
        }
      }
      const __m256 d = f16x8(o);
      for (int m = 0; m < MR; ++m)
        acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[m]), _mm256_mul_ps(d, _mm256_set1_ps(xd[m][b])), acc[m]);
    } else if constexpr (T == Q6_K) {  // 6-bit values: int16 holds the sums of two groups of 4
      const __m256i m3 = _mm256_set1_epi8(3);
      for (int j = 0; j < 8; ++j) {
        const __m256i sa = rows_twice(o + 16 + 16 * j), sb = rows_twice(o + 24 + 16 * j);  // sub-blocks 2j, 2j + 1
        const __m256i h0 = _mm256_loadu_si256((const __m256i*)(o + 1168 + 64 * j));
        const __m256i h1 = _mm256_loadu_si256((const __m256i*)(o + 1200 + 64 * j));
        __m256i u[8];
        for (int p = 0; p < 4; ++p) {
          const __m256i v = _mm256_loadu_si256((const __m256i*)(o + 144 + 128 * j + 32 * p));
          u[p] = _mm256_or_si256(_mm256_and_si256(v, m4),
                                 _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h0, 2 * p), m3), 4));
          u[p + 4] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 4), m4),
                                     _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h1, 2 * p), m3), 4));
        }
        for (int m = 0; m < MR; ++m) {
          const int8_t* x = xq[m] + 256 * b + 32 * j;
          for (int g = 0; g < 8; g += 2) {
            const __m256i t = _mm256_add_epi16(_mm256_maddubs_epi16(u[g], bcast4(x + 4 * g)),
                                               _mm256_maddubs_epi16(u[g + 1], bcast4(x + 4 * g + 4)));
            isum[m] = _mm256_add_epi32(isum[m], _mm256_madd_epi16(t, g < 4 ? sa : sb));
          }
        }
      }
      __m256i offv[8];  // lanes 2 r + p: 32 x row r's scale of sub-block 2 q + p
      for (int q = 0; q < 8; ++q) {
        const __m128i s0 = _mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i*)(o + 16 + 16 * q)));
        const __m128i s1 = _mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i*)(o + 24 + 16 * q)));
        offv[q] = _mm256_slli_epi16(_mm256_set_m128i(_mm_unpackhi_epi16(s0, s1), _mm_unpacklo_epi16(s0, s1)), 5);
      }
      const __m256 d = f16x8(o);
      for (int m = 0; m < MR; ++m) {
        const int16_t* bs = a.bs + rows[m] * (a.K / 16) + 16 * b;
        __m256i off = _mm256_setzero_si256();
        for (int q = 0; q < 8; ++q) {
          const uint32_t pair = (uint16_t)bs[2 * q] | (uint32_t)(uint16_t)bs[2 * q + 1] << 16;
          off = _mm256_add_epi32(off, _mm256_madd_epi16(offv[q], _mm256_set1_epi32((int)pair)));
        }
        acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(isum[m], off)),
                                 _mm256_mul_ps(d, _mm256_set1_ps(xd[m][b])), acc[m]);
      }
    } else {
      for (int j = 0; j < 8; ++j) {
        const __m128i s8 = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i*)(o + 32 + 8 * j)));
        const __m256i sc = _mm256_set_m128i(_mm_unpackhi_epi16(s8, s8), _mm_unpacklo_epi16(s8, s8));
        __m256i s16[MR];
        for (int m = 0; m < MR; ++m) s16[m] = _mm256_setzero_si256();
        for (int p = 0; p < 4; ++p) {
          const __m256i v = _mm256_loadu_si256((const __m256i*)(o + 160 + 128 * j + 32 * p));
          const __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
          for (int m = 0; m < MR; ++m) {
            const int8_t* x = xq[m] + 256 * b + 32 * j + 4 * p;
            s16[m] = _mm256_add_epi16(s16[m], _mm256_maddubs_epi16(lo, bcast4(x)));
            s16[m] = _mm256_add_epi16(s16[m], _mm256_maddubs_epi16(hi, bcast4(x + 16)));
          }
        }
        for (int m = 0; m < MR; ++m) isum[m] = _mm256_add_epi32(isum[m], _mm256_madd_epi16(s16[m], sc));
      }
      __m256i mnv[4];
      for (int q = 0; q < 4; ++q) {  // lanes 2 r + p: row r's min of piece 2 q + p
        const __m128i m0 = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i*)(o + 96 + 16 * q)));
        const __m128i m1 = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i*)(o + 104 + 16 * q)));
        mnv[q] = _mm256_set_m128i(_mm_unpackhi_epi16(m0, m1), _mm_unpacklo_epi16(m0, m1));
      }
      const __m256 d = f16x8(o), dmin = f16x8(o + 16);
      for (int m = 0; m < MR; ++m) {
        const int16_t* bs = a.bs + rows[m] * (a.K / 16) + 16 * b;
        __m256i off = _mm256_setzero_si256();
        for (int q = 0; q < 4; ++q) {
          const uint32_t pair = (uint16_t)(bs[4 * q] + bs[4 * q + 1]) | (uint32_t)(uint16_t)(bs[4 * q + 2] + bs[4 * q + 3]) << 16;
          off = _mm256_add_epi32(off, _mm256_madd_epi16(mnv[q], _mm256_set1_epi32((int)pair)));
        }
        const __m256 xs = _mm256_set1_ps(xd[m][b]);
        acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[m]), _mm256_mul_ps(d, xs), acc[m]);
        accm[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(off), _mm256_mul_ps(dmin, xs), accm[m]);
      }
    }
  }
  for (int m = 0; m < MR; ++m) _mm256_storeu_ps(out + 8 * m, _mm256_sub_ps(acc[m], accm[m]));
}

template <int T>
AVX2 void x8_avx2(const uint8_t* grp, const Acts& a, const int64_t* rows, int mr, float* out) {
  with_rows(mr, [&](auto MR) { x8rows_avx2<T, decltype(MR)::value>(grp, a, rows, out); });
}

// Output columns n0..n1 (whole groups: n0, n1 multiples of 8) of an x8 weight.
void x8_rows(const Acts& acts, int64_t M, const uint8_t* wp, int type, int64_t n0, int64_t n1, int64_t N, float* yp) {
  const int64_t gb = acts.K / block_values(type) * x8_block_bytes(type);
  int64_t rows[4];
  float out[32];
  for (int64_t n = n0; n < n1; n += 8) {
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
      const int mr = (int)std::min<int64_t>(4, M - m0);
      for (int i = 0; i < mr; ++i) rows[i] = m0 + i;
      if (type == Q8_0) x8_avx2<Q8_0>(wp + n / 8 * gb, acts, rows, mr, out);
      else if (type == Q4_K) x8_avx2<Q4_K>(wp + n / 8 * gb, acts, rows, mr, out);
      else x8_avx2<Q6_K>(wp + n / 8 * gb, acts, rows, mr, out);
      for (int i = 0; i < mr; ++i) std::memcpy(yp + (m0 + i) * N + n, out + 8 * i, 8 * sizeof(float));
    }
  }
}
#endif

constexpr int64_t NTILE = 16;  // weight rows per task (and kept hot on the prefill path)

void qgemm(const float* xp, int64_t M, int64_t K, const uint8_t* wp, int64_t N, int type, bool x8, bool scalar,
           bool unpacked, float* yp) {
  const bool avx2 = !scalar && cpu_has_avx2();
  const ActBuffers act(xp, M, K, type, avx2);
  const int64_t rb = K / block_values(type) * block_bytes(type);
#ifdef QG_X86
  if (x8) {  // whole groups through the x8 kernel, then the GGUF rows past them
    const int64_t N8 = N / 8 * 8;
    at::parallel_for(0, (N8 + NTILE - 1) / NTILE, 1, [&](int64_t ta, int64_t tb) {
      x8_rows(act.acts, M, wp, type, ta * NTILE, std::min(N8, tb * NTILE), N, yp);
    });
    if (N8 < N) decode_rows(act.acts, M, wp + x8_bytes(type, N8, K), rb, type, true, 0, N - N8, N, yp + N8);
    return;
  }
#endif
  at::parallel_for(0, (N + NTILE - 1) / NTILE, 1, [&](int64_t ta, int64_t tb) {
    for (int64_t tile = ta; tile < tb; ++tile) {
      const int64_t n0 = tile * NTILE, n1 = std::min(N, n0 + NTILE);
      // the scalar K code has no unpacked form: each row's result never depends on M there
      if (!unpacked || (is_k(type) && !avx2)) decode_rows(act.acts, M, wp, rb, type, avx2, n0, n1, N, yp);
#ifdef QG_X86
      else if (is_k(type)) ktile_rows(act.acts, M, wp, rb, type, n0, n1, N, yp);
#endif
      else tile_rows(act.acts, M, wp, rb, type, avx2, n0, n1, N, yp);
    }
  });
}

}  // namespace

// C entry points (called through ctypes: no Python binding to compile).
// x float32 [M, K], w the GGUF rows [N, K / block values * block bytes], y float32 [M, N].
// `type` + X8 (0x100): w is in the x8 layout (loopcli_x8_repack), which only the AVX2 code reads.
extern "C" int loopcli_qgemm(const float* x, int64_t M, int64_t K, const uint8_t* w, int64_t N, int type,
                             int scalar, int unpacked, float* y) {
  const bool x8 = type & X8;
  type &= ~X8;
  if (block_bytes(type) == 0 || K % block_values(type) != 0) return 1;
  if (x8 && (x8_block_bytes(type) == 0 || scalar || !cpu_has_avx2())) return 1;
  qgemm(x, M, K, w, N, type, x8, scalar != 0, unpacked != 0, y);
  return 0;
}

// The x8 layout's size in bytes for N rows of K values (0: the type has none), and the repack.
extern "C" int64_t loopcli_x8_bytes(int type, int64_t N, int64_t K) {
  if (x8_block_bytes(type) == 0 || K % block_values(type) != 0) return 0;
  return x8_bytes(type, N, K);
}

extern "C" void loopcli_x8_repack(int type, const uint8_t* raw, int64_t N, int64_t K, uint8_t* out) {
  x8_repack(type, raw, N, K, out);
}

extern "C" int loopcli_qgemm_has_avx2() { return cpu_has_avx2() ? 1 : 0; }
