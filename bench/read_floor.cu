// Read-only kernels for bench/read_floor.py: how fast the bytes of one W4A16 projection can
// be read at all, so that the decode kernel (kernels/w4a16/mma_decode.cu) is judged against
// what its loads could give rather than against the large-copy bandwidth. No arithmetic on
// the data but an XOR that keeps the loads alive; y is written as zeros.
//
// pattern_kernel: the decode kernel's own load schedule, without the MMAs, the unpacking,
//   the x staging or the split-K sum: CTA = 32 output columns x WK warps, split s of the
//   grid's y axis takes K blocks [s * per, (s + 1) * per), warp w of it blocks w, w + WK, ...;
//   per block a lane reads its four 16-byte weight words (columns n0 + 16 (q >> 1) + g +
//   8 (q & 1), word t) and their SZN scale words, U blocks ahead, the first U before the PDL
//   wait. `smem` bytes of (unused) dynamic shared memory cap the CTAs per SM, so the
//   schedule can also run at the decode kernel's occupancy (its registers allow fewer CTAs
//   per SM than this kernel's).
// linear_kernel: the same number of bytes as one flat array, grid-stride, U independent
//   16-byte loads per thread per round: the read floor of that many bytes, whatever the order.

#include <cuda_runtime.h>
#include <stdint.h>

#include "../kernels/cuda_common.cuh"  // load_stream

namespace {

constexpr uint32_t MAGIC = 0x9E3779B9u;  // the XOR of the data is (almost) never this

__device__ __forceinline__ void pdl_wait(int pdl) {
#if __CUDA_ARCH__ >= 900
  if (pdl) {
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;");
  }
#endif
}

__device__ __forceinline__ uint32_t fold(uint4 v) { return v.x ^ v.y ^ v.z ^ v.w; }

// check: XOR the warp's data into *sink (one atomic per warp: slow, for the correctness
// run only); else count the (never seen) case acc == MAGIC, which keeps the loads alive.
__device__ __forceinline__ void finish(uint32_t acc, uint32_t* sink, int check) {
  if (check) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc ^= __shfl_xor_sync(0xffffffffu, acc, o);
    if ((threadIdx.x & 31) == 0) atomicXor(sink, acc);
  } else if (acc == MAGIC) {
    atomicAdd(sink, 1u);
  }
}

template <int WK, int U, int SZN>
__global__ void __launch_bounds__(WK * 32)
pattern_kernel(const uint4* __restrict__ qw, const uint32_t* __restrict__ sz,
               uint16_t* __restrict__ y, uint32_t* __restrict__ sink, int M, int N, int KP,
               int split, int stride_ym, int pdl, int check) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int n0 = blockIdx.x * 32;
  const int blocks = KP / 128;
  const int per = (blocks + split - 1) / split;
  const int b_lo = blockIdx.y * per;
  const int nblk = max(min(b_lo + per, blocks) - b_lo, 0);
  const int nb = nblk > warp ? (nblk - warp + WK - 1) / WK : 0;  // this warp's blocks
  int col[4];
#pragma unroll
  for (int q = 0; q < 4; ++q) col[q] = min(n0 + 16 * (q >> 1) + g + 8 * (q & 1), N - 1);
  uint4 wr[U][4];
  uint32_t sr[U][4][SZN];
  auto load = [&](int u, int i) {
    const int b = b_lo + warp + WK * i;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      wr[u][q] = load_stream(qw + ((size_t)b * N + col[q]) * 4 + t);
#pragma unroll
      for (int j = 0; j < SZN; ++j) sr[u][q][j] = __ldg(sz + (size_t)(b * SZN + j) * N + col[q]);
    }
  };
#pragma unroll
  for (int u = 0; u < U; ++u)
    if (u < nb) load(u, u);
  pdl_wait(pdl);
  uint32_t acc = 0;
  for (int i0 = 0; i0 < nb; i0 += U) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int i = i0 + u;
      if (i < nb) {
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          acc ^= fold(wr[u][q]);
#pragma unroll
          for (int j = 0; j < SZN; ++j) acc ^= sr[u][q][j];
        }
        if (i + U < nb) load(u, i + U);
      }
    }
  }
  finish(acc, sink, check);
  if (blockIdx.y == 0 && warp == 0 && n0 + lane < N)
    for (int m = 0; m < M; ++m) y[(size_t)m * stride_ym + n0 + lane] = 0;
}

template <int U>
__global__ void __launch_bounds__(256)
linear_kernel(const uint4* __restrict__ p, size_t n16, uint32_t* __restrict__ sink, int pdl,
              int check) {
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  uint32_t acc = 0;
  bool first = true;
  for (; i < n16; i += stride * U) {
    uint4 r[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const size_t idx = i + u * stride;
      r[u] = idx < n16 ? load_stream(p + idx) : make_uint4(0, 0, 0, 0);
    }
    if (first) pdl_wait(pdl);
    first = false;
#pragma unroll
    for (int u = 0; u < U; ++u) acc ^= fold(r[u]);
  }
  if (first) pdl_wait(pdl);
  finish(acc, sink, check);
}

cudaError_t launch(const void* fn, dim3 grid, dim3 block, void** args, cudaStream_t st,
                   int pdl, size_t smem = 0) {
  if (smem > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)smem);
    if (e != cudaSuccess) return e;
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = st;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  return cudaLaunchKernelExC(&cfg, fn, args);
}

template <int WK, int U, int SZN>
cudaError_t pattern(const void* qw, const void* sz, void* y, void* sink, int M, int N, int KP,
                    int split, int stride_ym, size_t smem, cudaStream_t st, int pdl,
                    int check) {
  void* args[] = {&qw, &sz, &y, &sink, &M, &N, &KP, &split, &stride_ym, &pdl, &check};
  return launch((const void*)pattern_kernel<WK, U, SZN>, dim3((N + 31) / 32, split),
                dim3(WK * 32), args, st, pdl, smem);
}

}  // namespace

// szn: scale words per column and K block (4, 2, 1: groups of 32, 64, >= 128); wk: 4, 8
// or 16 warps; u: 2 or 4 blocks in flight per warp (16 warps: 2); smem: dynamic shared
// memory per CTA (0, or enough to cap the CTAs per SM); check: XOR all words read into
// *sink. Returns a cudaError_t (0: launched).
extern "C" int read_pattern_launch(int wk, int u, int szn, const void* qw, const void* sz,
                                   void* y, void* sink, int M, int N, int KP, int split,
                                   int stride_ym, size_t smem, void* stream, int pdl,
                                   int check) {
  cudaStream_t st = (cudaStream_t)stream;
#define RP(W, UU, S)                                                                       \
  if (wk == W && u == UU && szn == S)                                                      \
    return (int)pattern<W, UU, S>(qw, sz, y, sink, M, N, KP, split, stride_ym, smem, st,  \
                                  pdl, check);
  RP(4, 2, 1) RP(4, 2, 2) RP(4, 2, 4) RP(4, 4, 1) RP(4, 4, 2) RP(4, 4, 4)
  RP(8, 2, 1) RP(8, 2, 2) RP(8, 2, 4) RP(8, 4, 1) RP(8, 4, 2) RP(8, 4, 4)
  RP(16, 2, 1) RP(16, 2, 2) RP(16, 2, 4)
#undef RP
  return (int)cudaErrorInvalidValue;
}

// u: 2, 4 or 8 loads in flight per thread; ctas: CTAs of 256 threads; check as above.
extern "C" int read_linear_launch(int u, int ctas, const void* p, size_t n16, void* sink,
                                  void* stream, int pdl, int check) {
  cudaStream_t st = (cudaStream_t)stream;
  void* args[] = {&p, &n16, &sink, &pdl, &check};
  const void* fn = u == 2 ? (const void*)linear_kernel<2>
                 : u == 4 ? (const void*)linear_kernel<4>
                 : u == 8 ? (const void*)linear_kernel<8> : nullptr;
  if (!fn || ctas < 1) return (int)cudaErrorInvalidValue;
  return (int)launch(fn, dim3(ctas), dim3(256), args, st, pdl);
}

extern "C" const char* read_floor_error_string(int err) {
  return cudaGetErrorString((cudaError_t)err);
}
