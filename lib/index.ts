/**
 * torch-early-exit: early-exit networks for Node.js over LibTorch.
 *
 * ```ts
 * import { jit, nn, EarlyExitModel } from 'torch-early-exit';
 * const model = new EarlyExitModel(jit.load('resnet20.pt'), [
 *   ['layer1.2.relu2', nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, 10))],
 * ]);
 * const [exit0, final] = model.forward(images);
 * ```
 */
import * as torch from './torch';
import * as nn from './nn';
import * as jit from './jit';

export { torch, nn, jit };
export { Tensor } from './tensor';
export type { NestedArray, TensorOptions, TypedArray } from './tensor';
export type { DType, Device } from './dtype';
export { ScriptModule } from './jit';
export type { ForwardHook, RemovableHandle, LoadOptions } from './jit';
export { EarlyExitMgr } from './early-exit/exit-mgr';
export type { ExitBranch, ExitsDef } from './early-exit/exit-mgr';
export { EarlyExitModel } from './early-exit/model';
