// minGRU's whole layer on CPU, forward and backward, one batch row at a time.
//
// The same arithmetic as rnn_jax/cells/min_gru.py with `linear_scan`: k = x_t W + bias,
// split into k_z, k_h; a = sigmoid(-k_z), z = sigmoid(k_z), h~ = g(k_h) (x + 0.5 for
// x >= 0, sigmoid(x) below); h_t = a h_{t-1} + z h~; a masked step keeps h. Why a native
// kernel: XLA makes several passes over [time, batch, units] arrays larger than the L2
// cache, while one row's projection, gates and recurrence fit in L1 (docs/performance.md,
// "minGRU's native CPU kernel", has the measurements).
//
// Shapes (float32, row-major; any leading "instance" axes in front of all of them, as
// vmap adds them, are looped over):
//   x [rows, time, features], w [features, 2 units], bias [2 units], h0 [rows, units],
//   mask [rows, time] (1 = step, 0 = padding).
//   forward -> hs [rows, time, units] (or [0]: not wanted), last [rows, units].
//   backward(..., g_hs [rows, time, units] or [0], g_last [rows, units])
//     -> dx [rows, time, features] (or [0]: not wanted), dw, dbias, dh0.
// Rows are split into chunks of a size that depends on `rows` alone, which run on XLA's
// intra-op thread pool; each chunk sums its own dw, dbias, and the chunks' sums are added
// in chunk order, so the result does not depend on the number of threads.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// exp(x) by Cephes' expf polynomial (relative error ~1e-7), written so that the compiler
// vectorizes the loops that call it (libm's expf is a call per element).
inline float Exp(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

struct Sizes {
  int64_t instances, rows, time, features, units;
};

constexpr int64_t kBlock = 16;  // columns per register block: 2 AVX2 or 1 AVX-512 vector
inline int64_t Padded(int64_t n) { return (n + kBlock - 1) / kBlock * kBlock; }

// A block of kBlock floats, in as many vector registers as the CPU needs (GCC's and
// Clang's vector extension: the loops below stay in registers, which plain arrays did not).
typedef float Vec __attribute__((vector_size(kBlock * sizeof(float))));
inline Vec Load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void Store(float* p, Vec v) { std::memcpy(p, &v, sizeof v); }

// C[m, :n] (+)= sum_k A[m am + k ak] B[k ldb + :n] for m < MB, n a multiple of kBlock: the
// MB x kBlock block of C stays in registers while k runs.
template <int MB>
inline void GemmRows(int64_t K, const float* A, int64_t am, int64_t ak, const float* B,
                     int64_t ldb, float* C, int64_t ldc, int64_t n, bool accumulate) {
  for (int64_t n0 = 0; n0 < n; n0 += kBlock) {
    Vec acc[MB];
    for (int m = 0; m < MB; ++m) acc[m] = accumulate ? Load(C + m * ldc + n0) : Vec{};
    for (int64_t k = 0; k < K; ++k) {
      const Vec b = Load(B + k * ldb + n0);
      for (int m = 0; m < MB; ++m) acc[m] += A[m * am + k * ak] * b;
    }
    for (int m = 0; m < MB; ++m) Store(C + m * ldc + n0, acc[m]);
  }
}

// C [M, n] (+)= A [M, K] B [K, n], A read as A[m am + k ak]; n a multiple of kBlock.
inline void Gemm(int64_t M, int64_t K, const float* A, int64_t am, int64_t ak, const float* B,
                 int64_t ldb, float* C, int64_t ldc, int64_t n, bool accumulate) {
  int64_t m = 0;
  for (; m + 4 <= M; m += 4)
    GemmRows<4>(K, A + m * am, am, ak, B, ldb, C + m * ldc, ldc, n, accumulate);
  for (; m < M; ++m) GemmRows<1>(K, A + m * am, am, ak, B, ldb, C + m * ldc, ldc, n, accumulate);
}

// The gates of one step from k = x_t w (without the bias): a = sigmoid(-k_z),
// z = sigmoid(k_z), g = g(k_h), and g's derivative.
struct Gates {
  float a, z, g, dg;
};
inline Gates GatesOf(float k_z, float k_h) {
  const float e = Exp(-k_z);
  const float z = 1.0f / (1.0f + e);
  const float sig_h = 1.0f / (1.0f + Exp(-k_h));
  const bool linear = k_h >= 0.0f;
  return {e * z,  // sigmoid(-k_z), without the cancellation of 1 - z
          z, linear ? k_h + 0.5f : sig_h, linear ? 1.0f : sig_h * (1.0f - sig_h)};
}

// One instance's weights, laid out for the row kernels: w and its transpose with their
// columns padded to whole register blocks (zeros), the bias split per gate.
struct Weights {
  int64_t features, units, width, padded_width, padded_features;
  std::vector<float> w, wt;  // [features, padded_width], [width, padded_features]
  const float* bias;

  Weights(const Sizes& s, const float* w_v, const float* bias_v)
      : features(s.features), units(s.units), width(2 * s.units),
        padded_width(Padded(2 * s.units)), padded_features(Padded(s.features)),
        w(s.features * Padded(2 * s.units), 0.0f),
        wt(2 * s.units * Padded(s.features), 0.0f), bias(bias_v) {
    for (int64_t f = 0; f < features; ++f)
      for (int64_t j = 0; j < width; ++j) {
        w[f * padded_width + j] = w_v[f * width + j];
        wt[j * padded_features + f] = w_v[f * width + j];
      }
  }
};

// One row's forward pass: k = x w for all steps [time, padded_width], then the loop.
// With `previous`, h_{t-1} of each step is kept there [time, units].
inline void ForwardRow(const Weights& w, int64_t time, const float* x, const float* mask,
                       float* h, float* k, float* hs, float* previous) {
  Gemm(time, w.features, x, w.features, 1, w.w.data(), w.padded_width, k, w.padded_width,
       w.padded_width, false);
  const int64_t units = w.units;
  const float* __restrict b_z = w.bias;
  const float* __restrict b_h = w.bias + units;
  for (int64_t t = 0; t < time; ++t) {
    if (previous) std::memcpy(previous + t * units, h, units * sizeof(float));
    if (mask[t] != 0.0f) {
      const float* __restrict k_z = k + t * w.padded_width;
      const float* __restrict k_h = k_z + units;
      float* __restrict h_ = h;
      for (int64_t u = 0; u < units; ++u) {
        const Gates q = GatesOf(k_z[u] + b_z[u], k_h[u] + b_h[u]);
        h_[u] = q.a * h_[u] + q.z * q.g;
      }
    }
    if (hs) std::memcpy(hs + t * units, h, units * sizeof(float));
  }
}

// Runs chunk(c) for c in [0, chunks) on the calling thread and the pool's. Deadlock-free
// when the pool's threads are all busy (as with several devices): the caller takes chunks
// too and waits only for chunks that some thread has taken, and tasks that start late find
// nothing left; they hold the state, not the caller's stack.
template <typename Chunk>
void ParallelFor(ffi::ThreadPool& pool, int64_t chunks, Chunk chunk) {
  struct State {
    std::atomic<int64_t> next{0}, done{0};
  };
  auto state = std::make_shared<State>();
  auto work = [state, chunks, chunk]() {
    for (int64_t c; (c = state->next.fetch_add(1)) < chunks;) {
      chunk(c);
      state->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), chunks - 1);
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule(decltype(work)(work));
  work();
  while (state->done.load(std::memory_order_acquire) < chunks) std::this_thread::yield();
}

// Rows split into chunks of a size that depends on `rows` alone (so that the order of the
// weight gradient's sums does not depend on the thread count), per instance.
struct Chunks {
  int64_t rows, per_chunk, per_instance, count;

  Chunks(int64_t instances, int64_t rows)
      : rows(rows), per_chunk(std::max<int64_t>(4, (rows + 63) / 64)),
        per_instance((rows + per_chunk - 1) / per_chunk), count(instances * per_instance) {}
  int64_t Instance(int64_t c) const { return c / per_instance; }
  int64_t First(int64_t c) const { return Instance(c) * rows + (c % per_instance) * per_chunk; }
  int64_t End(int64_t c) const { return std::min((Instance(c) + 1) * rows, First(c) + per_chunk); }
};

ffi::Error CheckSizes(const ffi::Buffer<ffi::F32>& x, const ffi::Buffer<ffi::F32>& w,
                      Sizes* s) {
  auto xd = x.dimensions();
  auto wd = w.dimensions();
  if (xd.size() < 3 || wd.size() < 2 || wd[wd.size() - 1] % 2 != 0)
    return ffi::Error::InvalidArgument("min_gru kernel: x [..., rows, time, features], "
                                       "w [..., features, 2 units]");
  s->instances = 1;
  for (size_t i = 0; i + 2 < wd.size(); ++i) s->instances *= wd[i];
  s->features = wd[wd.size() - 2];
  s->units = wd[wd.size() - 1] / 2;
  s->time = xd[xd.size() - 2];
  if (xd[xd.size() - 1] != s->features)
    return ffi::Error::InvalidArgument("min_gru kernel: x's features differ from w's");
  s->rows = x.element_count() / std::max<int64_t>(1, s->instances * s->time * s->features);
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                   ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> h0,
                   ffi::Buffer<ffi::F32> mask, ffi::ResultBuffer<ffi::F32> hs,
                   ffi::ResultBuffer<ffi::F32> last) {
  Sizes s;
  if (ffi::Error e = CheckSizes(x, w, &s); e.failure()) return e;
  const bool sequences = hs->element_count() > 0;
  const Chunks chunks(s.instances, s.rows);
  const float* px = x.typed_data();
  const float* pw = w.typed_data();
  const float* pb = bias.typed_data();
  const float* p0 = h0.typed_data();
  const float* pm = mask.typed_data();
  float* phs = hs->typed_data();
  float* plast = last->typed_data();
  ParallelFor(pool, chunks.count, [=](int64_t c) {
    const int64_t v = chunks.Instance(c);
    const Weights weights(s, pw + v * s.features * 2 * s.units, pb + v * 2 * s.units);
    std::vector<float> k(s.time * weights.padded_width);
    for (int64_t r = chunks.First(c), end = chunks.End(c); r < end; ++r) {
      float* h = plast + r * s.units;
      std::memcpy(h, p0 + r * s.units, s.units * sizeof(float));
      ForwardRow(weights, s.time, px + r * s.time * s.features, pm + r * s.time, h, k.data(),
                 sequences ? phs + r * s.time * s.units : nullptr, nullptr);
    }
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                    ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> h0,
                    ffi::Buffer<ffi::F32> mask, ffi::Buffer<ffi::F32> g_hs,
                    ffi::Buffer<ffi::F32> g_last, ffi::ResultBuffer<ffi::F32> dx,
                    ffi::ResultBuffer<ffi::F32> dw, ffi::ResultBuffer<ffi::F32> dbias,
                    ffi::ResultBuffer<ffi::F32> dh0) {
  Sizes s;
  if (ffi::Error e = CheckSizes(x, w, &s); e.failure()) return e;
  const bool sequences = g_hs.element_count() > 0;
  const bool input_gradient = dx->element_count() > 0;
  const int64_t units = s.units, width = 2 * s.units, time = s.time, features = s.features;
  const int64_t padded_width = Padded(width);
  const Chunks chunks(s.instances, s.rows);
  const int64_t part_size = features * padded_width + padded_width;
  // Each chunk's dw [features, padded_width] and dbias, summed below in chunk order.
  std::vector<float> partial(chunks.count * part_size, 0.0f);
  const float* px = x.typed_data();
  const float* pw = w.typed_data();
  const float* pb = bias.typed_data();
  const float* p0 = h0.typed_data();
  const float* pm = mask.typed_data();
  const float* pg = g_hs.typed_data();
  const float* pgl = g_last.typed_data();
  float* pdx = dx->typed_data();
  float* pdh0 = dh0->typed_data();
  float* pp = partial.data();
  ParallelFor(pool, chunks.count, [=](int64_t c) {
    const int64_t v = chunks.Instance(c);
    const Weights weights(s, pw + v * features * width, pb + v * width);
    float* dw_c = pp + c * part_size;
    float* db_c = dw_c + features * padded_width;
    // One row's k_t (then its cotangent, in place), h_{t-1}, and dx padded.
    std::vector<float> k(time * padded_width), previous(time * units), h(units);
    std::vector<float> dx_row(input_gradient ? time * weights.padded_features : 0);
    for (int64_t r = chunks.First(c), end = chunks.End(c); r < end; ++r) {
      const float* x_r = px + r * time * features;
      const float* m_r = pm + r * time;
      std::memcpy(h.data(), p0 + r * units, units * sizeof(float));
      ForwardRow(weights, time, x_r, m_r, h.data(), k.data(), nullptr, previous.data());
      float* __restrict d = pdh0 + r * units;  // the cotangent of h_t, then of h_{t-1}
      std::memcpy(d, pgl + r * units, units * sizeof(float));
      for (int64_t t = time - 1; t >= 0; --t) {
        float* __restrict k_z = k.data() + t * padded_width;
        float* __restrict k_h = k_z + units;
        if (sequences) {
          const float* g_t = pg + (r * time + t) * units;
          for (int64_t u = 0; u < units; ++u) d[u] += g_t[u];
        }
        if (m_r[t] == 0.0f) {  // h_t = h_{t-1}: d passes through, k has no cotangent
          std::memset(k_z, 0, width * sizeof(float));
          continue;
        }
        const float* __restrict h_prev = previous.data() + t * units;
        const float* __restrict b_z = weights.bias;
        const float* __restrict b_h = b_z + units;
        for (int64_t u = 0; u < units; ++u) {
          const Gates q = GatesOf(k_z[u] + b_z[u], k_h[u] + b_h[u]);
          k_z[u] = d[u] * q.a * q.z * (q.g - h_prev[u]);
          k_h[u] = d[u] * q.z * q.dg;
          d[u] *= q.a;
        }
      }
      // The cotangents of k, [time, padded_width] (zeros past width), give dw, dbias, dx.
      for (int64_t t = 0; t < time; ++t) {
        const float* __restrict dk = k.data() + t * padded_width;
        for (int64_t j = 0; j < padded_width; ++j) db_c[j] += dk[j];
      }
      Gemm(features, time, x_r, 1, features, k.data(), padded_width, dw_c, padded_width,
           padded_width, true);
      if (input_gradient) {
        const int64_t pf = weights.padded_features;
        Gemm(time, width, k.data(), padded_width, 1, weights.wt.data(), pf, dx_row.data(), pf,
             pf, false);
        float* dx_r = pdx + r * time * features;
        for (int64_t t = 0; t < time; ++t)
          std::memcpy(dx_r + t * features, dx_row.data() + t * pf, features * sizeof(float));
      }
    }
  });
  float* pdw = dw->typed_data();
  float* pdb = dbias->typed_data();
  for (int64_t v = 0; v < s.instances; ++v) {
    float* dw_v = pdw + v * features * width;
    float* db_v = pdb + v * width;
    std::memset(dw_v, 0, features * width * sizeof(float));
    std::memset(db_v, 0, width * sizeof(float));
    for (int64_t c = v * chunks.per_instance; c < (v + 1) * chunks.per_instance; ++c) {
      const float* part = pp + c * part_size;
      for (int64_t f = 0; f < features; ++f)
        for (int64_t j = 0; j < width; ++j) dw_v[f * width + j] += part[f * padded_width + j];
      for (int64_t j = 0; j < width; ++j) db_v[j] += part[features * padded_width + j];
    }
  }
  return ffi::Error::Success();
}

}  // namespace

// What both passes take: XLA's thread pool, then x, w, bias, h0, mask.
static auto BindLayerInputs() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()   // x
      .Arg<ffi::Buffer<ffi::F32>>()   // w
      .Arg<ffi::Buffer<ffi::F32>>()   // bias
      .Arg<ffi::Buffer<ffi::F32>>()   // h0
      .Arg<ffi::Buffer<ffi::F32>>();  // mask
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnJaxMinGruForward, Forward,
                              BindLayerInputs()
                                  .Ret<ffi::Buffer<ffi::F32>>()    // hs
                                  .Ret<ffi::Buffer<ffi::F32>>());  // last

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnJaxMinGruBackward, Backward,
                              BindLayerInputs()
                                  .Arg<ffi::Buffer<ffi::F32>>()    // g_hs
                                  .Arg<ffi::Buffer<ffi::F32>>()    // g_last
                                  .Ret<ffi::Buffer<ffi::F32>>()    // dx
                                  .Ret<ffi::Buffer<ffi::F32>>()    // dw
                                  .Ret<ffi::Buffer<ffi::F32>>()    // dbias
                                  .Ret<ffi::Buffer<ffi::F32>>());  // dh0
