// oneDNN 'same' stride-1 convolutions as XLA FFI handlers (labelfree_jax.models.onednn).
//
// Layouts as labelfree_jax.models.ops (channels-last, Flax kernels):
//   x: (N, D, H, W, C) or (N, H, W, C)        (oneDNN: ndhwc / nhwc)
//   w: (KD, KH, KW, C, O) or (KH, KW, C, O)   (oneDNN: dhwio / hwio), odd kernel sides
//   y: (N, D, H, W, O) or (N, H, W, O)        zero padding k // 2 on every side
//
// Handlers (exported C symbols, registered from Python with jax.ffi.register_ffi_target):
//   LabelfreeOnednnConvFwd(x, w) -> y
//   LabelfreeOnednnConvBwdData(g, w) -> dx          (g: output gradient, like y)
//   LabelfreeOnednnConvBwdWeights(x, g) -> dw
// Every buffer is float32 or bfloat16, each with its own type (bf16 inputs: oneDNN accumulates
// in float32 and rounds once into a bf16 result, or writes a float32 result).
//
// Primitives are cached by (pass, dims, dtypes) in a mutex-guarded map; oneDNN picks the weight
// format (format_tag::any) and the kernel weights are reordered from/to the Flax layout per
// call. Scratchpads are user-managed (thread-local buffers), so one primitive may run on
// several XLA threads at once; streams are thread-local.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>
#include <utility>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine* engine = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *engine;
}

dnnl::stream& Stream() {
  thread_local dnnl::stream stream(Engine());
  return stream;
}

// A growable 64-byte aligned buffer, one set per thread.
class Buffer {
 public:
  ~Buffer() { std::free(ptr_); }
  void* Get(size_t bytes) {
    bytes = bytes < 64 ? 64 : (bytes + 63) / 64 * 64;
    if (bytes > size_) {
      std::free(ptr_);
      ptr_ = std::aligned_alloc(64, bytes);
      size_ = ptr_ ? bytes : 0;
      if (!ptr_) throw std::bad_alloc();
    }
    return ptr_;
  }

 private:
  void* ptr_ = nullptr;
  size_t size_ = 0;
};

enum Slot { kScratchpad = 0, kWeights = 1 };

Buffer& ThreadBuffer(Slot slot) {
  thread_local Buffer buffers[2];
  return buffers[slot];
}

enum class Pass { kForward, kBackwardData, kBackwardWeights };

// Sizes in oneDNN's order: activations {N, C, spatial...}, weights {O, I, kernel...}.
struct Geometry {
  int n_spatial = 0;
  memory::dims src, weights, dst, strides, padding;
  memory::format_tag act_tag = memory::format_tag::undef;
  memory::format_tag weights_tag = memory::format_tag::undef;
};

// x: (N, *S, C), w: (*K, C, O). Empty string when valid, else the reason.
std::string MakeGeometry(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w, Geometry* g) {
  const int64_t rank = static_cast<int64_t>(x.size());
  if (rank != 4 && rank != 5) return "activations must have rank 4 (N, H, W, C) or 5 (N, D, H, W, C)";
  if (static_cast<int64_t>(w.size()) != rank) return "kernel rank must equal activation rank";
  const int ns = static_cast<int>(rank - 2);
  if (w[ns] != x[rank - 1]) return "kernel input channels must equal activation channels";
  g->n_spatial = ns;
  g->src = {x[0], x[rank - 1]};
  g->weights = {w[ns + 1], w[ns]};
  g->dst = {x[0], w[ns + 1]};
  for (int i = 0; i < ns; ++i) {
    if (w[i] % 2 != 1) return "kernel sides must be odd";
    g->src.push_back(x[1 + i]);
    g->dst.push_back(x[1 + i]);
    g->weights.push_back(w[i]);
    g->strides.push_back(1);
    g->padding.push_back(w[i] / 2);
  }
  g->act_tag = ns == 3 ? memory::format_tag::ndhwc : memory::format_tag::nhwc;
  g->weights_tag = ns == 3 ? memory::format_tag::dhwio : memory::format_tag::hwio;
  return "";
}

bool ToDnnl(ffi::DataType t, memory::data_type* out) {
  if (t == ffi::DataType::F32) {
    *out = memory::data_type::f32;
  } else if (t == ffi::DataType::BF16) {
    *out = memory::data_type::bf16;
  } else {
    return false;
  }
  return true;
}

// One cached primitive: the convolution, its weight format and the reorder between the Flax
// layout and that format (to it for forward/backward-data, from it for backward-weights).
struct Entry {
  dnnl::primitive conv;
  memory::desc weights_md;       // what the primitive reads (or writes, backward-weights)
  memory::desc user_weights_md;  // the Flax (d)hwio layout
  bool reorder_weights = false;
  dnnl::reorder reorder;
  memory::desc scratchpad_md;
  std::string impl;
};

std::mutex cache_mutex;
std::unordered_map<std::string, std::shared_ptr<Entry>>& Cache() {
  static auto* cache = new std::unordered_map<std::string, std::shared_ptr<Entry>>();
  return *cache;
}
std::string* info_text = new std::string();

std::string Key(Pass pass, const Geometry& g, const memory::data_type dt[3]) {
  std::ostringstream key;
  key << static_cast<int>(pass);
  for (const auto* dims : {&g.src, &g.weights}) {
    key << '|';
    for (auto d : *dims) key << d << ',';
  }
  key << '|' << static_cast<int>(dt[0]) << ',' << static_cast<int>(dt[1]) << ',' << static_cast<int>(dt[2]);
  return key.str();
}

// dt: the three buffer types in handler argument order (fwd: x, w, y; bwd-data: g, w, dx;
// bwd-weights: x, g, dw).
std::shared_ptr<Entry> Create(Pass pass, const Geometry& g, const memory::data_type dt[3]) {
  using dnnl::algorithm;
  using dnnl::prop_kind;
  const auto any = memory::format_tag::any;
  auto& eng = Engine();
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  auto entry = std::make_shared<Entry>();
  // activation types: src is x (fwd, bwd-weights) or dx (bwd-data); dst is y or g
  const memory::data_type src_dt = pass == Pass::kBackwardData ? dt[2] : dt[0];
  const memory::data_type dst_dt = pass == Pass::kForward ? dt[2] : pass == Pass::kBackwardData ? dt[0] : dt[1];
  const memory::data_type w_dt = pass == Pass::kBackwardWeights ? dt[2] : dt[1];
  const memory::desc src_md(g.src, src_dt, g.act_tag), dst_md(g.dst, dst_dt, g.act_tag);
  const memory::desc w_any(g.weights, w_dt, any);
  entry->user_weights_md = memory::desc(g.weights, w_dt, g.weights_tag);
  if (pass == Pass::kForward) {
    dnnl::convolution_forward::primitive_desc pd(eng, prop_kind::forward_inference, algorithm::convolution_direct,
                                                 src_md, w_any, dst_md, g.strides, g.padding, g.padding, attr);
    entry->conv = dnnl::convolution_forward(pd);
    entry->weights_md = pd.weights_desc();
    entry->scratchpad_md = pd.scratchpad_desc();
    entry->impl = pd.impl_info_str();
  } else {
    // the forward hint in the data type of the activations
    const memory::data_type a_dt = pass == Pass::kBackwardData ? dst_dt : src_dt;
    dnnl::convolution_forward::primitive_desc hint(
        eng, prop_kind::forward_training, algorithm::convolution_direct, memory::desc(g.src, a_dt, g.act_tag),
        memory::desc(g.weights, a_dt, any), memory::desc(g.dst, a_dt, g.act_tag), g.strides, g.padding, g.padding);
    if (pass == Pass::kBackwardData) {
      dnnl::convolution_backward_data::primitive_desc pd(eng, algorithm::convolution_direct, src_md, w_any, dst_md,
                                                         g.strides, g.padding, g.padding, hint, attr);
      entry->conv = dnnl::convolution_backward_data(pd);
      entry->weights_md = pd.weights_desc();
      entry->scratchpad_md = pd.scratchpad_desc();
      entry->impl = pd.impl_info_str();
    } else {
      dnnl::convolution_backward_weights::primitive_desc pd(eng, algorithm::convolution_direct, src_md, w_any, dst_md,
                                                            g.strides, g.padding, g.padding, hint, attr);
      entry->conv = dnnl::convolution_backward_weights(pd);
      entry->weights_md = pd.diff_weights_desc();
      entry->scratchpad_md = pd.scratchpad_desc();
      entry->impl = pd.impl_info_str();
    }
  }
  entry->reorder_weights = entry->weights_md != entry->user_weights_md;
  if (entry->reorder_weights) {
    entry->reorder = pass == Pass::kBackwardWeights
                         ? dnnl::reorder(dnnl::reorder::primitive_desc(eng, entry->weights_md, eng, entry->user_weights_md))
                         : dnnl::reorder(dnnl::reorder::primitive_desc(eng, entry->user_weights_md, eng, entry->weights_md));
  }
  return entry;
}

std::shared_ptr<Entry> Lookup(Pass pass, const Geometry& g, const memory::data_type dt[3]) {
  const std::string key = Key(pass, g, dt);
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto& cache = Cache();
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  auto entry = Create(pass, g, dt);
  cache.emplace(key, entry);
  *info_text += key + " " + entry->impl + (entry->reorder_weights ? " (weights reordered)" : "") + "\n";
  return entry;
}

// Runs one pass. a, b: the two inputs, out: the result (see the handler list at the top).
ffi::Error Run(Pass pass, ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> out) {
  memory::data_type dt[3];
  if (!ToDnnl(a.element_type(), &dt[0]) || !ToDnnl(b.element_type(), &dt[1]) || !ToDnnl(out->element_type(), &dt[2])) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "oneDNN convolution: buffers must be float32 or bfloat16");
  }
  Geometry g;
  const std::string bad = pass == Pass::kBackwardWeights ? MakeGeometry(a.dimensions(), out->dimensions(), &g)
                          : pass == Pass::kBackwardData  ? MakeGeometry(out->dimensions(), b.dimensions(), &g)
                                                         : MakeGeometry(a.dimensions(), b.dimensions(), &g);
  if (!bad.empty()) return ffi::Error(ffi::ErrorCode::kInvalidArgument, "oneDNN convolution: " + bad);
  if (a.element_count() == 0 || b.element_count() == 0 || out->element_count() == 0) {
    if (out->element_count() > 0) std::memset(out->untyped_data(), 0, out->size_bytes());
    return ffi::Error::Success();
  }
  try {
    auto entry = Lookup(pass, g, dt);
    auto& eng = Engine();
    auto& stream = Stream();
    // the Flax-layout weights: an input (fwd: b, bwd-data: b) or the result (bwd-weights)
    void* user_w = pass == Pass::kBackwardWeights ? out->untyped_data() : b.untyped_data();
    memory user_weights(entry->user_weights_md, eng, user_w);
    memory weights = user_weights;
    if (entry->reorder_weights) {
      weights = memory(entry->weights_md, eng, ThreadBuffer(kWeights).Get(entry->weights_md.get_size()));
      if (pass != Pass::kBackwardWeights) entry->reorder.execute(stream, user_weights, weights);
    }
    memory scratchpad(entry->scratchpad_md, eng, ThreadBuffer(kScratchpad).Get(entry->scratchpad_md.get_size()));
    std::unordered_map<int, memory> args{{DNNL_ARG_SCRATCHPAD, scratchpad}};
    const auto& src_md = memory::desc(g.src, pass == Pass::kBackwardData ? dt[2] : dt[0], g.act_tag);
    const auto& dst_md = memory::desc(g.dst, pass == Pass::kForward ? dt[2] : pass == Pass::kBackwardData ? dt[0] : dt[1],
                                      g.act_tag);
    if (pass == Pass::kForward) {
      args.emplace(DNNL_ARG_SRC, memory(src_md, eng, a.untyped_data()));
      args.emplace(DNNL_ARG_WEIGHTS, weights);
      args.emplace(DNNL_ARG_DST, memory(dst_md, eng, out->untyped_data()));
    } else if (pass == Pass::kBackwardData) {
      args.emplace(DNNL_ARG_DIFF_DST, memory(dst_md, eng, a.untyped_data()));
      args.emplace(DNNL_ARG_WEIGHTS, weights);
      args.emplace(DNNL_ARG_DIFF_SRC, memory(src_md, eng, out->untyped_data()));
    } else {
      args.emplace(DNNL_ARG_SRC, memory(src_md, eng, a.untyped_data()));
      args.emplace(DNNL_ARG_DIFF_DST, memory(dst_md, eng, b.untyped_data()));
      args.emplace(DNNL_ARG_DIFF_WEIGHTS, weights);
    }
    entry->conv.execute(stream, args);
    if (entry->reorder_weights && pass == Pass::kBackwardWeights) entry->reorder.execute(stream, weights, user_weights);
    stream.wait();
  } catch (const dnnl::error& err) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN convolution: ") + err.what());
  } catch (const std::bad_alloc&) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted, "oneDNN convolution: out of memory for its scratchpad");
  }
  return ffi::Error::Success();
}

ffi::Error ConvFwd(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y) {
  return Run(Pass::kForward, x, w, y);
}
ffi::Error ConvBwdData(ffi::AnyBuffer g, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> dx) {
  return Run(Pass::kBackwardData, g, w, dx);
}
ffi::Error ConvBwdWeights(ffi::AnyBuffer x, ffi::AnyBuffer g, ffi::Result<ffi::AnyBuffer> dw) {
  return Run(Pass::kBackwardWeights, x, g, dw);
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LabelfreeOnednnConvFwd, ConvFwd,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(LabelfreeOnednnConvBwdData, ConvBwdData,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(LabelfreeOnednnConvBwdWeights, ConvBwdWeights,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>());

// The primitives created so far, one line each: "<key> <oneDNN implementation>". The returned
// pointer stays valid until the next call. For logs and benchmarks.
extern "C" const char* LabelfreeOnednnInfo() {
  static std::string copy;
  std::lock_guard<std::mutex> lock(cache_mutex);
  copy = *info_text;
  return copy.c_str();
}
