// Float GEMV for decode in CUDA C++: y[M, N] = x[M, K] @ W^T (+ bias), W [N, K] bf16/fp16
// row-major, M <= 4, y in x's dtype or float32 (F32: the engine's logits). Built and
// launched by cuda_gemv.py; its reference is reference.py.
//
// Work: CTA = WK warps on R rows of W; the K axis is cut into chunks of 256 (32 lanes x 8
// values, one 16-byte load per lane), warp w takes chunks w, w + WK, ... . Per chunk a lane
// loads its 8 values of each of the R rows (R independent 16-byte loads) and the matching 8
// values of x (L1), then FMAs them into R (x M) float32 sums. The next chunk's R loads are
// issued before this chunk's FMAs (two chunks in flight per warp), and the first two
// chunks' loads before the PDL wait: W is a weight, no kernel writes it. At the end each
// sum is reduced over the lanes (shuffles, fixed order), the WK warps' sums over shared
// memory in warp order: the result does not depend on timing.

#include <cuda_runtime.h>
#include <stdint.h>

#include "../cuda_common.cuh"  // load_stream, act_to_float, to_float2, float_to_act

namespace {

// MR: rows of x the kernel is built for (M <= MR; rows past M read as 0 and are not stored)
template <bool BF16, bool F32, int MR, int R, int WK>
__global__ void __launch_bounds__(WK * 32)
gemv_kernel(const uint16_t* __restrict__ x, const uint16_t* __restrict__ w,
            const uint16_t* __restrict__ bias, void* __restrict__ y, int M, int N, int K,
            int stride_xm, int stride_w, int stride_ym, int pdl) {
  __shared__ float red[WK][MR][R];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row0 = blockIdx.x * R;
  const int chunks = (K + 255) / 256;

  const uint4* wrow[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int row = min(row0 + r, N - 1);          // rows past N repeat the last: not stored
    wrow[r] = reinterpret_cast<const uint4*>(w + (size_t)row * stride_w) + lane;
  }
  // chunk c of this lane: values k = 256 c + 8 lane .. + 7 (in range when k < K: K % 8 == 0)
  auto fetch = [&](int c, uint4 (&dst)[R]) {
    const bool in = c < chunks && 256 * c + 8 * lane < K;
#pragma unroll
    for (int r = 0; r < R; ++r)
      dst[r] = in ? load_stream(wrow[r] + 32 * c) : make_uint4(0, 0, 0, 0);
  };

  uint4 cur[R], nxt[R];
  int c = warp;
  fetch(c, cur);
  fetch(c + WK, nxt);
#if __CUDA_ARCH__ >= 900
  if (pdl) {
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;");
  }
#endif

  float acc[MR][R];
#pragma unroll
  for (int m = 0; m < MR; ++m)
#pragma unroll
    for (int r = 0; r < R; ++r) acc[m][r] = 0.f;

  for (; c < chunks; c += WK) {
    const int k = 256 * c + 8 * lane;
    float xf[MR][8];
#pragma unroll
    for (int m = 0; m < MR; ++m) {
      uint4 xv = make_uint4(0, 0, 0, 0);
      if (m < M && k < K)
        xv = __ldg(reinterpret_cast<const uint4*>(x + (size_t)m * stride_xm + k));
      to_float2<BF16>(xv.x, xf[m][0], xf[m][1]);
      to_float2<BF16>(xv.y, xf[m][2], xf[m][3]);
      to_float2<BF16>(xv.z, xf[m][4], xf[m][5]);
      to_float2<BF16>(xv.w, xf[m][6], xf[m][7]);
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float wf[8];
      to_float2<BF16>(cur[r].x, wf[0], wf[1]);
      to_float2<BF16>(cur[r].y, wf[2], wf[3]);
      to_float2<BF16>(cur[r].z, wf[4], wf[5]);
      to_float2<BF16>(cur[r].w, wf[6], wf[7]);
#pragma unroll
      for (int m = 0; m < MR; ++m)
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[m][r] = fmaf(wf[e], xf[m][e], acc[m][r]);
      cur[r] = nxt[r];
    }
    if (c + 2 * WK < chunks) fetch(c + 2 * WK, nxt);
  }

#pragma unroll
  for (int m = 0; m < MR; ++m)
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float v = acc[m][r];
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      acc[m][r] = v;
    }
  if (lane == 0) {
#pragma unroll
    for (int m = 0; m < MR; ++m)
#pragma unroll
      for (int r = 0; r < R; ++r) red[warp][m][r] = acc[m][r];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < MR * R; i += WK * 32) {
    const int m = i / R, r = i - m * R, row = row0 + r;
    if (m >= M || row >= N) continue;
    float v = 0.f;
#pragma unroll
    for (int q = 0; q < WK; ++q) v += red[q][m][r];
    if (bias) v += act_to_float(bias[row], BF16);
    if (F32)
      reinterpret_cast<float*>(y)[(size_t)m * stride_ym + row] = v;
    else
      reinterpret_cast<uint16_t*>(y)[(size_t)m * stride_ym + row] = float_to_act(v, BF16);
  }
}

template <bool BF16, bool F32, int MR, int R, int WK>
cudaError_t launch(const void* x, const void* w, const void* bias, void* y, int M, int N,
                   int K, int sxm, int sw, int sym, cudaStream_t stream, int pdl) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3((N + R - 1) / R, 1, 1);
  cfg.blockDim = dim3(WK * 32, 1, 1);
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = pdl ? 1 : 0;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cudaLaunchKernelEx(&cfg, gemv_kernel<BF16, F32, MR, R, WK>, (const uint16_t*)x,
                            (const uint16_t*)w, (const uint16_t*)bias, y, M, N, K,
                            sxm, sw, sym, pdl);
}

template <bool BF16, bool F32, int MR>
cudaError_t by_tile(int r, int wk, const void* x, const void* w, const void* bias, void* y,
                    int M, int N, int K, int sxm, int sw, int sym, cudaStream_t st, int pdl) {
#define GEMV_CASE(RR, W)                                                                    \
  if (r == RR && wk == W)                                                                   \
    return launch<BF16, F32, MR, RR, W>(x, w, bias, y, M, N, K, sxm, sw, sym, st, pdl);
  GEMV_CASE(4, 4) GEMV_CASE(4, 8) GEMV_CASE(8, 4) GEMV_CASE(8, 8) GEMV_CASE(16, 4)
  GEMV_CASE(16, 8)
#undef GEMV_CASE
  return cudaErrorInvalidValue;
}

}  // namespace

// bf16: 1 for bfloat16, 0 for float16; f32: y is float32 (else x's dtype); r: rows of W
// per CTA (4, 8, 16); wk: warps per CTA (4, 8). x [M, K] (M <= 4), W [N, K], y [M, N]: unit
// stride along K / N, 16-byte aligned rows (K, stride_xm and stride_w multiples of 8).
// Returns a cudaError_t (0: launched).
extern "C" int gemv_launch(int bf16, int f32, int r, int wk, const void* x, const void* w,
                           const void* bias, void* y, int M, int N, int K, int stride_xm,
                           int stride_w, int stride_ym, void* stream, int pdl) {
  cudaStream_t st = (cudaStream_t)stream;
  const int mr = M <= 1 ? 1 : M <= 2 ? 2 : 4;
  if (M > 4) return (int)cudaErrorInvalidValue;
#define GEMV_M(B, F, MM)                                                                    \
  if ((bool)bf16 == B && (bool)f32 == F && mr == MM)                                        \
    return (int)by_tile<B, F, MM>(r, wk, x, w, bias, y, M, N, K, stride_xm, stride_w,       \
                                  stride_ym, st, pdl);
  GEMV_M(true, false, 1) GEMV_M(true, false, 2) GEMV_M(true, false, 4)
  GEMV_M(false, false, 1) GEMV_M(false, false, 2) GEMV_M(false, false, 4)
  GEMV_M(true, true, 1) GEMV_M(true, true, 2) GEMV_M(true, true, 4)
  GEMV_M(false, true, 1) GEMV_M(false, true, 2) GEMV_M(false, true, 4)
#undef GEMV_M
  return (int)cudaErrorInvalidValue;
}

extern "C" const char* gemv_error_string(int err) {
  return cudaGetErrorString((cudaError_t)err);
}
