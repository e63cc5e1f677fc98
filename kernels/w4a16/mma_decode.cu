// W4A16 decode GEMM for M <= 8 in CUDA C++: y[M, N] = x[M, K] @ W^T (+ bias), W in the
// layout of layout.py (int32 words [KP/128, N, 16], sz int32 [G, N]). Built and launched by
// cuda_decode.py; its reference is reference.py (the Triton kernel is the fallback).
//
// Why a second kernel: Triton's wgmma with the weights as register operand waits for each
// block's MMAs before the next block's unpacking (and its pipelined loads need two CTA
// barriers a block), so at M = 1 one program moves ~8 KB per ~1300 cycles. Here every warp
// streams its own K blocks with warp-level mma.sync (no waits, no barriers in the loop), the
// next U blocks' words and scale words already in registers.
//
// Work: CTA = WK warps on 32 output columns (two 16-column MMA tiles); warp w takes the K
// blocks b_lo + w, b_lo + w + WK, ... of the CTA's split; the WK partial tiles are summed in
// shared memory in warp order, then (split > 1) the splits through `ws` and the tile's
// arrival counter, the last CTA summing them in split order (deterministic), as in the
// Triton kernel.
//
// Operands of mma.m16n8k16 (A 16 x 16 row-major = W rows n, B 16 x 8 = x^T, C fp32 16 x 8):
// lane (g = lane / 4, t = lane % 4) holds A pairs (n = g | g + 8, k = 2t | 2t + 8 (+1)).
// Word 4t + c of column n holds, in pair j = 2s + h of ``(w >> 4j) & 0x000F000F``, the codes
// of block rows 32c + 16s + 8h + 2t (+1) (layout.row_of_nibble): so the words 4t..4t+3 of
// columns g and g + 8 (one 16-byte load each) are this lane's A operands of all eight
// 16-row steps (c, s) of a block, made with 11 integer/half ops a word (magic-number
// conversion: q | 0x4300 is bf16 128 + q, q | 0x6400 fp16 1024 + q; one packed subtraction
// of the (OFF + z) pair leaves q - z exactly). x is staged once per CTA in shared memory in
// fragment order, pair j = 4c + 2s + h of lane t at block row 8j + 2t, so a lane reads its
// 16 B-operand pairs of a block with four 16-byte loads. part = sum (q - z) x over a group
// (fp32, on the tensor cores), acc += s * part at the group's end (s: fp16 scale, fp32 math).

// Built in parts (kernels/cuda_build.py reads the line below): nvcc compiles this file once
// per part, in parallel, with -DCUDA_BUILD_PART=p, and links the objects into one library.
// Part p instantiates the kernels of one (dtype, group kind) pair (W4_PART_OF), part 0 also
// the extern "C" dispatcher; a plain one-object build (no CUDA_BUILD_PART) has them all.
// cuda_build: parts 8

#include <cuda_runtime.h>
#include <stdint.h>

#include "../cuda_common.cuh"  // load_stream, half_bits_to_float, act_to_float, float_to_act

namespace {

template <bool BF16>
__device__ __forceinline__ void unpack(uint32_t w, uint32_t zz, uint32_t (&o)[4]) {
  constexpr uint32_t MAGIC = BF16 ? 0x43004300u : 0x64006400u;
  uint32_t u1 = w >> 4, u2 = w >> 8, u3 = w >> 12;
  asm("lop3.b32 %0, %1, 0x000F000F, %2, 0xea;" : "=r"(o[0]) : "r"(w), "r"(MAGIC));
  asm("lop3.b32 %0, %1, 0x000F000F, %2, 0xea;" : "=r"(o[1]) : "r"(u1), "r"(MAGIC));
  asm("lop3.b32 %0, %1, 0x000F000F, %2, 0xea;" : "=r"(o[2]) : "r"(u2), "r"(MAGIC));
  asm("lop3.b32 %0, %1, 0x000F000F, %2, 0xea;" : "=r"(o[3]) : "r"(u3), "r"(MAGIC));
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    if (BF16)
      asm("sub.rn.bf16x2 %0, %1, %2;" : "=r"(o[j]) : "r"(o[j]), "r"(zz));
    else
      asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(o[j]) : "r"(o[j]), "r"(zz));
  }
}

template <bool BF16>
__device__ __forceinline__ void mma(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                    uint32_t a3, uint32_t b0, uint32_t b1) {
  if (BF16)
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

}  // namespace

// The epilogues' argument structs: outside the anonymous namespace, since the dispatcher
// passes them to the other parts of the build (below).
namespace w4a16_mma {

// The qkv projection's epilogue (EPI_ROPE): W's rows are Hq q heads, Hk k heads, Hk v heads
// of D columns each (N = (Hq + 2 Hk) D, D % 32 == 0). The q and k heads are rotated
// (rotate-half RoPE: the pair (j, j + D/2), j < D/2, by the angle float(pos[m]) * freqs[j],
// float32, full-range sincosf), q written to q [M, Hq D] (row stride sq), k and v into the
// caches [>= M, S, Hk, D] at row pos[m] (strides scb, scs, sch; not written where pos[m] >=
// S). Nothing else is written: no y.
struct QkvRope {
  const long long* pos;
  const float* freqs;
  uint16_t* q;
  uint16_t* kc;
  uint16_t* vc;
  long long scb, scs, sch;
  int sq, S, hq, hk, d;
};

// The residual add + RMSNorm between two projections, split over their two kernels
// (mma_decode's NormIO; the consumer's rows scaled by their RMS after the product, which is
// linear in x):
// - producer (EPI_RES): y = round(acc (+ bias)), s = round(y + res) [M, N], written to hs;
//   g = round(s * gamma) [M, N], the consumer's x; ss [M, tiles]: per row and 32-column
//   tile, the float32 sum of s^2 over the tile's columns (reduced in lane order).
// - consumer (NORM, EPI_PLAIN or EPI_GU on x = g): rstd[m] = rsqrt(sum(ss[m, :ss_n]) / KX +
//   eps) (float32; lane-strided partial sums, then a butterfly: deterministic) and every
//   product row m scaled by rstd[m] before the bias, i.e. y = (g @ W^T) rstd + bias, which
//   is rms_norm(s) @ W^T + bias up to where the roundings fall.
struct NormIO {
  const uint16_t* res;
  const uint16_t* gamma;
  uint16_t* hs;
  uint16_t* g;
  float* ss;
  int sr, shs, sg, ss_n;
  float eps;
};

}  // namespace w4a16_mma

namespace {

using w4a16_mma::NormIO;
using w4a16_mma::QkvRope;

enum { EPI_PLAIN = 0, EPI_GU = 1, EPI_ROPE = 2, EPI_RES = 3 };

// GS: rows per group: 32, 64, 128, or 0 for another multiple of 128 (GSR rows; the scale is
// then applied per block, the same sum). SZN: scale words per column and block. EPI: what
// the epilogue writes.
// - EPI_PLAIN: y [M, N] (+ bias).
// - EPI_GU: W is a fused gate-up projection ([W_gate; W_up], N = 2F) and y [M, F] =
//   silu(x W_gate^T) * (x W_up^T): the CTA's first 16-column MMA tile takes gate columns
//   j0 .. j0 + 15 (j0 = 16 * tile), its second the up columns F + j0 .., so each lane holds
//   the gate and the up value of the same feature and row and the epilogue writes their
//   SiLU-mul (float32, one rounding; a bias is added to both first).
// - EPI_ROPE: the qkv projection with RoPE and the cache write (QkvRope): tile i covers head
//   i / (D/32); its first MMA tile takes that head's columns j0 .. j0 + 15 (j0 = 16 * (i %
//   (D/32))), its second the columns D/2 + j0 .., so each lane holds both values of the
//   pairs it rotates (float32, one rounding; bias first).
// The loads are unchanged in every mode: 512 contiguous bytes per 8 columns.
// The kernel body is this device function; the __global__ entries below only pass their
// arguments (EPI_ROPE's are a parameter more), so the other modes' code is as before.
// - EPI_RES: the producer of NormIO (y not written).
// NORM: the consumer of NormIO (with EPI_PLAIN or EPI_GU).
template <bool BF16, int GS, int WK, int U, bool XS, int EPI, bool NORM = false>
__device__ __forceinline__ void
w4a16_mma_body(const uint16_t* __restrict__ x, const uint4* __restrict__ qw,
               const uint32_t* __restrict__ sz, const uint16_t* __restrict__ bias,
               uint16_t* __restrict__ y, float* __restrict__ ws, int* __restrict__ locks,
               int M, int N, int KX, int KP, int GSR, int split, int stride_xm,
               int stride_ym, int pdl, int vec_x, const QkvRope& rope,
               const NormIO& nrm = NormIO{}) {
  constexpr int SZN = GS == 32 ? 4 : GS == 64 ? 2 : 1;
  constexpr uint32_t OFF = BF16 ? 0x4300u : 0x6400u;
  extern __shared__ uint32_t smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int tile = blockIdx.x, n0 = tile * 32;
  const int blocks = KP / 128;
  const int per = (blocks + split - 1) / split;
  const int b_lo = blockIdx.y * per;
  const int b_hi = min(b_lo + per, blocks);
  const int nblk = max(b_hi - b_lo, 0);
  const int nb = nblk > warp ? (nblk - warp + WK - 1) / WK : 0;   // this warp's blocks

  int col[4];                       // q = 2 * tile16 + h: column n0 + 16 * tile16 + g + 8h
  bool ok[4];                       // (GU: column (tile16 ? F : 0) + 16 * tile + g + 8h;
  const int F = N / 2;              //  ROPE: head * D + (tile16 ? D/2 : 0) + j0 + g + 8h)
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    if (EPI == EPI_GU) {
      const int f = tile * 16 + g + 8 * (q & 1);
      col[q] = (q >> 1) * F + f;
      ok[q] = f < F;
    } else if (EPI == EPI_ROPE) {
      const int per_head = rope.d / 32;
      const int head = tile / per_head, j0 = 16 * (tile - head * per_head);
      col[q] = head * rope.d + (q >> 1) * (rope.d / 2) + j0 + g + 8 * (q & 1);
      ok[q] = col[q] < N;
    } else {
      col[q] = n0 + 16 * (q >> 1) + g + 8 * (q & 1);
      ok[q] = col[q] < N;
    }
  }

  // running pointers to this warp's next block (b = b_lo + warp + WK i) of each column
  const uint4* wp[4];
  const uint32_t* sp[4];
  const int b0 = b_lo + warp;
  const size_t wstep = (size_t)WK * N * 4;                  // uint4 per WK blocks
  const size_t sstep = GS == 0 ? 0 : (size_t)WK * SZN * N;  // scale words per WK blocks
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const int c = ok[q] ? col[q] : 0;
    wp[q] = qw + ((size_t)b0 * N + c) * 4 + t;
    sp[q] = sz + (size_t)(GS == 0 ? 0 : b0 * SZN) * N + c;
  }
  uint4 wr[U][4];                   // the next U blocks' words of this lane's 4 columns
  uint32_t sr[U][4][SZN];           // and their scale/zero words
  int bnext = b0;                   // the block the next load() reads
  auto load = [&](int u) {
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      wr[u][q] = load_stream(wp[q]);
      wp[q] += wstep;
      if (GS == 0) {                                       // GSR a multiple of 128
        sr[u][q][0] = __ldg(sz + (size_t)((bnext * 128) / GSR) * N + (ok[q] ? col[q] : 0));
      } else {
#pragma unroll
        for (int i = 0; i < SZN; ++i) sr[u][q][i] = __ldg(sp[q] + (size_t)i * N);
        sp[q] += sstep;
      }
    }
    bnext += WK;
  };
  // weights and scales do not depend on the previous kernel: ask for them before the wait
#pragma unroll
  for (int u = 0; u < U; ++u)
    if (u < nb) load(u);
#if __CUDA_ARCH__ >= 900
  if (pdl) {
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;");
  }
#endif

  // x of the split, in fragment order: sx[((m * nblk + bl) * 4 + t) * 16 + j] = the pair
  // x[m, kb + 8j + 2t .. +1], kb = (b_lo + bl) * 128; zero past KX. One 16-byte load of x
  // (8 values: the pairs t = 0..3 of one j) per step, four independent steps in flight.
  uint32_t* sx = smem;
  const int vecs = XS ? M * nblk * 16 : 0;
#pragma unroll 4
  for (int v = threadIdx.x; v < vecs; v += WK * 32) {
    const int m = v / (nblk * 16), rem = v - m * nblk * 16;
    const int bl = rem >> 4, j = rem & 15;
    const int k = (b_lo + bl) * 128 + 8 * j;
    const uint16_t* src = x + (size_t)m * stride_xm + k;
    uint32_t p[4];
    if (vec_x && k + 8 <= KX) {
      const uint4 x4 = __ldg(reinterpret_cast<const uint4*>(src));
      p[0] = x4.x; p[1] = x4.y; p[2] = x4.z; p[3] = x4.w;
    } else {
#pragma unroll
      for (int q = 0; q < 4; ++q)
        p[q] = k + 2 * q < KX ? *reinterpret_cast<const uint32_t*>(src + 2 * q) : 0u;
    }
    uint32_t* dst = sx + (m * nblk + bl) * 64 + j;
#pragma unroll
    for (int q = 0; q < 4; ++q) dst[q * 16] = p[q];
  }
  if (XS) __syncthreads();

  float acc[2][4], part[2][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[i][e] = part[i][e] = 0.f;

  for (int i0 = 0; i0 < nb; i0 += U) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int i = i0 + u;
      if (i < nb) {
        const int b = b_lo + warp + WK * i;
        uint32_t xv[16];
        if (g < M && XS) {
          const uint4* src = reinterpret_cast<const uint4*>(
              sx + ((g * nblk + (b - b_lo)) * 4 + t) * 16);
#pragma unroll
          for (int v = 0; v < 4; ++v) {
            uint4 x4 = src[v];
            xv[4 * v] = x4.x; xv[4 * v + 1] = x4.y; xv[4 * v + 2] = x4.z; xv[4 * v + 3] = x4.w;
          }
        } else if (g < M) {            // straight from global memory (L1/L2: x is small)
          const int kb = b * 128 + 2 * t;
          const uint32_t* xr = reinterpret_cast<const uint32_t*>(x + (size_t)g * stride_xm + kb);
          if (b * 128 + 128 <= KX) {
#pragma unroll
            for (int j = 0; j < 16; ++j) xv[j] = __ldg(xr + 4 * j);
          } else {
#pragma unroll
            for (int j = 0; j < 16; ++j) xv[j] = kb + 8 * j < KX ? __ldg(xr + 4 * j) : 0u;
          }
        } else {
#pragma unroll
          for (int v = 0; v < 16; ++v) xv[v] = 0;
        }
        const uint4 (&w)[4] = wr[u];
        const uint32_t (&s)[4][SZN] = sr[u];
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const int gi = GS == 32 ? c : GS == 64 ? c / 2 : 0;   // group within the block
#pragma unroll
          for (int h = 0; h < 2; ++h) {                          // 16-column MMA tile
            uint32_t oa[4], ob[4];
            const uint32_t* wa = reinterpret_cast<const uint32_t*>(&w[2 * h]);
            const uint32_t* wb = reinterpret_cast<const uint32_t*>(&w[2 * h + 1]);
            const uint32_t za = ((s[2 * h][gi] >> 16) & 0xFF | OFF) * 0x10001u;
            const uint32_t zb = ((s[2 * h + 1][gi] >> 16) & 0xFF | OFF) * 0x10001u;
            unpack<BF16>(wa[c], za, oa);
            unpack<BF16>(wb[c], zb, ob);
            mma<BF16>(part[h], oa[0], ob[0], oa[1], ob[1], xv[4 * c], xv[4 * c + 1]);
            mma<BF16>(part[h], oa[2], ob[2], oa[3], ob[3], xv[4 * c + 2], xv[4 * c + 3]);
          }
          if (GS == 32 || (GS == 64 && c % 2 == 1) || c == 3) {  // the group ends: fold
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              const float sa = half_bits_to_float(s[2 * h][gi]);
              const float sb = half_bits_to_float(s[2 * h + 1][gi]);
              acc[h][0] += sa * part[h][0];
              acc[h][1] += sa * part[h][1];
              acc[h][2] += sb * part[h][2];
              acc[h][3] += sb * part[h][3];
#pragma unroll
              for (int e = 0; e < 4; ++e) part[h][e] = 0.f;
            }
          }
        }
        if (i + U < nb) load(u);          // after the unpacking: no copies of the ring
      }
    }
  }

  // NORM: rstd of rows 2t and 2t + 1 (warp 0, which writes the result; its L2 reads of ss
  // overlap the other warps' last blocks)
  float rs[2] = {1.f, 1.f};
  if (NORM && warp == 0) {
    for (int m = 0; m < M; ++m) {
      float v = 0.f;
#pragma unroll 4
      for (int i = lane; i < nrm.ss_n; i += 32) v += __ldg(nrm.ss + (size_t)m * nrm.ss_n + i);
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      const float r = rsqrtf(v / (float)KX + nrm.eps);
      if (m == 2 * t) rs[0] = r;
      if (m == 2 * t + 1) rs[1] = r;
    }
  }

  // EPI_RES: warp 0 asks for its residual and weight values now, all before any store (the
  // epilogue's stores could alias them), so their L2 latency overlaps the reduction below
  float rv[2][4], gv[2][4];
  if (EPI == EPI_RES && warp == 0) {
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int m = 2 * t + (e & 1), q = 2 * h + (e >> 1);
        const bool in = m < M && ok[q];
        rv[h][e] = in ? act_to_float(nrm.res[(size_t)m * nrm.sr + col[q]], BF16) : 0.f;
        gv[h][e] = in ? act_to_float(nrm.gamma[col[q]], BF16) : 0.f;
      }
  }

  // sum the WK warps' tiles in warp order
  float* red = reinterpret_cast<float*>(smem + (XS ? M * nblk * 64 : 0));
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int e = 0; e < 4; ++e) red[((warp * 2 + h) * 32 + lane) * 4 + e] = acc[h][e];
  __syncthreads();
  if (warp != 0) return;
  float tot[2][4];
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float v = 0.f;
      for (int w = 0; w < WK; ++w) v += red[((w * 2 + h) * 32 + lane) * 4 + e];
      tot[h][e] = v;
    }
  // C element (h, e): column n0 + 16h + g + 8 (e >> 1), row m = 2t + (e & 1)
  if (split > 1) {
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int m = 2 * t + (e & 1), q = 2 * h + (e >> 1);
        if (m < M && ok[q]) ws[((size_t)blockIdx.y * M + m) * N + col[q]] = tot[h][e];
      }
    __threadfence();
    __syncwarp();
    int last = 0;
    if (lane == 0) last = atomicAdd(locks + tile, 1) == split - 1;
    last = __shfl_sync(0xffffffffu, last, 0);
    if (!last) return;
    __threadfence();
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int m = 2 * t + (e & 1), q = 2 * h + (e >> 1);
        float v = 0.f;
        if (m < M && ok[q])
          for (int sp = 0; sp < split; ++sp)
            v += __ldcg(ws + ((size_t)sp * M + m) * N + col[q]);
        tot[h][e] = v;
      }
    if (lane == 0) locks[tile] = 0;
  }
  if (EPI == EPI_GU || EPI == EPI_ROPE) {  // (h = 0, e) and (1, e): gate and up of one
#pragma unroll                           // feature (GU), or columns j, D/2 + j of one head
    for (int e = 0; e < 4; ++e) {
      const int m = 2 * t + (e & 1), q = e >> 1;
      if (m < M && ok[q]) {
        float a = tot[0][e] * rs[e & 1], b = tot[1][e] * rs[e & 1];
        if (bias) {
          a += act_to_float(bias[col[q]], BF16);
          b += act_to_float(bias[col[q + 2]], BF16);
        }
        if (EPI == EPI_GU) {
          y[(size_t)m * stride_ym + col[q]] = float_to_act(a / (1.f + __expf(-a)) * b, BF16);
          continue;
        }
        const int head = col[q] / rope.d, j = col[q] - head * rope.d;
        const long long p = rope.pos[m];
        if (head < rope.hq + rope.hk) {
          float sn, cs;
          sincosf((float)p * rope.freqs[j], &sn, &cs);
          const float r1 = a * cs - b * sn, r2 = b * cs + a * sn;
          a = r1;
          b = r2;
        }
        uint16_t* dst;
        if (head < rope.hq) {
          dst = rope.q + (size_t)m * rope.sq + head * rope.d + j;
        } else {
          if (p < 0 || p >= rope.S) continue;
          const bool is_k = head < rope.hq + rope.hk;
          const int kvh = head - rope.hq - (is_k ? 0 : rope.hk);
          dst = (is_k ? rope.kc : rope.vc) + m * rope.scb + p * rope.scs + kvh * rope.sch + j;
        }
        dst[0] = float_to_act(a, BF16);
        dst[rope.d / 2] = float_to_act(b, BF16);
      }
    }
  } else {
    float sq[2] = {0.f, 0.f};       // EPI_RES: this lane's s^2 of rows 2t, 2t + 1
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int m = 2 * t + (e & 1), q = 2 * h + (e >> 1);
        if (m < M && ok[q]) {
          float v = tot[h][e] * rs[e & 1];
          if (bias) v += act_to_float(bias[col[q]], BF16);
          if (EPI == EPI_RES) {
            const float yv = act_to_float(float_to_act(v, BF16), BF16);
            const uint16_t sb = float_to_act(yv + rv[h][e], BF16);
            const float sv = act_to_float(sb, BF16);
            nrm.hs[(size_t)m * nrm.shs + col[q]] = sb;
            nrm.g[(size_t)m * nrm.sg + col[q]] = float_to_act(sv * gv[h][e], BF16);
            sq[e & 1] += sv * sv;
          } else {
            y[(size_t)m * stride_ym + col[q]] = float_to_act(v, BF16);
          }
        }
      }
    if (EPI == EPI_RES) {           // the tile's sums over its 32 columns: lanes g = 0..7
#pragma unroll
      for (int r = 0; r < 2; ++r) {
#pragma unroll
        for (int o = 4; o < 32; o <<= 1) sq[r] += __shfl_xor_sync(0xffffffffu, sq[r], o);
        const int m = 2 * t + r;
        if (g == 0 && m < M) nrm.ss[(size_t)m * nrm.ss_n + tile] = sq[r];
      }
    }
  }
}

template <bool BF16, int GS, int WK, int U, bool XS, int EPI>
__global__ void __launch_bounds__(WK * 32)
w4a16_mma_kernel(const uint16_t* __restrict__ x, const uint4* __restrict__ qw,
                 const uint32_t* __restrict__ sz, const uint16_t* __restrict__ bias,
                 uint16_t* __restrict__ y, float* __restrict__ ws, int* __restrict__ locks,
                 int M, int N, int KX, int KP, int GSR, int split, int stride_xm,
                 int stride_ym, int pdl, int vec_x) {
  w4a16_mma_body<BF16, GS, WK, U, XS, EPI>(x, qw, sz, bias, y, ws, locks, M, N, KX, KP, GSR,
                                           split, stride_xm, stride_ym, pdl, vec_x,
                                           QkvRope{});
}

template <bool BF16, int GS, int WK, int U, bool XS>
__global__ void __launch_bounds__(WK * 32)
w4a16_rope_kernel(const uint16_t* __restrict__ x, const uint4* __restrict__ qw,
                  const uint32_t* __restrict__ sz, const uint16_t* __restrict__ bias,
                  float* __restrict__ ws, int* __restrict__ locks, int M, int N, int KX,
                  int KP, int GSR, int split, int stride_xm, int pdl, int vec_x,
                  const QkvRope rope) {
  w4a16_mma_body<BF16, GS, WK, U, XS, EPI_ROPE>(x, qw, sz, bias, nullptr, ws, locks, M, N,
                                                KX, KP, GSR, split, stride_xm, 0, pdl, vec_x,
                                                rope);
}

template <bool BF16, int GS, int WK, int U, bool XS, int EPI, bool NORM>
__global__ void __launch_bounds__(WK * 32)
w4a16_norm_kernel(const uint16_t* __restrict__ x, const uint4* __restrict__ qw,
                  const uint32_t* __restrict__ sz, const uint16_t* __restrict__ bias,
                  uint16_t* __restrict__ y, float* __restrict__ ws, int* __restrict__ locks,
                  int M, int N, int KX, int KP, int GSR, int split, int stride_xm,
                  int stride_ym, int pdl, int vec_x, const NormIO nrm) {
  w4a16_mma_body<BF16, GS, WK, U, XS, EPI, NORM>(x, qw, sz, bias, y, ws, locks, M, N, KX, KP,
                                                 GSR, split, stride_xm, stride_ym, pdl, vec_x,
                                                 QkvRope{}, nrm);
}

// cudaLaunchKernelEx with the PDL attribute where pdl is set, the dynamic shared memory
// limit raised first where smem needs it (once per kernel).
template <typename Kern, typename... Args>
cudaError_t launch_ex(Kern kern, size_t& smem_set, int tiles, int split, int threads,
                      size_t smem, cudaStream_t stream, int pdl, Args... args) {
  if (smem > smem_set) {
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)smem);
    if (e != cudaSuccess) return e;
    smem_set = smem;
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(tiles, split, 1);
  cfg.blockDim = dim3(threads, 1, 1);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = pdl ? 1 : 0;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cudaLaunchKernelEx(&cfg, kern, args...);
}

template <bool BF16, int GS, int WK, int U, bool XS, int EPI>
cudaError_t launch(const void* x, const void* qw, const void* sz, const void* bias, void* y,
                   void* ws, void* locks, int M, int N, int KX, int KP, int GSR, int split,
                   int stride_xm, int stride_ym, size_t smem, cudaStream_t stream, int pdl,
                   int vec_x, const QkvRope* rope) {
  if constexpr (EPI == EPI_ROPE) {
    if (rope == nullptr) return cudaErrorInvalidValue;
    static size_t smem_rope = 48 * 1024;
    return launch_ex(w4a16_rope_kernel<BF16, GS, WK, U, XS>, smem_rope, (N + 31) / 32, split,
                     WK * 32, smem, stream, pdl, (const uint16_t*)x, (const uint4*)qw,
                     (const uint32_t*)sz, (const uint16_t*)bias, (float*)ws, (int*)locks, M,
                     N, KX, KP, GSR, split, stride_xm, pdl, vec_x, *rope);
  } else {
    static size_t smem_set = 48 * 1024;
    return launch_ex(w4a16_mma_kernel<BF16, GS, WK, U, XS, EPI>, smem_set, (N + 31) / 32,
                     split, WK * 32, smem, stream, pdl, (const uint16_t*)x, (const uint4*)qw,
                     (const uint32_t*)sz, (const uint16_t*)bias, (uint16_t*)y, (float*)ws,
                     (int*)locks, M, N, KX, KP, GSR, split, stride_xm, stride_ym, pdl,
                     vec_x);
  }
}

template <bool BF16, int GS, int WK, int U, bool XS, int EPI, bool NORM>
cudaError_t launch_norm(const void* x, const void* qw, const void* sz, const void* bias,
                        void* y, void* ws, void* locks, int M, int N, int KX, int KP, int GSR,
                        int split, int stride_xm, int stride_ym, size_t smem,
                        cudaStream_t stream, int pdl, int vec_x, const NormIO& nrm) {
  static size_t smem_set = 48 * 1024;
  return launch_ex(w4a16_norm_kernel<BF16, GS, WK, U, XS, EPI, NORM>, smem_set, (N + 31) / 32,
                   split, WK * 32, smem, stream, pdl, (const uint16_t*)x, (const uint4*)qw,
                   (const uint32_t*)sz, (const uint16_t*)bias, (uint16_t*)y, (float*)ws,
                   (int*)locks, M, N, KX, KP, GSR, split, stride_xm, stride_ym, pdl, vec_x,
                   nrm);
}

template <bool BF16, int GS>
cudaError_t by_shape(int wk, int u, int xs, int epi, int norm, const void* x, const void* qw,
                     const void* sz, const void* bias, void* y, void* ws, void* locks, int M,
                     int N, int KX, int KP, int GSR, int split, int sxm, int sym, size_t smem,
                     cudaStream_t st, int pdl, int vec_x, const QkvRope* rope,
                     const NormIO* nrm) {
  // the residual-add + RMSNorm pair (NormIO): bf16 only, 2 blocks in flight, the configs
  // pick_config makes (producers o/down: 8 or 16 warps; consumers qkv: 8 or 16, gate-up:
  // 2, 4, 8 or 16 warps; x staged or not)
  if (epi == EPI_RES || norm) {
    if constexpr (BF16) {
      if (nrm == nullptr || u != 2) return cudaErrorInvalidValue;
#define W4_NORM(W, XS, EPI, NORM)                                                            \
  if (wk == W && (bool)xs == XS && epi == EPI && (bool)norm == NORM)                         \
    return launch_norm<BF16, GS, W, 2, XS, EPI, NORM>(x, qw, sz, bias, y, ws, locks, M, N,   \
                                                      KX, KP, GSR, split, sxm, sym, smem,    \
                                                      st, pdl, vec_x, *nrm);
      W4_NORM(16, true, 3, false) W4_NORM(16, false, 3, false)
      W4_NORM(8, true, 3, false) W4_NORM(8, false, 3, false)
      W4_NORM(16, true, 0, true) W4_NORM(16, false, 0, true)
      W4_NORM(8, true, 0, true) W4_NORM(8, false, 0, true)
      W4_NORM(2, false, 1, true) W4_NORM(4, false, 1, true)
      W4_NORM(8, false, 1, true) W4_NORM(16, true, 1, true) W4_NORM(16, false, 1, true)
#undef W4_NORM
    }
    return cudaErrorInvalidValue;
  }
#define W4_CASE(W, UU, XS, EPI)                                                              \
  if (wk == W && u == UU && (bool)xs == XS && epi == EPI)                                    \
    return launch<BF16, GS, W, UU, XS, EPI>(x, qw, sz, bias, y, ws, locks, M, N, KX, KP,     \
                                            GSR, split, sxm, sym, smem, st, pdl, vec_x, rope);
  W4_CASE(4, 2, true, 0) W4_CASE(4, 4, true, 0) W4_CASE(8, 2, true, 0) W4_CASE(8, 4, true, 0)
  W4_CASE(4, 2, false, 0) W4_CASE(4, 4, false, 0) W4_CASE(8, 2, false, 0)
  W4_CASE(8, 4, false, 0) W4_CASE(16, 2, true, 0) W4_CASE(16, 2, false, 0)
  W4_CASE(2, 2, true, 0) W4_CASE(2, 2, false, 0)
  // the gate-up SiLU-mul and the qkv RoPE: 2 blocks in flight only (every pick has 2)
  W4_CASE(4, 2, true, 1) W4_CASE(4, 2, false, 1) W4_CASE(8, 2, true, 1)
  W4_CASE(8, 2, false, 1) W4_CASE(16, 2, true, 1) W4_CASE(16, 2, false, 1)
  W4_CASE(2, 2, true, 1) W4_CASE(2, 2, false, 1)
  W4_CASE(4, 2, true, 2) W4_CASE(4, 2, false, 2) W4_CASE(8, 2, true, 2)
  W4_CASE(8, 2, false, 2) W4_CASE(16, 2, true, 2) W4_CASE(16, 2, false, 2)
#undef W4_CASE
  return cudaErrorInvalidValue;
}

}  // namespace

// by_shape of each (dtype, group kind) pair, each defined in its own part of the build
#ifndef CUDA_BUILD_PART
#define CUDA_BUILD_PART -1
#endif
#define W4_PART_OF(B, G) (((B) ? 0 : 4) + ((G) == 32 ? 0 : (G) == 64 ? 1 : (G) == 128 ? 2 : 3))
#define W4_ARGS                                                                              \
  int wk, int u, int xs, int epi, int norm, const void *x, const void *qw, const void *sz,   \
      const void *bias, void *y, void *ws, void *locks, int M, int N, int KX, int KP, int GSR, \
      int split, int sxm, int sym, size_t smem, cudaStream_t st, int pdl, int vec_x,         \
      const w4a16_mma::QkvRope *rope, const w4a16_mma::NormIO *nrm
namespace w4a16_mma {
template <bool BF16, int GS>
cudaError_t part(W4_ARGS);
template <> cudaError_t part<true, 32>(W4_ARGS);
template <> cudaError_t part<true, 64>(W4_ARGS);
template <> cudaError_t part<true, 128>(W4_ARGS);
template <> cudaError_t part<true, 0>(W4_ARGS);
template <> cudaError_t part<false, 32>(W4_ARGS);
template <> cudaError_t part<false, 64>(W4_ARGS);
template <> cudaError_t part<false, 128>(W4_ARGS);
template <> cudaError_t part<false, 0>(W4_ARGS);
}  // namespace w4a16_mma
#define W4_PART(B, G)                                                                        \
  namespace w4a16_mma {                                                                      \
  template <>                                                                                \
  cudaError_t part<B, G>(W4_ARGS) {                                                          \
    return by_shape<B, G>(wk, u, xs, epi, norm, x, qw, sz, bias, y, ws, locks, M, N, KX, KP, \
                          GSR, split, sxm, sym, smem, st, pdl, vec_x, rope, nrm);            \
  }                                                                                          \
  }
#if CUDA_BUILD_PART < 0 || CUDA_BUILD_PART == W4_PART_OF(true, 32)
W4_PART(true, 32)
#endif
#if CUDA_BUILD_PART < 0 || CUDA_BUILD_PART == W4_PART_OF(true, 64)
W4_PART(true, 64)
#endif
#if CUDA_BUILD_PART < 0 || CUDA_BUILD_PART == W4_PART_OF(true, 128)
W4_PART(true, 128)
#endif
#if CUDA_BUILD_PART < 0 || CUDA_BUILD_PART == W4_PART_OF(true, 0)
W4_PART(true, 0)
#endif
#if CUDA_BUILD_PART < 0 || CUDA_BUILD_PART == W4_PART_OF(false, 32)
W4_PART(false, 32)
#endif
#if CUDA_BUILD_PART < 0 || CUDA_BUILD_PART == W4_PART_OF(false, 64)
W4_PART(false, 64)
#endif
#if CUDA_BUILD_PART < 0 || CUDA_BUILD_PART == W4_PART_OF(false, 128)
W4_PART(false, 128)
#endif
#if CUDA_BUILD_PART < 0 || CUDA_BUILD_PART == W4_PART_OF(false, 0)
W4_PART(false, 0)
#endif
#undef W4_PART
#undef W4_ARGS

#if CUDA_BUILD_PART <= 0

// gs: the layout's rows per group (32, 64 or a multiple of 128); wk: warps per CTA (2, 4, 8,
// or 16; 2 and 16 with u = 2); u: blocks in flight per warp (2, 4); xs: x staged in shared
// memory (else each lane loads its B operands from global memory, block by block); epi: 0
// plain, 1 W is a fused gate-up projection (N = 2F, u = 2) and y [M, F] its SiLU-mul, 2 the
// qkv projection's RoPE and cache write (u = 2, wk 4-16; y unused, the rope_* arguments as
// QkvRope's fields, the caches' strides in elements), 3 the producer of a residual add +
// RMSNorm (y unused; bf16); norm: the consumer of one (epi 0 or 1; bf16); the n_* arguments:
// NormIO's fields (strides in elements; ss_n: the producer's 32-column tiles); vec_x: x
// 16-byte aligned with a row stride of a multiple of 8 (16-byte loads of x). Returns a
// cudaError_t (0: launched).
extern "C" int w4a16_mma_launch(int bf16, int gs, int wk, int u, int xs, int epi, int norm,
                                const void* x, const void* qw, const void* sz,
                                const void* bias, void* y, void* ws, void* locks, int M,
                                int N, int KX, int KP, int split, int stride_xm,
                                int stride_ym, size_t smem, void* stream, int pdl,
                                int vec_x, const void* rope_pos, const void* rope_freqs,
                                void* rope_q, void* rope_kc, void* rope_vc,
                                long long rope_scb, long long rope_scs, long long rope_sch,
                                int rope_sq, int rope_s, int rope_hq, int rope_hk,
                                int rope_d, const void* n_res, const void* n_gamma,
                                void* n_hs, void* n_g, void* n_ss, int n_sr, int n_shs,
                                int n_sg, int n_ss_n, float n_eps) {
  cudaStream_t st = (cudaStream_t)stream;
  const QkvRope rope{(const long long*)rope_pos, (const float*)rope_freqs, (uint16_t*)rope_q,
                     (uint16_t*)rope_kc, (uint16_t*)rope_vc, rope_scb, rope_scs, rope_sch,
                     rope_sq, rope_s, rope_hq, rope_hk, rope_d};
  if (epi == EPI_ROPE && (rope_d <= 0 || rope_d % 32 || (rope_hq + 2 * rope_hk) * rope_d != N))
    return (int)cudaErrorInvalidValue;
  const NormIO nrm{(const uint16_t*)n_res, (const uint16_t*)n_gamma, (uint16_t*)n_hs,
                   (uint16_t*)n_g, (float*)n_ss, n_sr, n_shs, n_sg, n_ss_n, n_eps};
  if ((epi == EPI_RES || norm) && (n_ss == nullptr || n_ss_n <= 0 ||
                                   (epi == EPI_RES && (n_res == nullptr || n_gamma == nullptr ||
                                                       n_hs == nullptr || n_g == nullptr ||
                                                       n_ss_n != (N + 31) / 32))))
    return (int)cudaErrorInvalidValue;
  const int kind = gs == 32 ? 32 : gs == 64 ? 64 : gs == 128 ? 128 : 0;
#define W4_GS(B, G)                                                                         \
  if ((bool)bf16 == B && kind == G)                                                         \
    return (int)w4a16_mma::part<B, G>(wk, u, xs, epi, norm, x, qw, sz, bias, y, ws, locks, \
                                      M, N, KX, KP, gs, split, stride_xm, stride_ym, smem,  \
                                      st, pdl, vec_x, epi == EPI_ROPE ? &rope : nullptr,    \
                                      &nrm);
  W4_GS(true, 32) W4_GS(true, 64) W4_GS(true, 128) W4_GS(true, 0)
  W4_GS(false, 32) W4_GS(false, 64) W4_GS(false, 128) W4_GS(false, 0)
#undef W4_GS
  return (int)cudaErrorInvalidValue;
}

extern "C" const char* w4a16_mma_error_string(int err) {
  return cudaGetErrorString((cudaError_t)err);
}
#endif  // CUDA_BUILD_PART <= 0
