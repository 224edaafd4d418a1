// Placing a plain tensor's elements in a oneDNN layout without oneDNN's reorder, for the
// oneDNN whose reorder gets some layouts wrong (torch_compat.h: TEE_ONEDNN_REORDER_WRONG).
#pragma once

#include <oneapi/dnnl/dnnl.hpp>

namespace tee::onednn {

// Writes the row-major float tensor `plain` (of `md`'s dims) into `to`, laid out as `md`: a
// blocked layout, each element placed from the layout's outer strides and inner blocks; the
// padding (dims rounded up to whole blocks) is zeroed. `to` holds md.get_size() bytes.
void CopyIntoLayout(const float* plain, const dnnl::memory::desc& md, float* to);

// Whether `md` blocks more than one dimension ("ABcd16b16a", "AB16b64a"): oneDNN 3.7's jit
// reorder misplaces elements going to or from some such layouts.
bool BlocksTwoDims(const dnnl::memory::desc& md);

}  // namespace tee::onednn
