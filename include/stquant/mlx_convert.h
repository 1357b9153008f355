// mlx_lm.convert's interface (mlx-lm 0.32.2, mlx_lm/convert.py): the same argument names and
// defaults, mapped onto a ConvertOptions for Convert. Used by `stquant mlx-convert` and the Python
// package's stquant.mlx_convert, so that a command line or call written for mlx_lm.convert works
// unchanged, offline.
#pragma once

#include <optional>
#include <string>

#include "stquant/convert.h"
#include "stquant/status.h"

namespace stquant {

struct MlxConvertArgs {
  std::string hf_path;                // a model directory or a repo id in the Hugging Face cache
  std::string mlx_path = "mlx_model";  // must not exist
  bool quantize = false;
  std::optional<int> q_group_size;  // none or 0: the mode's default (affine 64, mxfp4/mxfp8 32, nvfp4 16)
  std::optional<int> q_bits;        // none or 0: the mode's default (8 for mxfp8, else 4)
  std::string q_mode = "affine";    // affine, mxfp4, nvfp4, mxfp8
  std::string dtype;                // "", float16, bfloat16, float32
  std::string upload_repo;          // needs the network: an error
  std::string revision;             // of a repo id
  bool dequantize = false;
  std::string quant_predicate;  // "", mixed_2_6, mixed_3_4, mixed_3_6, mixed_4_6
  bool trust_remote_code = false;  // accepted; stquant runs no model code
};

// The conversion mlx_lm.convert would do. InvalidArgument with mlx-lm's message where mlx-lm
// refuses ("Choose either quantize or dequantize, not both.", "Cannot save to the path ...",
// "Quant predicates only support 'affine' quantization."), and for --upload-repo, which needs the
// network.
Result<ConvertOptions> MlxConvertOptions(const MlxConvertArgs& args);

}  // namespace stquant
