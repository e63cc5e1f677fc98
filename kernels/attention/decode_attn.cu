// Decode attention in CUDA C++ for sm_90: one new query token per sequence over a batched
// KV cache, GQA, optional sliding window. Launched by cuda_decode.py; its reference is
// reference.py (decode_attention); the Triton kernel beside it is triton_decode.py.
//
// For sequence b with L = lengths[b], query head h = g R + r (kv head g):
//   out[b, h] = sum_p softmax_p(q[b, h] . k[b, p, g] * scale) v[b, p, g],  p in [lo, L),
//   lo = max(0, L - window) with a window, else 0; a sequence of length 0 gets zeros.
//
// Work: the positions of one (b, g) are split over a thread-block cluster of C CTAs (C = 1,
// 2, 4 or 8) of NW warps: CTA c takes positions [c P, c P + P), its warp w positions
// c P + w + NW i. A lane holds D / 32 dims of a row: per position it loads its dims of k and
// v (one 4- or 8-byte load each), forms the R query heads' partial dots and sums them over
// the warp (shuffles). Per group of PW positions: the scores, the running maximum m, then
// 2^(s - m) summed into l and, times v, into acc (float32, base 2: q is scaled by scale *
// log2 e when loaded; the sums so far rescaled by 2^(m_old - m)). Positions outside
// [lo, L) are selected away, never multiplied: rows past L may hold anything.
// Combine, in fixed order (the result does not depend on timing): each CTA folds its NW
// warps' (m, l, acc) in shared memory; after a cluster barrier CTA c computes its share of
// the R x D outputs from the C CTA partials read through distributed shared memory:
//   out = sum_c 2^(m_c - M) acc_c / sum_c 2^(m_c - M) l_c,  M = max_c m_c.
// No workspace in global memory, no second launch.
//
// PDL: before griddepcontrol.wait the CTA only asks L2 to prefetch the k/v rows of its
// positions (the first PREFETCH of them per warp, chosen by position alone); everything is
// read after the wait, so the rows the kernel before writes (each sequence's newest, and q)
// are read as written, and the first group's rows come from L2. Loads bypass L1
// (ld.global.cg): the caches and q are written by other kernels of the step.

#include <cooperative_groups.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "../cuda_common.cuh"  // to_float2, float_to_act

namespace cg = cooperative_groups;

namespace {

constexpr int NW = 4;   // warps per CTA
constexpr int PW = 8;   // positions per warp per group
constexpr int PREFETCH = 64;   // positions per warp prefetched into L2 before the PDL wait

// The D / 32 values of lane `lane` of a 16-bit row: D / 64 32-bit words, one load.
template <int D>
__device__ __forceinline__ void load_row(const uint16_t* p, uint32_t (&w)[D / 64]) {
  if constexpr (D == 128) {
    const uint2 t = __ldcg(reinterpret_cast<const uint2*>(p));
    w[0] = t.x;
    w[1] = t.y;
  } else {
    w[0] = __ldcg(reinterpret_cast<const unsigned int*>(p));
  }
}

__device__ __forceinline__ void prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

template <bool BF16, int D>
__device__ __forceinline__ void to_float(const uint32_t (&w)[D / 64], float (&f)[D / 32]) {
#pragma unroll
  for (int i = 0; i < D / 64; ++i) to_float2<BF16>(w[i], f[2 * i], f[2 * i + 1]);
}

// RM: query heads per kv head the kernel is built for (R <= RM; heads past R are not stored)
template <bool BF16, int D, int RM>
__global__ void __launch_bounds__(NW * 32)
attn_decode_kernel(const uint16_t* __restrict__ q, const uint16_t* __restrict__ kc,
                   const uint16_t* __restrict__ vc, const int* __restrict__ lengths,
                   uint16_t* __restrict__ out, int HK, int R, int S, int P, long long sqb,
                   long long skb, long long sks, long long skh, long long svb, long long svs,
                   long long svh, long long sob, float qk_scale, int window, int pdl) {
#if __CUDA_ARCH__ >= 900
  constexpr int W = D / 64, DL = D / 32;
  __shared__ float s_m[NW][RM], s_l[NW][RM];
  __shared__ float s_acc[NW][RM][D];     // [0] then holds the CTA's folded acc
  __shared__ float c_m[RM], c_l[RM];     // the CTA's folded m and l
  cg::cluster_group cluster = cg::this_cluster();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int b = blockIdx.x / HK, g = blockIdx.x - b * HK;
  const int c = blockIdx.y, C = gridDim.y;
  const int p0 = c * P, p1 = min(p0 + P, S);
  const uint16_t* kb = kc + b * skb + g * skh + lane * DL;
  const uint16_t* vb = vc + b * svb + g * svh + lane * DL;

  uint32_t kr[PW][W], vr[PW][W];
  auto fetch = [&](int first) {           // positions first + NW i of this warp
#pragma unroll
    for (int i = 0; i < PW; ++i) {
      const int p = first + NW * i;
      if (p < p1) {
        load_row<D>(kb + p * sks, kr[i]);
        load_row<D>(vb + p * svs, vr[i]);
      }
    }
  };
  const int first0 = p0 + warp;
  if (pdl) {
    for (int i = 0; i < PREFETCH; ++i) {  // not read before the wait: only fetched into L2
      const int p = first0 + NW * i;
      if (p >= p1) break;
      prefetch_l2(kb + p * sks);
      prefetch_l2(vb + p * svs);
    }
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;");
  }
  fetch(first0);
  const int L = __ldcg(lengths + b);
  const int lo = window > 0 ? max(0, L - window) : 0;
  const int hi = min(p1, L);

  float qf[RM][DL];
#pragma unroll
  for (int r = 0; r < RM; ++r) {
    uint32_t w[W] = {};
    if (r < R) load_row<D>(q + b * sqb + (g * R + r) * D + lane * DL, w);
    to_float<BF16, D>(w, qf[r]);
#pragma unroll
    for (int e = 0; e < DL; ++e) qf[r][e] *= qk_scale;
  }

  float m[RM], l[RM], acc[RM][DL];
#pragma unroll
  for (int r = 0; r < RM; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.f;
#pragma unroll
    for (int e = 0; e < DL; ++e) acc[r][e] = 0.f;
  }

  for (int first = first0; first < hi; first += NW * PW) {
    if (first != first0) fetch(first);
    float s[PW][RM];
    bool valid[PW];
#pragma unroll
    for (int i = 0; i < PW; ++i) {
      const int p = first + NW * i;
      valid[i] = p >= lo && p < hi;
      float kf[DL];
      to_float<BF16, D>(kr[i], kf);
#pragma unroll
      for (int r = 0; r < RM; ++r) {
        float d = 0.f;
#pragma unroll
        for (int e = 0; e < DL; ++e) d = fmaf(qf[r][e], kf[e], d);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
        s[i][r] = valid[i] ? d : -INFINITY;
      }
    }
#pragma unroll
    for (int r = 0; r < RM; ++r) {
      float mx = m[r];
#pragma unroll
      for (int i = 0; i < PW; ++i) mx = fmaxf(mx, s[i][r]);
      if (mx == -INFINITY) continue;      // no valid position yet
      const float corr = exp2f(m[r] - mx);
      l[r] *= corr;
#pragma unroll
      for (int e = 0; e < DL; ++e) acc[r][e] *= corr;
#pragma unroll
      for (int i = 0; i < PW; ++i) {
        if (!valid[i]) continue;
        const float pr = exp2f(s[i][r] - mx);
        float vf[DL];
        to_float<BF16, D>(vr[i], vf);
        l[r] += pr;
#pragma unroll
        for (int e = 0; e < DL; ++e) acc[r][e] = fmaf(pr, vf[e], acc[r][e]);
      }
      m[r] = mx;
    }
  }

  // the warps' partials, then the CTA's: each thread folds the (r, d) it owns, in warp order
#pragma unroll
  for (int r = 0; r < RM; ++r) {
    if (lane == 0) {
      s_m[warp][r] = m[r];
      s_l[warp][r] = l[r];
    }
#pragma unroll
    for (int e = 0; e < DL; ++e) s_acc[warp][r][lane * DL + e] = acc[r][e];
  }
  __syncthreads();
  for (int j = threadIdx.x; j < R * D; j += NW * 32) {
    const int r = j / D, d = j - r * D;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < NW; ++w) mx = fmaxf(mx, s_m[w][r]);
    float a = 0.f, den = 0.f;
    if (mx != -INFINITY) {
#pragma unroll
      for (int w = 0; w < NW; ++w) {
        if (s_m[w][r] == -INFINITY) continue;
        const float f = exp2f(s_m[w][r] - mx);
        a = fmaf(f, s_acc[w][r][d], a);
        den = fmaf(f, s_l[w][r], den);
      }
    }
    s_acc[0][r][d] = a;                   // read above by this thread only
    if (d == 0) {
      c_m[r] = mx;
      c_l[r] = den;
    }
  }
  cluster.sync();

  // CTA c: outputs j = c NW 32 + t, + C NW 32, ... of the R x D, from the C CTAs' partials
  for (int j = c * NW * 32 + threadIdx.x; j < R * D; j += C * NW * 32) {
    const int r = j / D, d = j - r * D;
    float mx = -INFINITY;
    for (int cc = 0; cc < C; ++cc) mx = fmaxf(mx, *cluster.map_shared_rank(&c_m[r], cc));
    float num = 0.f, den = 0.f;
    if (mx != -INFINITY) {
      for (int cc = 0; cc < C; ++cc) {
        const float mc = *cluster.map_shared_rank(&c_m[r], cc);
        if (mc == -INFINITY) continue;
        const float f = exp2f(mc - mx);
        num = fmaf(f, *cluster.map_shared_rank(&s_acc[0][r][d], cc), num);
        den = fmaf(f, *cluster.map_shared_rank(&c_l[r], cc), den);
      }
    }
    out[b * sob + (g * R + r) * D + d] = float_to_act(den > 0.f ? num / den : 0.f, BF16);
  }
  cluster.sync();                         // no CTA leaves while another reads its memory
#endif
}

template <bool BF16, int D, int RM>
cudaError_t launch(const void* q, const void* kc, const void* vc, const void* lengths,
                   void* out, int B, int HK, int R, int S, int P, int C, long long sqb,
                   long long skb, long long sks, long long skh, long long svb, long long svs,
                   long long svh, long long sob, float qk_scale, int window,
                   cudaStream_t stream, int pdl) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(B * HK, C, 1);
  cfg.blockDim = dim3(NW * 32, 1, 1);
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = 1;
  attr[0].val.clusterDim.y = C;
  attr[0].val.clusterDim.z = 1;
  attr[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[1].val.programmaticStreamSerializationAllowed = pdl ? 1 : 0;
  cfg.attrs = attr;
  cfg.numAttrs = 2;
  return cudaLaunchKernelEx(&cfg, attn_decode_kernel<BF16, D, RM>, (const uint16_t*)q,
                            (const uint16_t*)kc, (const uint16_t*)vc, (const int*)lengths,
                            (uint16_t*)out, HK, R, S, P, sqb, skb, sks, skh, svb, svs, svh,
                            sob, qk_scale, window, pdl);
}

}  // namespace

// bf16: 1 for bfloat16, 0 for float16; d: head size (64 or 128); r: query heads per kv head
// (1..8). q [B, HK R d] (row stride sqb), caches [B, S, HK, d] (strides in elements), lengths
// [B] int32 in [0, S], out like q (row stride sob); unit stride along d, every row start
// aligned to d / 16 bytes. Cluster of c CTAs (1, 2, 4, 8) per (b, kv head), p positions
// each (c p >= S). window <= 0: none. qk_scale: scale * log2(e). Returns a cudaError_t
// (0: launched).
extern "C" int attn_decode_launch(int bf16, int d, int r, const void* q, const void* kc,
                                  const void* vc, const void* lengths, void* out, int B,
                                  int HK, int S, int p, int c, long long sqb, long long skb,
                                  long long sks, long long skh, long long svb, long long svs,
                                  long long svh, long long sob, float qk_scale, int window,
                                  void* stream, int pdl) {
  if (B < 1 || HK < 1 || S < 1 || p < 1 || r < 1 || r > 8 || (long long)c * p < S ||
      (c != 1 && c != 2 && c != 4 && c != 8))
    return (int)cudaErrorInvalidValue;
  cudaStream_t st = (cudaStream_t)stream;
  const int rm = r <= 4 ? 4 : 8;
#define ATTN_CASE(BB, DD, RR)                                                               \
  if ((bool)bf16 == BB && d == DD && rm == RR)                                              \
    return (int)launch<BB, DD, RR>(q, kc, vc, lengths, out, B, HK, r, S, p, c, sqb, skb,    \
                                   sks, skh, svb, svs, svh, sob, qk_scale, window, st, pdl);
  ATTN_CASE(true, 128, 4) ATTN_CASE(true, 128, 8) ATTN_CASE(true, 64, 4) ATTN_CASE(true, 64, 8)
  ATTN_CASE(false, 128, 4) ATTN_CASE(false, 128, 8) ATTN_CASE(false, 64, 4)
  ATTN_CASE(false, 64, 8)
#undef ATTN_CASE
  return (int)cudaErrorInvalidValue;
}

extern "C" const char* attn_decode_error_string(int err) {
  return cudaGetErrorString((cudaError_t)err);
}
