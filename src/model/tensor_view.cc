#include "model/tensor_view.h"

namespace stquant {

TensorView ContiguousView(const std::vector<int64_t>& shape) {
  TensorView view;
  view.shape = shape;
  view.strides.resize(shape.size());
  int64_t stride = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    view.strides[i] = stride;
    stride *= std::max<int64_t>(shape[i], 1);
  }
  return view;
}

namespace model {

int64_t ElementCount(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

TensorView TransposeView(const TensorView& view, const std::vector<int>& axes) {
  TensorView out;
  out.offset = view.offset;
  for (int a : axes) {
    out.shape.push_back(view.shape[a]);
    out.strides.push_back(view.strides[a]);
  }
  return out;
}

TensorView SliceView(const TensorView& view, int axis, int64_t start, int64_t length) {
  TensorView out = view;
  out.offset += start * view.strides[axis];
  out.shape[axis] = length;
  return out;
}

TensorView UnsqueezeView(const TensorView& view) {
  TensorView out = view;
  out.shape.insert(out.shape.begin(), 1);
  out.strides.insert(out.strides.begin(), ElementCount(view.shape));
  return out;
}

Result<TensorView> ReshapeView(const TensorView& view, const std::vector<int64_t>& shape) {
  const int64_t elements = ElementCount(view.shape);
  if (ElementCount(shape) != elements) {
    return Status::InvalidArgument("reshape: the new shape has a different number of elements");
  }
  TensorView out = ContiguousView(shape);
  out.offset = view.offset;
  if (elements <= 1) return out;  // any strides describe 0 or 1 element
  // numpy's _attempt_nocopy_reshape: group the old and new axes into runs of equal products; each
  // run of old axes must be contiguous within itself, and the new axes of the run take strides
  // from the run's innermost stride.
  std::vector<int64_t> old_dims, old_strides;
  for (size_t i = 0; i < view.shape.size(); ++i) {
    if (view.shape[i] != 1) {
      old_dims.push_back(view.shape[i]);
      old_strides.push_back(view.strides[i]);
    }
  }
  const size_t old_n = old_dims.size(), new_n = shape.size();
  size_t oi = 0, oj = 1, ni = 0, nj = 1;
  while (ni < new_n && oi < old_n) {
    int64_t np = shape[ni], op = old_dims[oi];
    while (np != op) {
      if (np < op) {
        np *= shape[nj++];
      } else {
        op *= old_dims[oj++];
      }
    }
    for (size_t ok = oi; ok + 1 < oj; ++ok) {
      if (old_strides[ok] != old_dims[ok + 1] * old_strides[ok + 1]) {
        return Status::Unsupported("reshape: the view's elements are not in an order this shape can describe");
      }
    }
    out.strides[nj - 1] = old_strides[oj - 1];
    for (size_t nk = nj - 1; nk > ni; --nk) out.strides[nk - 1] = out.strides[nk] * shape[nk];
    ni = nj++;
    oi = oj++;
  }
  const int64_t last = ni >= 1 ? out.strides[ni - 1] : 1;
  for (size_t nk = ni; nk < new_n; ++nk) out.strides[nk] = last;
  return out;
}

bool IsContiguous(const TensorView& view) {
  int64_t expected = 1;
  for (size_t i = view.shape.size(); i-- > 0;) {
    if (view.shape[i] == 1) continue;
    if (view.shape[i] == 0) return true;
    if (view.strides[i] != expected) return false;
    expected *= view.shape[i];
  }
  return true;
}

}  // namespace model
}  // namespace stquant
