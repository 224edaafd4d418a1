/** What loaded TorchScript modules and nn branch modules share: their tensors by name. */
import { NativeTensor } from '../binding';
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

  /** Forgets the gradients of every parameter (PyTorch's `zero_grad()`). */
  zeroGrad(): void {
    for (const param of this.parameters()) param.grad = null;
  }
}
