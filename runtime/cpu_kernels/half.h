// IEEE half <-> float in portable C++ (the scalar paths; AVX2 code uses F16C), shared by
// qgemm.cpp and step.cpp.
#pragma once

#include <cstdint>
#include <cstring>

inline float half_to_float(uint16_t h) {
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

// f32 -> f16, round to nearest even (what torch's .to(float16) does).
inline uint16_t float_to_half(float x) {
  uint32_t f;
  std::memcpy(&f, &x, 4);
  const uint32_t sign = (f >> 16) & 0x8000u;
  f &= 0x7FFFFFFFu;
  if (f >= 0x47800000u) return (uint16_t)(sign | (f > 0x7F800000u ? 0x7E00u : 0x7C00u));  // >= 65536, inf, nan
  if (f < 0x38800000u) {  // below 2^-14: subnormal, let the float adder round at the right bit
    float v, magic = 0.5f;
    std::memcpy(&v, &f, 4);
    v += magic;
    uint32_t r;
    std::memcpy(&r, &v, 4);
    return (uint16_t)(sign | (r - 0x3F000000u));
  }
  f += 0xC8000FFFu + ((f >> 13) & 1);  // rebias the exponent (-112 << 23) and round half to even
  return (uint16_t)(sign | (f >> 13));  // a carry into the exponent (65520..65535) gives inf
}
