// Attention in one kernel, flash style: the scores are never written out.
// One block per (query row, head); each warp walks every `warps`-th visible
// key. src/llm/flash/mod.rs holds the same algorithm for the CPU (`run`),
// step for step, and its tests.
//
// f32 cache: one pass, each warp keeping a running maximum, sum and weighted
// sum of values (online softmax); the warps' partial results are merged.
// f16 cache (`round16`): llama.cpp multiplies it f16 by f16, so the queries are
// rounded to f16 and so is each normalised attention weight before it
// scales its value row; a weight needs the row's maximum and sum first, so
// a first pass over the keys finds them (the keys are read twice, the
// values once, the scores still never stored).
//
// q:   [heads, t, hd] f32, rotated (row i is cache position start + i)
// k,v: [kv_heads, cap, hd] f32 or f16 (the KV cache, positions 0..start+t filled)
// out: [heads, t, hd] f32
// A query at position p sees keys j <= p, and j > p - window when window > 0.

#include <cuda_fp16.h>
#include <math_constants.h>

#define WARP 32
#define MAX_HD 256
#define PER_LANE (MAX_HD / WARP)
#define MAX_WARPS 8

__device__ __forceinline__ float widen(float x) { return x; }
__device__ __forceinline__ float widen(__half x) { return __half2float(x); }

template <typename T>
__device__ void flash_attend(const float *__restrict__ q, const T *__restrict__ k,
                             const T *__restrict__ v, float *__restrict__ out, int t,
                             int hd, int cap, int groups, int start, int window,
                             float scale, int round16) {
  const int i = blockIdx.x;
  const int h = blockIdx.y;
  const int kvh = h / groups;
  const int lane = threadIdx.x % WARP;
  const int w = threadIdx.x / WARP;
  const int warps = blockDim.x / WARP;
  const int qp = start + i;
  const int lo = window > 0 ? max(0, qp - window + 1) : 0;

  __shared__ float qs[MAX_HD];
  __shared__ float ms[MAX_WARPS];
  __shared__ float ls[MAX_WARPS];
  __shared__ float accs[MAX_WARPS][MAX_HD];

  const float *qrow = q + ((size_t)h * t + i) * hd;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float x = qrow[d];
    // an f16 cache multiplies f16 queries, as llama.cpp does
    qs[d] = round16 ? __half2float(__float2half_rn(x)) : x;
  }
  __syncthreads();

  const size_t base = (size_t)kvh * cap;
  // this lane's share of the dot product of the query and key j, summed over the warp
  auto score = [&](int j) {
    const T *kr = k + (base + j) * hd;
    float s = 0.f;
#pragma unroll
    for (int c = 0; c < PER_LANE; ++c) {
      const int d = lane + c * WARP;
      if (d < hd) s += qs[d] * widen(kr[d]);
    }
#pragma unroll
    for (int o = WARP / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    return s * scale;
  };

  float m = -CUDART_INF_F;
  float l = 0.f;
  float acc[PER_LANE];
#pragma unroll
  for (int c = 0; c < PER_LANE; ++c) acc[c] = 0.f;

  for (int j = lo + w; j <= qp; j += warps) {
    const float s = score(j);
    const float mn = fmaxf(m, s);
    const float corr = expf(m - mn);  // 0 on the first key (m = -inf)
    const float p = expf(s - mn);
    l = l * corr + p;
    if (!round16) {
      const T *vr = v + (base + j) * hd;
#pragma unroll
      for (int c = 0; c < PER_LANE; ++c) {
        const int d = lane + c * WARP;
        if (d < hd) acc[c] = acc[c] * corr + p * widen(vr[d]);
      }
    }
    m = mn;
  }
  if (lane == 0) {
    ms[w] = m;
    ls[w] = l;
  }
  __syncthreads();

  // the row's maximum and sum: a warp that saw no key (m = -inf) adds nothing
  float top = -CUDART_INF_F;
  for (int x = 0; x < warps; ++x) top = fmaxf(top, ms[x]);
  float sum = 0.f;
  for (int x = 0; x < warps; ++x)
    if (ms[x] != -CUDART_INF_F) sum += ls[x] * expf(ms[x] - top);

  if (round16) {
    // second pass: each weight normalised and rounded to f16, then summed
    for (int j = lo + w; j <= qp; j += warps) {
      const float p = __half2float(__float2half_rn(expf(score(j) - top) / sum));
      const T *vr = v + (base + j) * hd;
#pragma unroll
      for (int c = 0; c < PER_LANE; ++c) {
        const int d = lane + c * WARP;
        if (d < hd) acc[c] += p * widen(vr[d]);
      }
    }
  }
#pragma unroll
  for (int c = 0; c < PER_LANE; ++c) {
    const int d = lane + c * WARP;
    if (d < hd) accs[w][d] = acc[c];
  }
  __syncthreads();

  float *orow = out + ((size_t)h * t + i) * hd;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float o = 0.f;
    for (int x = 0; x < warps; ++x) {
      if (round16)
        o += accs[x][d];
      else if (ms[x] != -CUDART_INF_F)
        o += accs[x][d] * expf(ms[x] - top);
    }
    orow[d] = round16 ? o : o / sum;
  }
}

extern "C" __global__ void flash_attend_f32(const float *q, const float *k, const float *v,
                                            float *out, int t, int hd, int cap, int groups,
                                            int start, int window, float scale,
                                            int round16) {
  flash_attend<float>(q, k, v, out, t, hd, cap, groups, start, window, scale, round16);
}

extern "C" __global__ void flash_attend_f16(const float *q, const __half *k, const __half *v,
                                            float *out, int t, int hd, int cap, int groups,
                                            int start, int window, float scale,
                                            int round16) {
  flash_attend<__half>(q, k, v, out, t, hd, cap, groups, start, window, scale, round16);
}
