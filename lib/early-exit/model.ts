/**
 * The seed's `ResNetCifarEarlyExit` as a reusable class: a loaded TorchScript backbone
 * with exit branches, whose forward returns `[...exitOutputs, finalOutput]`.
 */
import { Device } from '../dtype';
import { ScriptModule, CallWithHooks } from '../jit';
import { Module } from '../nn';
import { Tensor } from '../tensor';
import { EarlyExitMgr, ExitBranch, ExitsDef } from './exit-mgr';

export class EarlyExitModel {
  readonly backbone: ScriptModule;
  readonly eeMgr = new EarlyExitMgr();
  readonly exitsDef: ExitsDef;

  constructor(backbone: ScriptModule, exitsDef: ExitsDef) {
    this.backbone = backbone;
    this.exitsDef = exitsDef;
    this.eeMgr.attachExits(backbone, exitsDef);
  }

  /** The exit points, in order. */
  get exitPoints(): string[] { return [...this.eeMgr.exitPoints]; }

  /** The branches, in order. */
  get branches(): ExitBranch[] { return this.exitsDef.map(([, branch]) => branch); }

  /** Clears the exits' outputs, runs the backbone, returns `[...exitOutputs, finalOutput]`. */
  forward(input: Tensor): Tensor[] {
    this.eeMgr.deleteExitsOutputs(this.backbone);
    const output = this.backbone.forward(input) as Tensor;
    return [...this.eeMgr.getExitsOutputs(this.backbone), output];
  }

  /**
   * The same on a worker thread. Each call returns its own exit outputs, so several calls
   * can be in flight on one model.
   */
  async forwardAsync(input: Tensor): Promise<Tensor[]> {
    return this.collect(await this.backbone.callWithHooksAsync('forward', [input]));
  }

  private collect(call: CallWithHooks): Tensor[] {
    const exits = this.eeMgr.exitsOf(this.backbone).map((exit) => {
      const output = call.hookOutputs.get(exit.handle.id);
      if (output === undefined) throw new Error(`exit '${exit.point}' has no output: the forward did not reach it`);
      return output as Tensor;
    });
    return [...exits, call.output as Tensor];
  }

  /** Backbone parameters then each branch's, as `[name, tensor]` (branches as `exits.i.name`). */
  namedParameters(): Array<[string, Tensor]> {
    const named = this.backbone.namedParameters();
    this.branches.forEach((branch, index) => {
      const params = (branch as Module | ScriptModule).namedParameters();
      for (const [name, tensor] of params) named.push([`exits.${index}.${name}`, tensor]);
    });
    return named;
  }

  /** Every trainable tensor: the backbone's and the branches'. */
  parameters(): Tensor[] {
    return this.namedParameters().map(([, tensor]) => tensor);
  }

  /**
   * Stops (or restarts) gradients to the backbone's parameters, to train the exits alone
   * on a frozen backbone. The backbone's batch-norm statistics still move in train mode:
   * call `backbone.eval()` after `train()` to keep them too.
   */
  freezeBackbone(freeze = true): this {
    for (const param of this.backbone.parameters()) param.requiresGrad = !freeze;
    return this;
  }

  train(mode = true): this {
    this.backbone.train(mode);
    for (const branch of this.branches) (branch as Module | ScriptModule).train(mode);
    return this;
  }

  eval(): this { return this.train(false); }

  get training(): boolean { return this.backbone.training; }

  to(device: Device | string): this {
    this.backbone.to(device);
    for (const branch of this.branches) (branch as Module | ScriptModule).to(device);
    return this;
  }
}
