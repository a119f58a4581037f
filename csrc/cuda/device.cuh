// Device code of every CUDA op: the chunk kernel that runs an op over its tensors, and the finish
// kernels that fold the chunk partials. nvcc compiles this file; the host SIMT harness (csrc/emu/)
// includes it unchanged after defining the CUDA keywords, so nothing here may include ATen-CUDA.
//
// Metadata travels as a kernel argument (LaunchTable, up to ~32 KB, CUDA >= 12.1), never through a
// host buffer: a launch captured into a CUDA graph carries its own copy, and replays read the
// tensors of the capture. A call in which some tensor reads its anchor (L2-SP / EWC) carries each
// tensor's anchor record beside its metadata (Row); a call without one carries the metadata alone, so
// anchors cost it no room in the table. Each block owns one chunk and writes one partial; the finish kernels fold
// partials in the fixed order of csrc/math/fold.h. No floating-point atomics: results are bitwise
// reproducible.
#pragma once
#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "../math/elementwise.h"
#include "../math/fold.h"
#include "../math/weights.h"

// A kernel parameter read in place by every thread: on the GPU from the constant bank (no copy per
// thread even when indexed), in the harness by reference to the launch's one copy.
#ifndef L2FAST_GRID_CONST
#define L2FAST_GRID_CONST(T) __grid_constant__ const T
#endif
// The harness checks every packed access for alignment; the GPU faults on a misaligned one.
#ifndef L2FAST_CHECK_ALIGNED
#define L2FAST_CHECK_ALIGNED(ptr, bytes)
#endif

namespace l2fast::cuda {

constexpr int kThreads = kBlockLanes;  // threads per block (fold.h's block order assumes it)
constexpr int kWarps = kThreads / kWarpLanes;
constexpr int64_t kChunk = 1 << 14;  // elements per block: ~3,700 blocks for a 60M-parameter model,
                                     // several waves on any GPU (2^15 leaves an H100 under two)
constexpr int kUnroll = 4;           // 16-byte loads each thread keeps in flight
constexpr unsigned kFullMask = 0xffffffffu;

enum DType : int32_t { kF32, kF64, kF16, kBF16 };

// The anchored part of a tensor's record: x's anchor and its importances (fisher; null: F = 1), both in
// anchor_dtype, and the value's weight of the deviations. anchor is null when the op does not read it (no
// anchors given, or neither x's pull nor its value weighs it); then every coefficient here is zero.
struct AnchorMeta {
  const void* anchor;
  const void* fisher;
  double sp;              // Weights::sp
  int32_t anchor_dtype;   // x's dtype, or kBF16
};

// The anchor record of the ops over TensorMeta: decay's decoupled pull besides.
struct TensorAnchorMeta : AnchorMeta {
  double neg_spf;  // decay: x = x * multiplier + neg_spf * pull
};

// What an op knows of one tensor, anchors aside (its Anchor record, in the tables of an anchored call).
struct TensorMeta {
  using Anchor = TensorAnchorMeta;
  const void* x;    // the tensor read (params)
  void* y;          // the tensor written, when there is one (grads, outputs, x itself for decay)
  int64_t length;   // elements this op visits: numel, or 0 when the tensor takes no part
  double l2, l1;    // what the op computes from x: Weights less sp (the anchor record's; weights_of)
  double multiplier;  // decay: x = x * multiplier (+ the anchor record's neg_spf * pull)
  int32_t dtype;
  // Elements before the first element where x, y, the anchor streams (and a step's other tensors) all
  // start their packs; -1 when they reach one at different elements: every element scalar.
  int32_t pack_head;
};

// One tensor's record in a launch table: its Meta (TensorMeta, or a type derived from it for an op that
// needs more per tensor) alone when no tensor of the call reads its anchor (kWithAnchor false), else its
// Meta and its Meta::Anchor record. Device code reads both through anchor_meta(), which in a plain row is
// all zeros (no anchor, no pull) and takes no room.
template <class MetaType, bool kWithAnchor>
struct Row {
  using Meta = MetaType;
  using Anchor = typename Meta::Anchor;
  static constexpr bool kAnchored = false;
  Meta meta;
  C10_HOST_DEVICE Anchor anchor_meta() const { return {}; }
};

template <class MetaType>
struct Row<MetaType, true> {
  using Meta = MetaType;
  using Anchor = typename Meta::Anchor;
  static constexpr bool kAnchored = true;
  Meta meta;
  Anchor anchor;
  C10_HOST_DEVICE const Anchor& anchor_meta() const { return anchor; }
};

// What the op computes from the tensor of row r.
template <class R>
C10_HOST_DEVICE inline Weights weights_of(const R& r) {
  return {r.meta.l2, r.meta.l1, r.anchor_meta().sp};
}

// CUDA's limit on the bytes of one kernel's parameters (CUDA >= 12.1), and what a launch table leaves
// of it to the op functor and the kernel's other parameters (run_tables asserts that they fit).
constexpr size_t kParameterBytes = 32764;
constexpr size_t kBesideTable = 256;

// Tensors per launch table of rows R: as many as the parameter bytes hold, each taking its row and its
// chunk_end entry, after the table's three counts. So a plain call's tables hold more tensors than an
// anchored call's, each as many as its own row size allows.
template <class R>
constexpr int kPerLaunch =
    static_cast<int>((kParameterBytes - kBesideTable - 3 * sizeof(int64_t)) / (sizeof(R) + sizeof(int64_t)));

// Up to kPerLaunch<R> consecutive tensors of one op call, with their chunk counts as a prefix
// sum: block b of the launch works on chunk b - chunk_end[t - 1] of the tensor t with
// chunk_end[t - 1] <= b < chunk_end[t]. R is a Row: plain, or with the anchor records.
template <class R>
struct LaunchTable {
  using RowType = R;
  int64_t first_tensor;   // index of rows[0] in the op's tensor list
  int64_t first_partial;  // index of this launch's first chunk among all chunks of the op call
  int64_t count;          // tensors in this launch
  int64_t chunk_end[kPerLaunch<R>];
  R rows[kPerLaunch<R>];
};
constexpr int kTensorsPerLaunch = kPerLaunch<Row<TensorMeta, false>>;
constexpr int kAnchoredTensorsPerLaunch = kPerLaunch<Row<TensorMeta, true>>;

// The chunk a block owns: tensor t of the table, elements [begin, begin + len).
struct ChunkSpan {
  int64_t tensor;
  int64_t begin;
  int len;
};

template <class R>
C10_HOST_DEVICE inline int64_t chunk_begin(const LaunchTable<R>& table, int64_t t) {
  return t == 0 ? 0 : table.chunk_end[t - 1];
}

template <class R>
C10_HOST_DEVICE inline ChunkSpan locate_chunk(const LaunchTable<R>& table, int64_t block) {
  int64_t lo = 0, hi = table.count - 1;  // the first t with block < chunk_end[t]
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (block < table.chunk_end[mid]) hi = mid;
    else lo = mid + 1;
  }
  const int64_t begin = (block - chunk_begin(table, lo)) * kChunk;
  const int64_t left = table.rows[lo].meta.length - begin;
  return {lo, begin, static_cast<int>(left < kChunk ? left : kChunk)};
}

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ Pack<T, N> load_pack(const void* base, int64_t i) {
  const auto* p = reinterpret_cast<const Pack<T, N>*>(static_cast<const T*>(base) + i);
  L2FAST_CHECK_ALIGNED(p, alignof(Pack<T, N>));
  return *p;
}

template <typename T, int N>
__device__ __forceinline__ void store_pack(void* base, int64_t i, const Pack<T, N>& pack) {
  auto* p = reinterpret_cast<Pack<T, N>*>(static_cast<T*>(base) + i);
  L2FAST_CHECK_ALIGNED(p, alignof(Pack<T, N>));
  *p = pack;
}

template <typename T>
__device__ __forceinline__ at::opmath_type<T> to_op(T v) {
  return static_cast<at::opmath_type<T>>(v);
}

// The anchor stream of a tensor, loaded beside the op's own packs (walk): NoAnchor for a tensor that
// reads no anchor (its walk is the plain one), or AnchorOf<A, kFisher>: the anchor in dtype A (the
// tensor's, or bfloat16) and, with kFisher, its importances. Packs<N> holds the stream at one pack of the
// op's N elements (N * sizeof(A) bytes per stream, aligned to that: pack_head accounts for it), and gives
// element j's pull (anchor_pull, with its share of the value: the CPU loop's math). kInFlight: the
// packs a thread loads before it uses any (walk).
struct NoAnchor {
  static constexpr int kInFlight = kUnroll;
  template <int N>
  struct Packs {
    static constexpr bool kAnchored = false;
    template <typename Op>
    __device__ AnchorPull<Op> pull(int, Op) const {
      return {};
    }
  };
  template <int N>
  __device__ static Packs<N> load(const AnchorMeta&, int64_t) {
    return {};
  }
};

template <typename A, bool kFisher>
struct AnchorOf {
  // Half the plain walk's: with the anchor's one or two more streams at kUnroll, the step kernels' packs
  // outgrow the registers (a stack frame, bench/kernel_resources.py). Halved, a thread still keeps about
  // the bytes of the op's plain walk in flight.
  static constexpr int kInFlight = kUnroll / 2;
  template <int N>
  struct Packs {
    static constexpr bool kAnchored = true;
    Pack<A, N> a, f;  // f: loaded and read only with kFisher
    template <typename Op>
    __device__ __forceinline__ AnchorPull<Op> pull(int j, Op w) const {
      return anchor_pull<kFisher>(w, static_cast<Op>(a.v[j]), kFisher ? static_cast<Op>(f.v[j]) : Op(1));
    }
  };
  template <int N>
  __device__ __forceinline__ static Packs<N> load(const AnchorMeta& m, int64_t i) {
    Packs<N> p{};
    p.a = load_pack<A, N>(m.anchor, i);
    if (kFisher) p.f = load_pack<A, N>(m.fisher, i);
    return p;
  }
};

// Sums of x^2, of |x| and of the anchored deviations f * (x - a)^2: one thread's running sums, and a
// chunk's partial (chunk_kernel writes one per block for the finish kernels).
struct Sums {
  double sq = 0.0;
  double abs = 0.0;
  double dev = 0.0;
  // x (in the op-math type), element j of a pack whose anchor stream holds `anchor`, as the weights ask.
  template <typename Op, class AnchorPacks>
  __device__ __forceinline__ void add(const Weights& w, Op x, const AnchorPacks& anchor, int j) {
    const double v = static_cast<double>(x);
    if (w.l2 != 0.0) sq += v * v;
    if (w.l1 != 0.0) abs += fabs(v);
    if (AnchorPacks::kAnchored && w.sp != 0.0) dev += anchor.pull(j, x).deviation();
  }
};

// This thread's share of len elements of the tensor of row r from element begin on, N elements per pack,
// the packs from gap_at on taken gap packs further along, with the tensor's anchor stream. All loads of
// Anchor::kInFlight packs are issued before any is used, so memory requests overlap even when the op
// writes.
template <typename T, int N, class Anchor, class Op, class R>
__device__ __forceinline__ void walk(const Op& op, const R& r, int64_t begin, int len, Sums& sums,
                                     int gap_at = 0, int gap = 0) {
  using Item = typename Op::template Item<T, N>;
  using AnchorPacks = typename Anchor::template Packs<N>;
  constexpr int kInFlight = Anchor::kInFlight;
  const int packs = len / N;
  for (int p0 = threadIdx.x; p0 < packs; p0 += kThreads * kInFlight) {
    Item items[kInFlight];
    AnchorPacks anchors[kInFlight];
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      const int p = p0 + u * kThreads;
      if (p < packs) {
        const int64_t i = begin + int64_t(p < gap_at ? p : p + gap) * N;
        items[u] = op.template load<T, N>(r.meta, i);
        anchors[u] = Anchor::template load<N>(r.anchor_meta(), i);
      }
    }
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      const int p = p0 + u * kThreads;
      if (p < packs)
        op.template apply<T, N>(r, begin + int64_t(p < gap_at ? p : p + gap) * N, items[u], anchors[u], sums);
    }
  }
}

template <typename T, class Anchor, class Op, class R>
__device__ __forceinline__ void run_chunk(const Op& op, const R& r, const ChunkSpan& c, Sums& sums) {
  constexpr int N = 16 / sizeof(T);
  // Chunk starts are multiples of kChunk (a multiple of N), so every chunk's packs start pack_head
  // elements in: a view misaligned alike in all its tensors peels that many elements, then moves in
  // packs. The elements before and after the packs go in one scalar walk (one more inlined copy of
  // the op would cost registers), so an aligned tensor (pack_head 0) walks exactly as before.
  const int pack_head = r.meta.pack_head;
  const int head = pack_head < 0 || pack_head > c.len ? c.len : pack_head;
  const int vector_len = (c.len - head) / N * N;
  walk<T, N, Anchor>(op, r, c.begin + head, vector_len, sums);
  walk<T, 1, Anchor>(op, r, c.begin, c.len - vector_len, sums, head, vector_len);
}

// run_chunk with the anchor stream of row r's tensor. A plain row (no tensor of the launch reads an
// anchor): NoAnchor alone, the plain kernel. Else by the anchor record: NoAnchor without an anchor, or
// the anchor in T or in bfloat16, with or without fisher.
template <typename T, class Op, class R>
__device__ __forceinline__ void run_chunk_anchored(const Op& op, const R& r, const ChunkSpan& c, Sums& sums) {
  if constexpr (R::kAnchored) {
    const AnchorMeta& a = r.anchor_meta();
    if (a.anchor != nullptr) {
      const auto with_fisher = [&](auto anchor_type) {
        using A = decltype(anchor_type);
        if (a.fisher != nullptr) run_chunk<T, AnchorOf<A, true>>(op, r, c, sums);
        else run_chunk<T, AnchorOf<A, false>>(op, r, c, sums);
      };
      if (!std::is_same_v<T, c10::BFloat16> && a.anchor_dtype == kBF16) with_fisher(c10::BFloat16());
      else with_fisher(T());
      return;
    }
  }
  run_chunk<T, NoAnchor>(op, r, c, sums);
}

// Sum over one warp in the tree of fold.h's warp_tree_steps; the result is valid in lane 0.
__device__ __forceinline__ double warp_sum(double v) {
  warp_tree_steps([&](int offset) { v += __shfl_down_sync(kFullMask, v, offset); });
  return v;
}

// Sum over the block in the order of fold.h's fold_block_order; the result is valid in thread 0.
__device__ __forceinline__ double block_sum(double v, double* scratch) {
  v = warp_sum(v);
  const int warp = threadIdx.x / kWarpLanes, lane = threadIdx.x % kWarpLanes;
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp != 0) return 0.0;
  return warp_sum(lane < kWarps ? scratch[lane] : 0.0);
}

// One block per chunk: runs op over it and, when the op reduces, writes the chunk's partial sums.
// R::kAnchored: the table's rows carry anchor records, and a tensor may read its anchor
// (run_chunk_anchored); launch.h runs a table in which none does with plain rows.
template <class Op, class R>
__global__ void __launch_bounds__(kThreads) chunk_kernel(Op op, L2FAST_GRID_CONST(LaunchTable<R>) table,
                                                         Sums* partials) {
  static_assert(std::is_same_v<typename R::Meta, typename Op::Meta>, "a table of the op's metadata");
  const ChunkSpan c = locate_chunk(table, blockIdx.x);
  const R& r = table.rows[c.tensor];
  Op local = op;
  local.bind(r);
  Sums sums;
  switch (r.meta.dtype) {
    case kF32: run_chunk_anchored<float>(local, r, c, sums); break;
    case kF64: run_chunk_anchored<double>(local, r, c, sums); break;
    case kF16: run_chunk_anchored<c10::Half>(local, r, c, sums); break;
    default: run_chunk_anchored<c10::BFloat16>(local, r, c, sums); break;
  }
  if constexpr (Op::kReduces) {
    // A term the weights leave out is all zeros: skip its sum (the branch is the same for the block).
    __shared__ double scratch[kWarps];
    const Weights w = weights_of(r);
    Sums partial;
    if (w.l2 != 0.0) partial.sq = block_sum(sums.sq, scratch);
    if (w.l1 != 0.0) partial.abs = block_sum(sums.abs, scratch);
    if (R::kAnchored && w.sp != 0.0) partial.dev = block_sum(sums.dev, scratch);
    if (threadIdx.x == 0) partials[table.first_partial + blockIdx.x] = partial;
  }
}

// The tensors t = blockIdx.x * kWarps + warp of the table: each one's chunk partials folded in
// fold_block_order, then weighted. A tensor of at most kWarpLanes chunks is folded by its own warp (the
// same bits: fold.h's one_warp_folds); a longer one by the whole block, so a 100M-element tensor's 6.1k
// partials take 24 loads per thread rather than 190 per lane of one warp. The deviations are folded only
// for a tensor whose weights weigh them (all zeros otherwise).
// The value goes to per_tensor_out (cast to the result dtype) when that is given, else to values.
template <typename Out, class R>
__global__ void __launch_bounds__(kThreads) tensor_values_kernel(L2FAST_GRID_CONST(LaunchTable<R>) table,
                                                                 const Sums* partials, Out* per_tensor_out,
                                                                 double* values) {
  const int64_t first = int64_t(blockIdx.x) * kWarps;
  const int64_t end = first + kWarps < table.count ? first + kWarps : table.count;
  const auto put = [&](int64_t t, const Sums& s) {
    const double value = weights_of(table.rows[t]).value(s.sq, s.abs, s.dev);
    if (per_tensor_out != nullptr) per_tensor_out[table.first_tensor + t] = static_cast<Out>(value);
    else values[table.first_tensor + t] = value;
  };
  const auto chunks = [&](int64_t t) { return table.chunk_end[t] - chunk_begin(table, t); };
  // Partials of tensor t from partial `from` on, every `step`-th, each sum folded by fold(v) (warp_sum or
  // block_sum).
  const auto gather_fold = [&](int64_t t, int64_t from, int step, auto fold) {
    const bool anchored = R::kAnchored && table.rows[t].anchor_meta().sp != 0.0;
    Sums s;
#pragma unroll 4  // four loads in flight rather than one; the adds stay in order
    for (int64_t k = chunk_begin(table, t) + from; k < table.chunk_end[t]; k += step) {
      const Sums& p = partials[table.first_partial + k];
      s.sq += p.sq;
      s.abs += p.abs;
      if (anchored) s.dev += p.dev;
    }
    s.sq = fold(s.sq);
    s.abs = fold(s.abs);
    if (anchored) s.dev = fold(s.dev);
    return s;
  };

  const int64_t mine = first + threadIdx.x / kWarpLanes;
  if (mine < end && one_warp_folds(chunks(mine))) {  // the whole warp: no shuffle is left half-attended
    const int lane = threadIdx.x % kWarpLanes;
    const Sums s = gather_fold(mine, lane, kWarpLanes, [](double v) { return warp_sum(v); });
    if (lane == 0) put(mine, s);
  }
  __shared__ double scratch[kWarps];
  for (int64_t t = first; t < end; ++t) {  // the same tensors, in the same order, for every thread
    if (one_warp_folds(chunks(t))) continue;
    const Sums s = gather_fold(t, threadIdx.x, kThreads, [&](double v) { return block_sum(v, scratch); });
    if (threadIdx.x == 0) put(t, s);
  }
}

// One block: out[0] = the n values folded in fold_block_order (0 for n == 0).
template <typename Out>
__global__ void __launch_bounds__(kThreads) total_kernel(const double* values, int64_t n, Out* out) {
  double local = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) local += values[i];
  __shared__ double scratch[kWarps];
  const double total = block_sum(local, scratch);
  if (threadIdx.x == 0) out[0] = static_cast<Out>(total);
}

}  // namespace l2fast::cuda
