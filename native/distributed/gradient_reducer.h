// DistributedDataParallel's gradient averaging: hooks on the parameters copy each gradient,
// as backward produces it, into a flat bucket (about 25 MB, the first 1 MB, in reverse
// parameter order, as PyTorch assigns them); a bucket whose gradients are all in is
// all-reduced at once on c10d's threads while backward goes on, and backward's last step
// waits for every bucket and writes the averages into the gradients. Hooks act only after
// prepare (DistributedDataParallel's forward), as PyTorch's Reducer does.
#pragma once

#include <napi.h>

namespace tee {

// createGradientReducer(group, params, bucketCapBytes, firstBucketBytes) → handle
Napi::Value CreateGradientReducer(const Napi::CallbackInfo& info);
// reducerPrepare(handle): the next backward's gradients are averaged.
Napi::Value ReducerPrepare(const Napi::CallbackInfo& info);
// reducerBuckets(handle) → number[][]: each bucket's parameter positions, in launch order.
Napi::Value ReducerBuckets(const Napi::CallbackInfo& info);
// reducerRemove(handle): takes the hooks off the parameters.
Napi::Value ReducerRemove(const Napi::CallbackInfo& info);

}  // namespace tee
