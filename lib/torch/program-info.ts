/** What the library knows of a loaded exported program (torch.export) beyond its module objects: lib/torch/export.ts makes it, jit.ts's ScriptModule reads it. */

/** What the program says of one module: where hooks run on it, and whether samples can leave there. */
export interface ProgramModule {
  name: string;
  className: string;
  /** The calls of the module in one forward (runs of its nodes), each ending at a node. */
  calls: number;
  /** Why a forward hook cannot run on it, when it cannot. */
  hookRefusal?: string;
  /** Why samples cannot leave the batch after it, when they cannot. */
  boundaryRefusal?: string;
}

/** What the library knows of a loaded exported program beyond its module objects. */
export interface ProgramInfo {
  /** Every module but the root, by qualified name. */
  modules: Map<string, ProgramModule>;
}
