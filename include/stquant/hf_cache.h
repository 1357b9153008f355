// Hugging Face repo ids, offline: a model named "org/name" is found where huggingface_hub's cache
// keeps it (<cache>/models--org--name/refs/<revision> -> snapshots/<commit>/, files symlinked into
// blobs/). stquant never downloads; a model that is not in the cache is an error that says how to
// fetch it.
#pragma once

#include <string>
#include <string_view>

#include "stquant/status.h"

namespace stquant {

// huggingface_hub's cache directory (constants.HF_HUB_CACHE): $HF_HUB_CACHE, else the legacy
// $HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else
// ~/.cache/huggingface/hub. A leading "~/" is expanded, as huggingface_hub does.
std::string HfHubCacheDir();

// huggingface_hub's validate_repo_id: "name" or "namespace/name", each 1-96 of [A-Za-z0-9_.-],
// not starting or ending with '-' or '.', without "--" or "..", not ending in ".git".
bool IsHfRepoId(std::string_view text);

// The snapshot directory of `repo_id` at `revision` ("" = "main") in the cache `cache_dir`, as
// huggingface_hub's snapshot_download(local_files_only=True) finds it: a 40-hex revision is a
// commit, anything else names refs/<revision> whose content is the commit; the result is
// <cache_dir>/models--<org>--<name>/snapshots/<commit>. InvalidArgument, saying how to fetch the
// model (`hf download ...`), when the repository, the revision or the snapshot is not there.
Result<std::string> ResolveHfSnapshot(const std::string& cache_dir, const std::string& repo_id,
                                      const std::string& revision);

// A model source as a user names it, for `convert`, `mlx-convert` and the Python package: an
// existing path is used as it is (a `revision` with it is an error); otherwise a repo id is
// resolved in HfHubCacheDir(). InvalidArgument for a path that does not exist and is no repo id.
Result<std::string> ResolveModelSource(const std::string& source, const std::string& revision = "");

}  // namespace stquant
