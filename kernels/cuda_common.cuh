// Device helpers shared by the CUDA C++ kernels (kernels/gemv/gemv.cu,
// kernels/w4a16/mma_decode.cu, kernels/attention/decode_attn.cu): the streaming weight load
// and the bf16/fp16 <-> float conversions. Included by path ("../cuda_common.cuh"); kernels/cuda_build.py keys its cache
// on the included files' text as well, so an edit here rebuilds both libraries.
#pragma once

#include <stdint.h>

namespace {

// 16 bytes of a weight, read once: not kept in L1 (nc: no kernel writes weights).
__device__ __forceinline__ uint4 load_stream(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// The float value of the fp16 number in the low 16 bits of `bits`.
__device__ __forceinline__ float half_bits_to_float(uint32_t bits) {
  float f;
  asm("{ .reg .f16 h; mov.b16 h, %1; cvt.f32.f16 %0, h; }" : "=f"(f) : "h"((uint16_t)bits));
  return f;
}

// An activation (bf16 or fp16 bits) as float, and a float rounded to nearest-even as one.
__device__ __forceinline__ float act_to_float(uint16_t v, bool bf16) {
  if (bf16) return __uint_as_float(((uint32_t)v) << 16);
  return half_bits_to_float(v);
}

// The two activations (bf16 or fp16) packed in `v` as floats: the low half to lo.
template <bool BF16>
__device__ __forceinline__ void to_float2(uint32_t v, float& lo, float& hi) {
  if (BF16) {
    lo = __uint_as_float(v << 16);
    hi = __uint_as_float(v & 0xFFFF0000u);
  } else {
    asm("{ .reg .f16 a, b; mov.b32 {a, b}, %2; cvt.f32.f16 %0, a; cvt.f32.f16 %1, b; }"
        : "=f"(lo), "=f"(hi)
        : "r"(v));
  }
}

__device__ __forceinline__ uint16_t float_to_act(float f, bool bf16) {
  uint16_t r;
  if (bf16)
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f));
  else
    asm("{ .reg .f16 h; cvt.rn.f16.f32 h, %1; mov.b16 %0, h; }" : "=h"(r) : "f"(f));
  return r;
}

}  // namespace
