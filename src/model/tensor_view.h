// Operations on strided views (stquant/convert.h TensorView) with numpy's semantics: each gives
// the view of the same elements that the array operation would give, or an error when the
// operation would need a copy (a reshape that reorders elements of a non-contiguous view).
#pragma once

#include <cstdint>
#include <vector>

#include "stquant/convert.h"
#include "stquant/status.h"

namespace stquant::model {

// Axis i of the result is axis axes[i] of `view` (axes: a permutation of 0..rank-1).
TensorView TransposeView(const TensorView& view, const std::vector<int>& axes);

// Elements [start, start + length) along `axis` (0 <= start, start + length <= shape[axis]).
TensorView SliceView(const TensorView& view, int axis, int64_t start, int64_t length);

// The same elements in row-major order as `shape` (whose product equals the view's), without
// copying: Unsupported when the view's layout does not allow it (numpy's
// _attempt_nocopy_reshape).
Result<TensorView> ReshapeView(const TensorView& view, const std::vector<int64_t>& shape);

// A leading axis of length 1 (a stacked expert).
TensorView UnsqueezeView(const TensorView& view);

// True when the view's elements are the source elements [offset, offset + count) in row-major
// order (dimensions of length 1 ignored).
bool IsContiguous(const TensorView& view);

int64_t ElementCount(const std::vector<int64_t>& shape);

}  // namespace stquant::model
