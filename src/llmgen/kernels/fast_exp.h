// e^x in float32 without a call to libm, so that GCC vectorises the loops using it (a call to expf
// stays scalar unless built with -ffast-math). Relative error ~2e-7, like expf's.
#pragma once

#include <math.h>
#include <stdint.h>

inline float fast_exp(float x) {
  x = x < -87.f ? -87.f : x > 88.f ? 88.f : x;    // e^x stays normal (fmaxf would not vectorise)
  const float n = nearbyintf(x * 1.44269504f);    // x = n ln 2 + r, |r| <= ln 2 / 2
  float r = fmaf(n, -0.693359375f, x);            // ln 2 in two parts (Cody and Waite), for an exact r
  r = fmaf(n, 2.12194440e-4f, r);
  float p = 1.f / 720;                            // e^r to degree 6: error r^7 / 7! < 2e-7
  p = fmaf(p, r, 1.f / 120);
  p = fmaf(p, r, 1.f / 24);
  p = fmaf(p, r, 1.f / 6);
  p = fmaf(p, r, 0.5f);
  p = fmaf(p, r, 1.f);
  p = fmaf(p, r, 1.f);
  const float two_to_n = __builtin_bit_cast(float, ((int32_t)n + 127) << 23);  // the exponent bits of 2^n
  return p * two_to_n;
}
