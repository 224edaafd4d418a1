/** What loaded TorchScript modules and nn branch modules share: their tensors by name. */
import { binding, NativeTensor } from '../binding';
import { Tensor, namedTensors } from './tensor';

/** The addon's side of a module that owns parameters and buffers. */
interface NativeTensorOwner {
  namedParameters(recurse: boolean): Array<[string, NativeTensor]>;
  namedBuffers(recurse: boolean): Array<[string, NativeTensor]>;
}

export abstract class ParameterOwner {
  /** @internal */
  abstract readonly native: NativeTensorOwner;

  /** Parameters by qualified name, as PyTorch's `named_parameters()`; they alias the module's tensors. */
  namedParameters(recurse = true): Array<[string, Tensor]> {
    return namedTensors(this.native.namedParameters(recurse));
  }

  parameters(recurse = true): Tensor[] {
    return this.namedParameters(recurse).map(([, tensor]) => tensor);
  }

  /** Buffers (batch-norm statistics) by qualified name, as PyTorch's `named_buffers()`. */
  namedBuffers(recurse = true): Array<[string, Tensor]> {
    return namedTensors(this.native.namedBuffers(recurse));
  }

  buffers(recurse = true): Tensor[] {
    return this.namedBuffers(recurse).map(([, tensor]) => tensor);
  }

  /** Parameters and buffers by name, aliasing the module's tensors (PyTorch's `state_dict()`). */
  abstract stateDict(): Record<string, Tensor>;

  /** @internal How load_state_dict's errors name this module. */
  abstract get stateDictOwner(): string;

  /**
   * Copies tensors into the module's parameters and buffers by name. Shapes must match;
   * with `strict`, the names must match exactly, as PyTorch's `load_state_dict`.
   */
  loadStateDict(stateDict: Record<string, Tensor>, strict = true): void {
    const own = this.stateDict();
    const missing = Object.keys(own).filter((name) => !(name in stateDict));
    const unexpected = Object.keys(stateDict).filter((name) => !(name in own));
    if (strict && (missing.length > 0 || unexpected.length > 0)) {
      throw new Error(`error(s) in loading state dict for ${this.stateDictOwner}: ` +
        (missing.length ? `missing key(s): ${missing.join(', ')}. ` : '') +
        (unexpected.length ? `unexpected key(s): ${unexpected.join(', ')}.` : ''));
    }
    const mismatched = Object.keys(own).filter((name) => name in stateDict)
      .filter((name) => stateDict[name].shape.join() !== own[name].shape.join())
      .map((name) => `size mismatch for ${name}: copying a param with shape [${stateDict[name].shape}] ` +
        `from checkpoint, the shape in current model is [${own[name].shape}]`);
    if (mismatched.length > 0) throw new Error(`error(s) in loading state dict for ${this.stateDictOwner}: ${mismatched.join('; ')}`);
    const wasEnabled = binding.isGradEnabled();
    binding.setGradEnabled(false);
    try {
      for (const [name, target] of Object.entries(own)) if (name in stateDict) target.copy_(stateDict[name]);
    } finally {
      binding.setGradEnabled(wasEnabled);
    }
  }

  /** Forgets the gradients of every parameter (PyTorch's `zero_grad()`). */
  zeroGrad(): void {
    for (const param of this.parameters()) param.grad = null;
  }
}
