// XLA FFI handlers running a 2-D convolution and its two gradients with oneDNN: float32 operands,
// or bfloat16 operands (both the same) with float32 accumulation; results are float32 either way.
//
// Layouts are JAX's: activations NHWC, weights HWIO (oneDNN's `nhwc` and `hwio` tags); the
// weights (a few KB) are reordered to the layout oneDNN's kernel wants, the activations are not.
// oneDNN primitives are slow to create, so each is built once per (kind, operand type, shapes,
// strides, padding, dilation) and cached; executing a cached primitive from several threads is
// allowed, but every call runs on one executor thread (see Executor).
//
//   espcn_onednn_conv_fwd          (x[N,H,W,I], w[KH,KW,I,O])  -> y[N,OH,OW,O]
//   espcn_onednn_conv_bwd_data     (dy[N,OH,OW,O], w)          -> dx[N,H,W,I]
//   espcn_onednn_conv_bwd_weights  (x, dy)                      -> dw[KH,KW,I,O]
//
// Attributes (int64): stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right, dilation_h,
// dilation_w (1 = no dilation, JAX's convention).

#include <unistd.h>

#include <array>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using Dims = dnnl::memory::dims;
using Tag = dnnl::memory::format_tag;
using DataType = dnnl::memory::data_type;
using F32Buffer = ffi::Buffer<ffi::F32, 4>;
using F32Result = ffi::ResultBuffer<ffi::F32, 4>;

enum Kind { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

struct Geometry {
  Dims x, w, y;  // oneDNN's logical orders: NCHW, OIHW, NCHW
  Dims strides, pad_l, pad_r, dilates;
  DataType operands = DataType::f32;  // of the two inputs (f32 or bf16); results are f32

  // The data type of x, w and y for a primitive of `kind`: its two inputs are `operands`, its
  // result (y forward, x backward-data, w backward-weights) f32.
  DataType X(int kind) const { return kind == kBackwardData ? DataType::f32 : operands; }
  DataType W(int kind) const { return kind == kBackwardWeights ? DataType::f32 : operands; }
  DataType Y(int kind) const { return kind == kForward ? DataType::f32 : operands; }

  std::string Key(int kind) const {
    std::string k = std::to_string(kind) + "," + std::to_string(static_cast<int>(operands));
    for (const Dims* d : {&x, &w, &y, &strides, &pad_l, &pad_r, &dilates})
      for (auto v : *d) k += "," + std::to_string(v);
    return k;
  }
};

// NHWC / HWIO extents as oneDNN's logical NCHW / OIHW dims.
Dims Nchw(ffi::Span<const int64_t> nhwc) { return {nhwc[0], nhwc[3], nhwc[1], nhwc[2]}; }
Dims Oihw(ffi::Span<const int64_t> hwio) { return {hwio[3], hwio[2], hwio[0], hwio[1]}; }

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::primitive_attr Attr() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

dnnl::memory::desc Act(const Dims& d, DataType t) { return {d, t, Tag::nhwc}; }
dnnl::memory::desc Hwio(const Dims& d, DataType t) { return {d, t, Tag::hwio}; }
dnnl::memory::desc AnyWeights(const Dims& d, DataType t) { return {d, t, Tag::any}; }

// The weights take the layout oneDNN's fastest kernel wants (blocked; `hwio` sends it to a slow
// GEMM path for the backward passes); a cached reorder converts from/to JAX's HWIO. `kind` sets
// the data types of the descriptor (the backward primitives need a forward one as a hint).
dnnl::convolution_forward::primitive_desc ForwardDesc(const Geometry& g, int kind) {
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
      Act(g.x, g.operands), AnyWeights(g.w, g.operands), Act(g.y, g.Y(kind)), g.strides,
      g.dilates, g.pad_l, g.pad_r, Attr());
}

struct Cached {
  dnnl::primitive prim;
  dnnl::memory::desc scratch;
  dnnl::memory::desc weights;  // the primitive's weights layout
  bool reorder = false;        // whether it differs from HWIO
  dnnl::primitive weights_reorder;
};

Cached Build(int kind, const Geometry& g) {
  auto& e = Engine();
  auto fwd = ForwardDesc(g, kind);
  auto x = Act(g.x, g.X(kind)), w = AnyWeights(g.w, g.W(kind)), y = Act(g.y, g.Y(kind));
  Cached c;
  if (kind == kForward) {
    c = {dnnl::convolution_forward(fwd), fwd.scratchpad_desc(), fwd.weights_desc()};
  } else if (kind == kBackwardData) {
    dnnl::convolution_backward_data::primitive_desc pd(e, dnnl::algorithm::convolution_direct, x,
                                                       w, y, g.strides, g.dilates, g.pad_l,
                                                       g.pad_r, fwd, Attr());
    c = {dnnl::convolution_backward_data(pd), pd.scratchpad_desc(), pd.weights_desc()};
  } else {
    dnnl::convolution_backward_weights::primitive_desc pd(
        e, dnnl::algorithm::convolution_direct, x, w, y, g.strides, g.dilates, g.pad_l, g.pad_r,
        fwd, Attr());
    c = {dnnl::convolution_backward_weights(pd), pd.scratchpad_desc(), pd.diff_weights_desc()};
  }
  auto hwio = Hwio(g.w, g.W(kind));
  c.reorder = c.weights != hwio;
  if (c.reorder) {
    c.weights_reorder = kind == kBackwardWeights
                            ? dnnl::reorder(dnnl::reorder::primitive_desc(e, c.weights, e, hwio))
                            : dnnl::reorder(dnnl::reorder::primitive_desc(e, hwio, e, c.weights));
  }
  return c;
}

const Cached& Lookup(int kind, const Geometry& g) {
  static std::mutex mu;
  static auto* cache = new std::unordered_map<std::string, std::unique_ptr<Cached>>();
  std::string key = g.Key(kind);
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache->find(key);
  if (it == cache->end())
    it = cache->emplace(key, std::make_unique<Cached>(Build(kind, g))).first;
  return *it->second;
}

Geometry MakeGeometry(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
                      ffi::Span<const int64_t> y, DataType operands, int64_t sh, int64_t sw,
                      int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t dh, int64_t dw) {
  // oneDNN counts dilation from 0 (0 = dense), JAX from 1.
  return Geometry{Nchw(x),  Oihw(w),  Nchw(y),          {sh, sw},
                  {pt, pl}, {pb, pr}, {dh - 1, dw - 1}, operands};
}

// The oneDNN data type of two input buffers, which must be both float32 or both bfloat16.
bool Operands(const ffi::AnyBuffer& a, const ffi::AnyBuffer& b, DataType* type) {
  if (a.element_type() != b.element_type()) return false;
  if (a.element_type() == ffi::DataType::F32) *type = DataType::f32;
  else if (a.element_type() == ffi::DataType::BF16) *type = DataType::bf16;
  else return false;
  return true;
}

ffi::Error BadOperands() {
  return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                    "oneDNN conv: operands must be both float32 or both bfloat16");
}

std::string RunHere(int kind, const Geometry& g, void* x, void* w, void* y);

// The one thread that calls oneDNN. GNU OpenMP keeps a team of worker threads for each thread
// that opens a parallel region, and XLA:CPU runs a custom call on whichever of its threads is
// free (with asynchronous dispatch, threads of two pools), so calling oneDNN from XLA's threads
// kept several teams and made the asynchronous training loop 7-10% slower than with one team
// (BUILD_NOTES.md, "One thread for oneDNN"). Here every call runs on one
// thread, so one team serves them all; calls are serialised, as that team already uses every
// core. A forked child starts its own thread.
class Executor {
 public:
  static Executor& Get() {
    static std::mutex mu;
    static Executor* executor = nullptr;
    static pid_t owner = 0;
    std::lock_guard<std::mutex> lock(mu);
    if (executor == nullptr || owner != getpid()) {  // leaked: it lives as long as the process
      executor = new Executor();
      owner = getpid();
    }
    return *executor;
  }

  // Runs `task` on the executor's thread; returns its error message ("" for success).
  std::string Call(const std::function<std::string()>& task) {
    Job job{&task};
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(&job);
    }
    cv_.notify_one();
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [&] { return job.done; });
    return job.error;
  }

 private:
  struct Job {
    const std::function<std::string()>* task;
    std::string error;
    bool done = false;
  };

  Executor() { std::thread([this] { Loop(); }).detach(); }

  void Loop() {
    for (;;) {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return !queue_.empty(); });
      Job* job = queue_.front();
      queue_.pop_front();
      lock.unlock();
      std::string error = (*job->task)();
      lock.lock();
      job->error = std::move(error);
      job->done = true;
      lock.unlock();
      done_cv_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  std::deque<Job*> queue_;
};

ffi::Error Run(int kind, const Geometry& g, void* x, void* w, void* y) {
  std::string error =
      Executor::Get().Call([&]() -> std::string { return RunHere(kind, g, x, w, y); });
  if (error.empty()) return ffi::Error::Success();
  return ffi::Error(ffi::ErrorCode::kInternal, error);
}

std::string RunHere(int kind, const Geometry& g, void* x, void* w, void* y) {
  try {
    const Cached& c = Lookup(kind, g);
    auto& e = Engine();
    dnnl::stream stream(e);
    dnnl::memory xm(Act(g.x, g.X(kind)), e, x), ym(Act(g.y, g.Y(kind)), e, y),
        hwio(Hwio(g.w, g.W(kind)), e, w);
    thread_local std::vector<char> scratch_bytes, weight_bytes;
    if (scratch_bytes.size() < c.scratch.get_size()) scratch_bytes.resize(c.scratch.get_size());
    dnnl::memory sm(c.scratch, e, scratch_bytes.data());
    dnnl::memory wm = hwio;
    if (c.reorder) {
      if (weight_bytes.size() < c.weights.get_size()) weight_bytes.resize(c.weights.get_size());
      wm = dnnl::memory(c.weights, e, weight_bytes.data());
      if (kind != kBackwardWeights)
        c.weights_reorder.execute(stream, {{DNNL_ARG_FROM, hwio}, {DNNL_ARG_TO, wm}});
    }
    std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_SCRATCHPAD, sm}};
    if (kind == kForward) {
      args.insert({{DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, ym}});
    } else if (kind == kBackwardData) {
      args.insert({{DNNL_ARG_DIFF_SRC, xm}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DIFF_DST, ym}});
    } else {
      args.insert({{DNNL_ARG_SRC, xm}, {DNNL_ARG_DIFF_WEIGHTS, wm}, {DNNL_ARG_DIFF_DST, ym}});
    }
    c.prim.execute(stream, args);
    if (c.reorder && kind == kBackwardWeights)
      c.weights_reorder.execute(stream, {{DNNL_ARG_FROM, wm}, {DNNL_ARG_TO, hwio}});
    stream.wait();
  } catch (const dnnl::error& err) {
    return std::string("oneDNN: ") + err.what();
  }
  return "";
}

ffi::Error Forward(ffi::AnyBuffer x, ffi::AnyBuffer w, F32Result y, int64_t sh, int64_t sw,
                   int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t dh, int64_t dw) {
  DataType operands;
  if (!Operands(x, w, &operands)) return BadOperands();
  auto g = MakeGeometry(x.dimensions(), w.dimensions(), y->dimensions(), operands, sh, sw,
                        pt, pb, pl, pr, dh, dw);
  return Run(kForward, g, x.untyped_data(), w.untyped_data(), y->untyped_data());
}

ffi::Error BackwardData(ffi::AnyBuffer dy, ffi::AnyBuffer w, F32Result dx, int64_t sh,
                        int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t dh,
                        int64_t dw) {
  DataType operands;
  if (!Operands(dy, w, &operands)) return BadOperands();
  auto g = MakeGeometry(dx->dimensions(), w.dimensions(), dy.dimensions(), operands, sh,
                        sw, pt, pb, pl, pr, dh, dw);
  return Run(kBackwardData, g, dx->untyped_data(), w.untyped_data(), dy.untyped_data());
}

ffi::Error BackwardWeights(ffi::AnyBuffer x, ffi::AnyBuffer dy, F32Result dw_out, int64_t sh,
                           int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t dh,
                           int64_t dw) {
  DataType operands;
  if (!Operands(x, dy, &operands)) return BadOperands();
  auto g = MakeGeometry(x.dimensions(), dw_out->dimensions(), dy.dimensions(), operands,
                        sh, sw, pt, pb, pl, pr, dh, dw);
  return Run(kBackwardWeights, g, x.untyped_data(), dw_out->untyped_data(), dy.untyped_data());
}

}  // namespace

#define ESPCN_CONV_ATTRS                                                                    \
  .Attr<int64_t>("stride_h").Attr<int64_t>("stride_w").Attr<int64_t>("pad_top")              \
      .Attr<int64_t>("pad_bottom").Attr<int64_t>("pad_left").Attr<int64_t>("pad_right")     \
      .Attr<int64_t>("dilation_h").Attr<int64_t>("dilation_w")

// Two inputs (float32 or bfloat16, checked by the handler), one float32 result, the attributes.
#define ESPCN_CONV_BINDING \
  ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<F32Buffer>() ESPCN_CONV_ATTRS

XLA_FFI_DEFINE_HANDLER_SYMBOL(EspcnOnednnConvFwd, Forward, ESPCN_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(EspcnOnednnConvBwdData, BackwardData, ESPCN_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(EspcnOnednnConvBwdWeights, BackwardWeights, ESPCN_CONV_BINDING);

// The oneDNN version this library was built against, for the run-time check and logs.
extern "C" int espcn_onednn_version() {
  const dnnl_version_t* v = dnnl_version();
  return v->major * 10000 + v->minor * 100 + v->patch;
}
