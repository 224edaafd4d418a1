#include "onednn/layout_copy.h"

#include <cstring>
#include <set>
#include <stdexcept>
#include <vector>

namespace tee::onednn {

using dnnl::memory;

void CopyIntoLayout(const float* plain, const memory::desc& md, float* to) {
  if (md.get_format_kind() != memory::format_kind::blocked) throw std::logic_error("CopyIntoLayout: not a blocked layout");
  memory::dims dims = md.get_dims(), strides = md.get_strides(), blocks = md.get_inner_blks(), indices = md.get_inner_idxs();
  const size_t rank = dims.size(), nblocks = blocks.size();
  // Per dimension, the elements one of its outer steps spans: the product of its inner blocks.
  std::vector<int64_t> span(rank, 1);
  for (size_t k = 0; k < nblocks; ++k) span[indices[k]] *= blocks[k];
  std::memset(to, 0, md.get_size());
  int64_t count = 1;
  for (int64_t d : dims) count *= d;
  std::vector<int64_t> index(rank, 0), rest(rank);
  for (int64_t element = 0; element < count; ++element) {
    int64_t offset = 0;
    for (size_t d = 0; d < rank; ++d) {
      offset += index[d] / span[d] * strides[d];
      rest[d] = index[d] % span[d];
    }
    // Within the inner blocks, the last is innermost: digits from the last block out.
    int64_t inner = 0, scale = 1;
    for (size_t k = nblocks; k-- > 0;) {
      inner += rest[indices[k]] % blocks[k] * scale;
      rest[indices[k]] /= blocks[k];
      scale *= blocks[k];
    }
    to[offset + inner] = plain[element];
    for (size_t d = rank; d-- > 0;) {
      if (++index[d] < dims[d]) break;
      index[d] = 0;
    }
  }
}

bool BlocksTwoDims(const memory::desc& md) {
  if (md.get_format_kind() != memory::format_kind::blocked) return false;
  memory::dims indices = md.get_inner_idxs();
  return std::set<int64_t>(indices.begin(), indices.end()).size() > 1;
}

}  // namespace tee::onednn
