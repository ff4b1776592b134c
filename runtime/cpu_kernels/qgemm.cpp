// y = x . W^T straight from GGUF blocks (Q8_0, Q4_0, Q4_K, Q5_K, Q6_K) on the CPU.
//
// Activations are quantized to int8 per 32 values (scale amax / 127, round to nearest even),
// as llama.cpp does, and every 32-value piece of a weight row is a small unsigned integer
// vector u with w = s * u + z (s and z per 16 values), so a block dot product is an integer
// dot product (AVX2 maddubs) plus a correction z * sum(xq). Q8_0 is signed: |q| . sign(x, q).
// Decode (few rows) decodes each block in registers once for all rows; prefill unpacks a tile of
// weight rows once for all rows. On the prefill path each output is summed in the same order
// whatever the number of rows M, so a row's result does not depend on the chunk it came in.
// Work is split over output columns with at::parallel_for: torch's own thread pool, so the
// extension never adds threads on top of torch's. The AVX2 code is compiled for that target
// only (function attributes) and chosen at run time; the scalar code is the fallback.

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>
#include <cstdint>
#include <cstring>

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
  uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 31, man = h & 1023, bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do { man <<= 1; ++e; } while (!(man & 1024));
      bits = sign | (uint32_t)(127 - 15 - e) << 23 | (man & 1023) << 13;
    }
  } else if (exp == 31) {
    bits = sign | 0xFFu << 23 | man << 13;
  } else {
    bits = sign | (exp + 127 - 15) << 23 | man << 13;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
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

// Per-super-block scale s and offset z for each 16 values: w = s * u + z.
// For Q8_0, u is the signed value itself and z is 0.
struct Scales {
  float s[16], z[16];
};

void block_scales(int t, const uint8_t* b, Scales& out) {
  switch (t) {
    case Q8_0: out.s[0] = out.s[1] = f16(b); out.z[0] = out.z[1] = 0.f; break;
    case Q4_0: out.s[0] = out.s[1] = f16(b); out.z[0] = out.z[1] = -8.f * out.s[0]; break;
    case Q4_K:
    case Q5_K: {
      float d = f16(b), dmin = f16(b + 2);
      uint8_t sc[8], mn[8];
      k_scales(b + 4, sc, mn);
      for (int j = 0; j < 8; ++j) {
        out.s[2 * j] = out.s[2 * j + 1] = d * sc[j];
        out.z[2 * j] = out.z[2 * j + 1] = -dmin * mn[j];
      }
      break;
    }
    case Q6_K: {
      float d = f16(b + 208);
      const int8_t* sc = (const int8_t*)(b + 192);
      for (int j = 0; j < 16; ++j) { out.s[j] = d * sc[j]; out.z[j] = -32.f * out.s[j]; }
      break;
    }
  }
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
  const float* d;
  const float* dsum;
  int64_t K;
};

void quantize_row_scalar(const float* x, int64_t K, int8_t* q, float* d, float* dsum) {
  for (int64_t b = 0; b < K / 32; ++b) {
    float amax = 0.f;
    for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[32 * b + i]));
    float s = amax / 127.f, inv = s > 0.f ? 1.f / s : 0.f;
    d[b] = s;
    for (int h = 0; h < 2; ++h) {
      int sum = 0;
      for (int i = 16 * h; i < 16 * h + 16; ++i) {
        int v = (int)std::nearbyint(x[32 * b + i] * inv);
        q[32 * b + i] = (int8_t)v;
        sum += v;
      }
      dsum[2 * b + h] = s * (float)sum;
    }
  }
}

// One weight row against `mr` activation rows, scalar.
void row_scalar(int t, const uint8_t* w, const Acts& a, const int64_t* rows, int mr, float* out) {
  int nb = (int)(a.K / block_values(t)), bb = block_bytes(t), pieces = block_values(t) / 32;
  for (int m = 0; m < mr; ++m) out[m] = 0.f;
  Scales sc;
  int u[32];
  for (int b = 0; b < nb; ++b) {
    const uint8_t* blk = w + (int64_t)b * bb;
    block_scales(t, blk, sc);
    for (int g = 0; g < pieces; ++g) {
      piece(t, blk, g, u);
      int64_t j = (int64_t)b * pieces + g;
      for (int m = 0; m < mr; ++m) {
        const int8_t* xq = a.q + rows[m] * a.K + 32 * j;
        int s0 = 0, s1 = 0;
        for (int i = 0; i < 16; ++i) { s0 += u[i] * xq[i]; s1 += u[16 + i] * xq[16 + i]; }
        float xd = a.d[rows[m] * (a.K / 32) + j];
        const float* ds = a.dsum + rows[m] * (a.K / 16) + 2 * j;
        out[m] += xd * (sc.s[2 * g] * s0 + sc.s[2 * g + 1] * s1) + sc.z[2 * g] * ds[0] + sc.z[2 * g + 1] * ds[1];
      }
    }
  }
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
  int nb = (int)(K / block_values(t)), bb = block_bytes(t), pieces = block_values(t) / 32;
  Scales sc;
  int v[32];
  for (int b = 0; b < nb; ++b) {
    const uint8_t* blk = w + (int64_t)b * bb;
    block_scales(t, blk, sc);
    for (int g = 0; g < pieces; ++g) {
      int64_t j = (int64_t)b * pieces + g;
      piece(t, blk, g, v);
      for (int i = 0; i < 32; ++i) u[32 * j + i] = (uint8_t)v[i];
      for (int i = 0; i < 4; ++i) { sv[8 * j + i] = sc.s[2 * g]; sv[8 * j + 4 + i] = sc.s[2 * g + 1]; }
      z[2 * j] = sc.z[2 * g];
      z[2 * j + 1] = sc.z[2 * g + 1];
    }
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

#ifdef QG_X86
#define AVX2 __attribute__((target("avx2,fma,f16c")))

AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

AVX2 void quantize_row_avx2(const float* x, int64_t K, int8_t* q, float* d, float* dsum) {
  const __m256 sign = _mm256_set1_ps(-0.f);
  for (int64_t b = 0; b < K / 32; ++b) {
    __m256 v[4], mx = _mm256_setzero_ps();
    for (int i = 0; i < 4; ++i) {
      v[i] = _mm256_loadu_ps(x + 32 * b + 8 * i);
      mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, v[i]));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    float amax = _mm_cvtss_f32(m4), s = amax / 127.f, inv = s > 0.f ? 1.f / s : 0.f;
    d[b] = s;
    __m256 iv = _mm256_set1_ps(inv);
    __m256i i32[4];
    for (int i = 0; i < 4; ++i) i32[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], iv));  // nearest even
    // sums per 16: lanes of i32[0..1] and i32[2..3]
    __m256i s01 = _mm256_add_epi32(i32[0], i32[1]), s23 = _mm256_add_epi32(i32[2], i32[3]);
    __m256i h = _mm256_hadd_epi32(s01, s23);  // [a0+a1, a2+a3, c0+c1, c2+c3 | a4+a5, a6+a7, c4+c5, c6+c7]
    h = _mm256_hadd_epi32(h, h);  // [A03, C03, ., . | A47, C47, ., .]
    int32_t hs[8];
    _mm256_storeu_si256((__m256i*)hs, h);
    dsum[2 * b] = s * (float)(hs[0] + hs[4]);
    dsum[2 * b + 1] = s * (float)(hs[1] + hs[5]);
    __m256i p16a = _mm256_packs_epi32(i32[0], i32[1]), p16b = _mm256_packs_epi32(i32[2], i32[3]);
    __m256i p8 = _mm256_packs_epi16(p16a, p16b);
    // packs interleave 128-bit lanes: restore order 0..31
    p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i*)(q + 32 * b), p8);
  }
}

// block_scales compiled for AVX2 (F16C conversions, no SSE/AVX switch inside the hot loop).
AVX2 inline float h(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return _cvtsh_ss(v);
}

template <int T>
AVX2 inline void scales_avx2(const uint8_t* b, Scales& out) {
  if constexpr (T == Q8_0 || T == Q4_0) {
    out.s[0] = out.s[1] = h(b);
    out.z[0] = out.z[1] = T == Q4_0 ? -8.f * out.s[0] : 0.f;
  } else if constexpr (T == Q4_K || T == Q5_K) {
    const float d = h(b), dmin = h(b + 2);
    const uint8_t* s = b + 4;
    for (int j = 0; j < 4; ++j) {
      float s0 = d * (s[j] & 63), s1 = d * ((s[j + 8] & 15) | ((s[j] >> 6) << 4));
      float z0 = -dmin * (s[j + 4] & 63), z1 = -dmin * ((s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4));
      out.s[2 * j] = out.s[2 * j + 1] = s0;
      out.s[2 * j + 8] = out.s[2 * j + 9] = s1;
      out.z[2 * j] = out.z[2 * j + 1] = z0;
      out.z[2 * j + 8] = out.z[2 * j + 9] = z1;
    }
  } else {
    const float d = h(b + 208);
    const int8_t* sc = (const int8_t*)(b + 192);
    for (int j = 0; j < 16; ++j) { out.s[j] = d * sc[j]; out.z[j] = -32.f * out.s[j]; }
  }
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

// One weight row against MR activation rows.
template <int T, int MR>
AVX2 void row_avx2(const uint8_t* w, const Acts& a, const int64_t* rows, float* out) {
  constexpr int BV = T == Q8_0 || T == Q4_0 ? 32 : 256, PIECES = BV / 32;
  const int nb = (int)(a.K / BV), bb = T == Q8_0 ? 34 : T == Q4_0 ? 18 : T == Q4_K ? 144 : T == Q5_K ? 176 : 210;
  const __m256i ones = _mm256_set1_epi16(1);
  const int8_t* xq[MR];
  const float *xd[MR], *ds[MR];
  __m256 acc[MR], corrv[MR];
  float corr[MR];
  for (int m = 0; m < MR; ++m) {
    xq[m] = a.q + rows[m] * a.K;
    xd[m] = a.d + rows[m] * (a.K / 32);
    ds[m] = a.dsum + rows[m] * (a.K / 16);
    acc[m] = corrv[m] = _mm256_setzero_ps();
    corr[m] = 0.f;
  }
  Scales sc;
  __m256i qh = _mm256_setzero_si256();
  for (int b = 0; b < nb; ++b) {
    const uint8_t* blk = w + (int64_t)b * bb;
    scales_avx2<T>(blk, sc);
    for (int g = 0; g < PIECES; ++g) {
      const int64_t j = (int64_t)b * PIECES + g;
      __m256i u = piece_avx2<T>(blk, g, qh);
      __m256i au = u;
      if constexpr (T == Q8_0) au = _mm256_sign_epi8(u, u);
      for (int m = 0; m < MR; ++m) {
        __m256i x = _mm256_loadu_si256((const __m256i*)(xq[m] + 32 * j));
        if constexpr (T == Q8_0) x = _mm256_sign_epi8(x, u);
        __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(au, x), ones);
        __m256 f;
        if constexpr (T == Q6_K) {  // a scale per 16 values
          f = _mm256_mul_ps(_mm256_set_m128(_mm_set1_ps(sc.s[2 * g + 1]), _mm_set1_ps(sc.s[2 * g])),
                            _mm256_set1_ps(xd[m][j]));
        } else {
          f = _mm256_set1_ps(sc.s[2 * g] * xd[m][j]);
        }
        acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), f, acc[m]);
        if constexpr (T == Q4_0) corr[m] += (ds[m][2 * j] + ds[m][2 * j + 1]) * sc.s[0];
      }
    }
    if constexpr (BV == 256) {  // offsets per 16 values: z . (scale * sum of xq)
      const __m256 z0 = _mm256_loadu_ps(sc.z), z1 = _mm256_loadu_ps(sc.z + 8);
      for (int m = 0; m < MR; ++m) {
        corrv[m] = _mm256_fmadd_ps(z0, _mm256_loadu_ps(ds[m] + 16 * b), corrv[m]);
        corrv[m] = _mm256_fmadd_ps(z1, _mm256_loadu_ps(ds[m] + 16 * b + 8), corrv[m]);
      }
    }
  }
  for (int m = 0; m < MR; ++m) {
    float c = T == Q4_0 ? -8.f * corr[m] : BV == 256 ? hsum(corrv[m]) : 0.f;
    out[m] = hsum(acc[m]) + c;
  }
}

template <int T>
AVX2 void rows_avx2(const uint8_t* w, const Acts& a, const int64_t* rows, int mr, float* out) {
  switch (mr) {
    case 1: row_avx2<T, 1>(w, a, rows, out); break;
    case 2: row_avx2<T, 2>(w, a, rows, out); break;
    case 3: row_avx2<T, 3>(w, a, rows, out); break;
    default: row_avx2<T, 4>(w, a, rows, out); break;
  }
}

AVX2 void row_dispatch_avx2(int t, const uint8_t* w, const Acts& a, const int64_t* rows, int mr, float* out) {
  switch (t) {
    case Q8_0: rows_avx2<Q8_0>(w, a, rows, mr, out); break;
    case Q4_0: rows_avx2<Q4_0>(w, a, rows, mr, out); break;
    case Q4_K: rows_avx2<Q4_K>(w, a, rows, mr, out); break;
    case Q5_K: rows_avx2<Q5_K>(w, a, rows, mr, out); break;
    case Q6_K: rows_avx2<Q6_K>(w, a, rows, mr, out); break;
  }
}

template <int T>
AVX2 void unpack_avx2(const uint8_t* w, int64_t K, uint8_t* u, float* sv, float* z) {
  constexpr int BV = T == Q8_0 || T == Q4_0 ? 32 : 256, PIECES = BV / 32;
  const int nb = (int)(K / BV), bb = T == Q8_0 ? 34 : T == Q4_0 ? 18 : T == Q4_K ? 144 : T == Q5_K ? 176 : 210;
  Scales sc;
  __m256i qh = _mm256_setzero_si256();
  for (int b = 0; b < nb; ++b) {
    const uint8_t* blk = w + (int64_t)b * bb;
    scales_avx2<T>(blk, sc);
    for (int g = 0; g < PIECES; ++g) {
      const int64_t j = (int64_t)b * PIECES + g;
      _mm256_storeu_si256((__m256i*)(u + 32 * j), piece_avx2<T>(blk, g, qh));
      _mm256_storeu_ps(sv + 8 * j, _mm256_set_m128(_mm_set1_ps(sc.s[2 * g + 1]), _mm_set1_ps(sc.s[2 * g])));
      z[2 * j] = sc.z[2 * g];
      z[2 * j + 1] = sc.z[2 * g + 1];
    }
  }
}

AVX2 void unpack_dispatch_avx2(int t, const uint8_t* w, int64_t K, uint8_t* u, float* sv, float* z) {
  switch (t) {
    case Q8_0: unpack_avx2<Q8_0>(w, K, u, sv, z); break;
    case Q4_0: unpack_avx2<Q4_0>(w, K, u, sv, z); break;
    case Q4_K: unpack_avx2<Q4_K>(w, K, u, sv, z); break;
    case Q5_K: unpack_avx2<Q5_K>(w, K, u, sv, z); break;
    case Q6_K: unpack_avx2<Q6_K>(w, K, u, sv, z); break;
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
  switch (mr) {
    case 1: tile_rows_avx2<SIGNED, ZERO, 1>(u, sv, z, a, m0, out); break;
    case 2: tile_rows_avx2<SIGNED, ZERO, 2>(u, sv, z, a, m0, out); break;
    case 3: tile_rows_avx2<SIGNED, ZERO, 3>(u, sv, z, a, m0, out); break;
    default: tile_rows_avx2<SIGNED, ZERO, 4>(u, sv, z, a, m0, out); break;
  }
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
  switch (mr) {
    case 1: tile_rows2_avx2<SIGNED, ZERO, 1>(u, sv, z, a, m0, out0, out1); break;
    case 2: tile_rows2_avx2<SIGNED, ZERO, 2>(u, sv, z, a, m0, out0, out1); break;
    case 3: tile_rows2_avx2<SIGNED, ZERO, 3>(u, sv, z, a, m0, out0, out1); break;
    default: tile_rows2_avx2<SIGNED, ZERO, 4>(u, sv, z, a, m0, out0, out1); break;
  }
}

bool cpu_has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
#else
bool cpu_has_avx2() { return false; }
#endif

constexpr int64_t NTILE = 16;  // weight rows kept hot while every activation row passes

void qgemm(const float* xp, int64_t M, int64_t K, const uint8_t* wp, int64_t N, int type, bool scalar, bool unpacked,
           float* yp) {
  std::vector<int8_t> q(M * K);
  std::vector<float> d(M * (K / 32)), ds(M * (K / 16));
  const bool avx2 = !scalar && cpu_has_avx2();
  int8_t* qp = q.data();
  float *dp = d.data(), *dsp = ds.data();
  at::parallel_for(0, M, 16, [&](int64_t a, int64_t b) {
    for (int64_t m = a; m < b; ++m) {
#ifdef QG_X86
      if (avx2) { quantize_row_avx2(xp + m * K, K, qp + m * K, dp + m * (K / 32), dsp + m * (K / 16)); continue; }
#endif
      quantize_row_scalar(xp + m * K, K, qp + m * K, dp + m * (K / 32), dsp + m * (K / 16));
    }
  });
  const Acts acts{qp, dp, dsp, K};
  const int64_t rb = K / block_values(type) * block_bytes(type);
  const int64_t tiles = (N + NTILE - 1) / NTILE;
  if (!unpacked) {  // decode: each weight block decoded in registers for the few rows
    at::parallel_for(0, tiles, 1, [&](int64_t ta, int64_t tb) {
      int64_t rows[4];
      float out[4];
      for (int64_t n = ta * NTILE; n < std::min(N, tb * NTILE); ++n) {
        for (int64_t m0 = 0; m0 < M; m0 += 4) {
          const int mr = (int)std::min<int64_t>(4, M - m0);
          for (int i = 0; i < mr; ++i) rows[i] = m0 + i;
#ifdef QG_X86
          if (avx2) row_dispatch_avx2(type, wp + n * rb, acts, rows, mr, out);
          else
#endif
            row_scalar(type, wp + n * rb, acts, rows, mr, out);
          for (int i = 0; i < mr; ++i) yp[(m0 + i) * N + n] = out[i];
        }
      }
    });
    return;
  }
  // prefill: a tile of weight rows unpacked once, then every activation row passes over it
  const bool is_signed = type == Q8_0, zero = type != Q8_0;
  at::parallel_for(0, tiles, 1, [&](int64_t ta, int64_t tb) {
    Tile tl;
    tl.resize(NTILE, K);
    float out[4];
    for (int64_t tile = ta; tile < tb; ++tile) {
      const int64_t n0 = tile * NTILE, n1 = std::min(N, n0 + NTILE);
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
          if (avx2 && n + 1 < n1) {  // two weight rows per pass over the activation pieces
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
  });
}

}  // namespace

// C entry points (called through ctypes: no Python binding to compile).
// x float32 [M, K], w the GGUF rows [N, K / block values * block bytes], y float32 [M, N].
extern "C" int loopcli_qgemm(const float* x, int64_t M, int64_t K, const uint8_t* w, int64_t N, int type,
                             int scalar, int unpacked, float* y) {
  if (block_bytes(type) == 0 || K % block_values(type) != 0) return 1;
  qgemm(x, M, K, w, N, type, scalar != 0, unpacked != 0, y);
  return 0;
}

extern "C" int loopcli_qgemm_has_avx2() { return cpu_has_avx2() ? 1 : 0; }
