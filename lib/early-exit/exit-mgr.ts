/**
 * Distiller's `EarlyExitMgr` for TorchScript models loaded in Node: attaches exit
 * branches to modules named by their fully qualified names and collects their outputs.
 */
import { ScriptModule, RemovableHandle, HookModule } from '../torch/jit';
import { Tensor } from '../torch/tensor';

/** An exit branch: an nn module (usually an `nn.Sequential`) or a loaded TorchScript module. */
export type ExitBranch = HookModule;

/** Ordered `[qualifiedModuleName, branch]` pairs, as Distiller's `exits_def`. */
export type ExitsDef = ReadonlyArray<readonly [string, ExitBranch]>;

interface AttachedExit {
  point: string;
  branch: ExitBranch;
  handle: RemovableHandle;
}

export class EarlyExitMgr {
  /** The exit points in the order they were attached (Distiller's `exit_points`). */
  readonly exitPoints: string[] = [];
  private readonly attached = new Map<ScriptModule['model'], AttachedExit[]>();

  /**
   * Attaches each branch after the module of that name: every forward of the model then
   * runs the branch on that module's output and keeps the result as the exit's output.
   * An unknown name fails (naming the closest names) before anything is attached.
   */
  attachExits(model: ScriptModule, exitsDef: ExitsDef): void {
    const modules = exitsDef.map(([point]) => model.getModule(point));
    const exits = this.attached.get(model.model) ?? [];
    exitsDef.forEach(([point, branch], index) => {
      exits.push({ point, branch, handle: modules[index].registerForwardHook(branch) });
      this.exitPoints.push(point);
    });
    this.attached.set(model.model, exits);
  }

  /** Forgets the exits' cached outputs; call before each forward (Distiller's `delete_exits_outputs`). */
  deleteExitsOutputs(model: ScriptModule): void {
    for (const exit of this.exitsOf(model)) model.deleteHookOutput(exit.handle.id);
  }

  /**
   * The cached output of every exit, in attachment order (Distiller's `get_exits_outputs`).
   * Fails when an exit has no output, as Distiller asserts: the forward did not reach it.
   */
  getExitsOutputs(model: ScriptModule): Tensor[] {
    return this.exitsOf(model).map((exit) => {
      const output = model.hookOutput(exit.handle.id);
      if (output === undefined) {
        throw new Error(`exit '${exit.point}' has no output: the last forward did not reach it ` +
          '(or deleteExitsOutputs was called after it)');
      }
      return output as Tensor;
    });
  }

  /** @internal The exits attached to `model`, in attachment order. */
  exitsOf(model: ScriptModule): readonly AttachedExit[] {
    const exits = this.attached.get(model.model);
    if (!exits) throw new Error('no exits are attached to this model: call attachExits(model, exitsDef) first');
    return exits;
  }

  /** Removes the exits from the model (beyond Distiller, which has no way back). */
  detachExits(model: ScriptModule): void {
    const exits = this.exitsOf(model);
    for (const exit of exits) {
      exit.handle.remove();
      const index = this.exitPoints.indexOf(exit.point);
      if (index >= 0) this.exitPoints.splice(index, 1);
    }
    this.attached.delete(model.model);
  }
}
