/**
 * Exported programs (Python's `torch.export`): `.pt2` files loaded as modules that the rest of
 * the library takes wherever it takes a TorchScript model. PyTorch's C++ runtimes for them
 * either compile the program away (AOTInductor: no modules, no hooks, no training) or are not
 * in Debian's LibTorch (NativeRT); here the program's graph, a flat list of ATen calls that
 * keeps on every node the module it came from, runs in an interpreter of this library's own
 * (native/exported/), so every module's end is a place in a loop where hooks run and exits stop.
 */
import { binding, NativeScriptModule, NativeTensor } from '../binding';
import { readPt2 } from '../io/pt2-archive';
import { readArchive } from '../io/zip-integrity';
import { checkOptions, checkString } from '../util/check';
import { LoadedModel, LoadOptions, ScriptModule } from './jit';
import type { ProgramInfo, ProgramModule } from './program-info';
import { Tensor } from './tensor';

export type { ProgramInfo, ProgramModule } from './program-info';

/** The export schema's Layout and MemoryFormat numbers, as LibTorch's. */
const LAYOUTS: Record<number, number> = { 7: 0, 1: 1, 2: 2, 6: 3, 3: 4, 4: 5, 5: 6 };
const MEMORY_FORMATS: Record<number, number> = { 1: 0, 4: 1, 2: 2, 3: 3 };
/** The export schema's ScalarType numbers, as LibTorch's (c10::ScalarType). */
const SCALAR_TYPES: Record<number, number> = { 1: 0, 2: 1, 3: 2, 4: 3, 5: 4, 6: 5, 7: 6, 8: 7, 9: 8, 10: 9, 11: 10, 12: 11, 13: 15 };

/** How the addon is told an argument: see ParseArgument in native/exported/exported_program.cc. */
type NativeArgument = [string, unknown?];

/** One node as the addon builds it. */
interface NativeNode {
  name: string;
  target: string;
  module: number;
  args: Array<[string, NativeArgument]>;
  outputs: number[];
  listOutputs?: number[];
  frees: number[];
  hooks: number[];
  /** [module whose mode it follows, the bool argument's name, index of its batch counter input or -1]. */
  mode?: [number, string, number];
}

/** The description of a program that `binding.loadExportedProgram` builds a module from. */
interface NativeProgram {
  modules: Array<[string, string, number]>;
  tensors: Array<[number, string, string, NativeTensor]>;
  inputs: number[];
  inputNames: string[];
  nodes: NativeNode[];
  hooks: Array<[number, number, number[]]>;
  outputs: number[];
  mutations: Array<[number, number]>;
  registers: number;
  batched: number[];
  /** The mode the program was exported in (its batch norms' and dropouts' flag): every module starts in it. */
  training: boolean;
}

const MODE_ARGUMENTS: Record<string, string> = {
  'aten::batch_norm.default': 'training',
  'aten::dropout.default': 'train',
  'aten::feature_dropout.default': 'train',
  'aten::alpha_dropout.default': 'train',
  'aten::feature_alpha_dropout.default': 'train',
};

/** `torch.ops.aten.conv2d.default` -> `aten::conv2d.default`; Python operators stay as they are. */
function targetName(target: string): string {
  if (!target.startsWith('torch.ops.')) return target;
  const rest = target.slice('torch.ops.'.length);
  const dot = rest.indexOf('.');
  return `${rest.slice(0, dot)}::${rest.slice(dot + 1)}`;
}

/**
 * A module path as PyTorch writes it in `nn_module_stack`, as the fully qualified name of
 * `named_modules()`: mostly already one (`layer1.0.conv1`), but 2.6 writes the children of a
 * root Sequential as Python sources (`getattr(L['fn'], '0')`, `L['self'].layer1[0]`).
 */
export function modulePath(path: string): string {
  let name = path.replace(/L\['(?:fn|self)'\]|^L__self__/g, '');
  for (let previous = ''; previous !== name;) {
    previous = name;
    name = name.replace(/getattr\(([^()]*), '([^']*)'\)/, '$1.$2');
  }
  name = name.replace(/\[(\d+)\]/g, '.$1').replace(/\['([^']*)'\]/g, '.$1');
  return name.startsWith('.') ? name.slice(1) : name;
}

/** The module path of each entry of a node's `nn_module_stack` ('a,b,c;...': key, path, class). */
function moduleStack(meta: any): Array<[string, string]> {
  const text = meta?.nn_module_stack;
  if (typeof text !== 'string' || text === '') return [];
  const stack: Array<[string, string]> = [];
  for (const entry of text.split(';')) {
    const parts = entry.split(',');
    if (parts.length < 3 || parts[0].startsWith('_empty_nn_module_stack')) continue;
    stack.push([modulePath(parts.slice(1, -1).join(',')), parts[parts.length - 1]]);
  }
  return stack;
}

function symbolOf(size: any): string | undefined {
  return typeof size?.as_expr?.expr_str === 'string' ? size.as_expr.expr_str : undefined;
}

/**
 * A float of the program's JSON. PyTorch 2.14 writes the ones JSON cannot hold as strings
 * ("-Infinity", as a mask's fill value); 2.6 writes them bare, which the archive reader
 * takes (lib/io/pt2-archive.ts).
 */
function exportFloat(value: unknown): number {
  if (typeof value === 'number') return value;
  if (value === 'Infinity' || value === '-Infinity' || value === 'NaN') return Number(value);
  throw new TypeError(`a float argument is ${JSON.stringify(value)}`);
}

/** Turns the export schema's JSON into the addon's description, and what the library needs to know of it. */
class Translator {
  readonly registers = new Map<string, number>();
  readonly description: NativeProgram = {
    modules: [], tensors: [], inputs: [], inputNames: [], nodes: [], hooks: [], outputs: [], mutations: [], registers: 0, batched: [], training: false,
  };
  readonly moduleIndex = new Map<string, number>();
  readonly classes = new Map<string, string>();

  constructor(private readonly program: any, private readonly weights: Map<string, Tensor>, private readonly constants: Map<string, Tensor>,
    private readonly what: string) {}

  fail(message: string): never { throw new Error(`${this.what}: ${message}`); }

  register(name: string): number {
    let index = this.registers.get(name);
    if (index === undefined) {
      index = this.registers.size;
      this.registers.set(name, index);
    }
    return index;
  }

  use(name: string, where: string): number {
    const index = this.registers.get(name);
    if (index === undefined) this.fail(`${where} reads '${name}', which no earlier node or input defines`);
    return index;
  }

  addModule(name: string): number {
    const known = this.moduleIndex.get(name);
    if (known !== undefined) return known;
    const parent = name === '' ? -1 : this.addModule(name.includes('.') ? name.slice(0, name.lastIndexOf('.')) : '');
    const index = this.description.modules.length;
    this.description.modules.push([name, this.classes.get(name) ?? 'torch.nn.modules.module.Module', parent]);
    this.moduleIndex.set(name, index);
    return index;
  }

  argument(arg: any, where: string): NativeArgument {
    const [kind] = Object.keys(arg ?? {});
    const value = arg?.[kind];
    switch (kind) {
      case 'as_none': return ['none'];
      case 'as_tensor': return ['value', this.use(value.name, where)];
      case 'as_tensors': return ['values', (value as any[]).map((t) => this.use(t.name, where))];
      case 'as_optional_tensors':
        return ['optionalValues', (value as any[]).map((t) => (t.as_none !== undefined ? -1 : this.use(t.as_tensor.name, where)))];
      case 'as_int': return ['int', value];
      case 'as_float': return ['float', exportFloat(value)];
      case 'as_bool': return ['bool', value];
      case 'as_string': return ['string', value];
      case 'as_ints': return ['intList', value];
      case 'as_floats': return ['floatList', (value as unknown[]).map(exportFloat)];
      case 'as_bools': return ['boolList', value];
      case 'as_sym_int':
      case 'as_sym_float':
      case 'as_sym_bool':
        if (value.as_name !== undefined) return ['value', this.use(value.as_name, where)];
        if (value.as_int !== undefined) return ['int', value.as_int];
        if (value.as_float !== undefined) return ['float', exportFloat(value.as_float)];
        return ['bool', value.as_bool];
      case 'as_sym_ints':
        return ['ints', (value as any[]).map((item) => (item.as_name !== undefined ? [this.use(item.as_name, where), 0] : [-1, item.as_int]))];
      case 'as_scalar_type':
        if (SCALAR_TYPES[value] === undefined) this.fail(`${where}: the dtype code ${value} is not one this library reads`);
        return ['dtype', SCALAR_TYPES[value]];
      case 'as_layout':
        if (LAYOUTS[value] === undefined) this.fail(`${where}: the layout code ${value} is not one this library reads`);
        return ['layout', LAYOUTS[value]];
      case 'as_memory_format':
        if (MEMORY_FORMATS[value] === undefined) this.fail(`${where}: the memory format code ${value} is not one this library reads`);
        return ['memoryFormat', MEMORY_FORMATS[value]];
      case 'as_device': return ['device', value.index === null || value.index === undefined ? value.type : `${value.type}:${value.index}`];
      case 'as_graph': this.fail(`${where} holds a subgraph (torch.cond, torch.while_loop or another higher-order operator), which this interpreter does not run`);
      // eslint-disable-next-line no-fallthrough
      default: this.fail(`${where} has an argument of kind '${kind}', which this interpreter does not read`);
    }
  }

  outputName(output: any): string | undefined {
    if (output.as_tensor) return output.as_tensor.name;
    if (output.as_sym_int?.as_name) return output.as_sym_int.as_name;
    if (output.as_sym_float?.as_name) return output.as_sym_float.as_name;
    if (output.as_sym_bool?.as_name) return output.as_sym_bool.as_name;
    return undefined;
  }

  translate(): ProgramInfo {
    const graphModule = this.program.graph_module;
    const graph = graphModule?.graph;
    const signature = graphModule?.signature;
    if (!graph || !signature || !Array.isArray(graph.nodes)) this.fail('the exported program has no graph or signature');
    const major = this.program.schema_version?.major;
    if (major !== 8) this.fail(`the exported program uses export schema ${major}, and this library reads schema 8 (PyTorch 2.6 to 2.14)`);

    // Modules in the order of PyTorch's named_modules(), as module_call_graph lists them; their classes from the nodes.
    for (const node of graph.nodes) for (const [path, cls] of moduleStack(node.metadata)) this.classes.set(path, cls);
    this.addModule('');
    for (const entry of graphModule.module_call_graph ?? []) if (typeof entry?.fqn === 'string') this.addModule(entry.fqn);

    // Graph inputs, by the signature: module state or user inputs.
    const stateIndex = new Map<string, number>();
    const addState = (qualified: string, kind: string, tensor: Tensor | undefined, where: string, graphName: string): number => {
      if (!tensor) this.fail(`the program's ${where} '${qualified}' is not among the file's weights and constants`);
      // The weights must be what the graph was traced with: a damaged or swapped file is refused here, not mid-forward.
      const sizes = graph.tensor_values?.[graphName]?.sizes as any[] | undefined;
      if (Array.isArray(sizes) && sizes.every((size) => typeof size?.as_int === 'number')) {
        const expected = sizes.map((size) => size.as_int as number);
        if (expected.join() !== tensor.shape.join()) {
          this.fail(`the ${where} '${qualified}' has the shape [${tensor.shape}] in the file's weights, but the program was exported with [${expected}]`);
        }
      }
      const dot = qualified.lastIndexOf('.');
      const module = this.addModule(dot < 0 ? '' : qualified.slice(0, dot));
      const index = this.description.tensors.length;
      this.description.tensors.push([module, qualified.slice(dot + 1), kind, tensor.native]);
      stateIndex.set(qualified, index);
      return index;
    };
    const inputNames = new Map<string, number>();
    const batchSymbols: Array<string | undefined> = [];
    for (const spec of signature.input_specs ?? []) {
      const [kind] = Object.keys(spec);
      const body = spec[kind];
      let name: string;
      let source: number;
      if (kind === 'parameter') {
        name = body.arg.name;
        source = addState(body.parameter_name, 'parameter', this.weights.get(body.parameter_name), 'parameter', name);
      } else if (kind === 'buffer') {
        name = body.arg.name;
        source = addState(body.buffer_name, 'buffer', this.weights.get(body.buffer_name) ?? this.constants.get(body.buffer_name), 'buffer', name);
      } else if (kind === 'tensor_constant') {
        name = body.arg.name;
        source = addState(body.tensor_constant_name, 'constant', this.constants.get(body.tensor_constant_name), 'constant', name);
      } else if (kind === 'user_input') {
        if (!body.arg.as_tensor) this.fail(`the program takes a user input of kind '${Object.keys(body.arg)[0]}'; this library passes tensors only`);
        name = body.arg.as_tensor.name;
        source = -(this.description.inputNames.length + 1);
        this.description.inputNames.push(name);
        batchSymbols.push(symbolOf(graph.tensor_values?.[name]?.sizes?.[0]));
      } else {
        this.fail(`the program has an input of kind '${kind}' (custom objects and tokens are not supported)`);
      }
      inputNames.set(name, this.register(name));
      this.description.inputs.push(source);
    }
    if (this.description.inputNames.length === 0) this.fail('the program takes no tensor input');
    const batchSymbol = batchSymbols[0];

    // Nodes. Module of each node: the innermost entry of its nn_module_stack.
    const nodeModules: string[][] = [];
    // Batch norms' num_batches_tracked, by module, and the registers (= input indices) holding them.
    const counters = new Map<string, number>();
    const counterRegisters = new Set<number>();
    for (const [qualified, index] of stateIndex) {
      if (!qualified.endsWith('.num_batches_tracked')) continue;
      counters.set(qualified.slice(0, -'.num_batches_tracked'.length), index);
      counterRegisters.add(this.description.inputs.indexOf(index));
    }
    const stateRegisters = new Set([...inputNames.values()].filter((_, i) => this.description.inputs[i] >= 0));
    for (let n = 0; n < graph.nodes.length; n++) {
      const node = graph.nodes[n];
      const target = targetName(String(node.target));
      const name = typeof node.name === 'string' ? node.name : this.outputName(node.outputs?.[0] ?? {}) ?? `node ${n}`;
      const where = `node '${name}' (${target})`;
      const stack = moduleStack(node.metadata);
      const owner = stack.length > 0 ? stack[stack.length - 1][0] : '';
      const args: Array<[string, NativeArgument]> = (node.inputs ?? []).map((input: any) => [input.name, this.argument(input.arg, where)]);
      // Batch norm counts its batches itself in training (below); the program's own count
      // (exported in training mode) would run in eval too.
      if (target === 'aten::add_.Tensor' && args[0]?.[1][0] === 'value' && counterRegisters.has(args[0][1][1] as number)) continue;
      const outputs: number[] = [];
      let listOutputs: number[] | undefined;
      for (const output of node.outputs ?? []) {
        if (output.as_tensors) {
          listOutputs = (output.as_tensors as any[]).map((t) => this.register(t.name));
          outputs.push(-1);
        } else if (output.as_none !== undefined) {
          outputs.push(-1);
        } else {
          const outputName = this.outputName(output);
          if (outputName === undefined) this.fail(`${where} has an output of kind '${Object.keys(output)[0]}', which this interpreter does not hold`);
          outputs.push(this.register(outputName));
        }
      }
      const translated: NativeNode = { name, target, module: this.addModule(owner), args, outputs, frees: [], hooks: [] };
      if (listOutputs) translated.listOutputs = listOutputs;
      const modeArgument = MODE_ARGUMENTS[target];
      const followsMode = modeArgument !== undefined &&
        (target !== 'aten::batch_norm.default' || args.some(([argName, value]) => argName === 'running_mean' && value[0] === 'value'));
      if (followsMode) {
        const counter = target === 'aten::batch_norm.default' ? counters.get(owner) : undefined;
        translated.mode = [translated.module, modeArgument, counter === undefined ? -1 : this.description.inputs.indexOf(counter)];
        const exportedIn = args.find(([argName]) => argName === modeArgument)?.[1];
        if (exportedIn?.[0] === 'bool' && exportedIn[1] === true) this.description.training = true;
      }
      this.description.nodes.push(translated);
      nodeModules.push(stack.map(([path]) => path));
    }
    const nodes = this.description.nodes;

    // Outputs and buffer mutations.
    for (const spec of signature.output_specs ?? []) {
      const [kind] = Object.keys(spec);
      const body = spec[kind];
      if (kind === 'user_output') {
        const name = this.outputName(body.arg);
        if (name === undefined || !body.arg.as_tensor) this.fail('the program returns a value that is not a tensor; this library returns tensors only');
        this.description.outputs.push(this.use(name, 'the program output'));
      } else if (kind === 'buffer_mutation') {
        const state = stateIndex.get(body.buffer_name);
        if (state === undefined) this.fail(`the program writes the buffer '${body.buffer_name}', which it does not take`);
        this.description.mutations.push([this.use(body.arg.name, 'a buffer mutation'), this.description.inputs.indexOf(state)]);
      } else {
        this.fail(`the program has an output of kind '${kind}' (input mutations, gradients and tokens are not supported)`);
      }
    }
    this.description.registers = this.registers.size;

    // Who reads each register (graph outputs and mutations live to the end).
    const reads = (node: NativeNode): number[] => {
      const used: number[] = [];
      for (const [, value] of node.args) {
        if (value[0] === 'value') used.push(value[1] as number);
        else if (value[0] === 'values' || value[0] === 'optionalValues') used.push(...(value[1] as number[]).filter((r) => r >= 0));
        else if (value[0] === 'ints') used.push(...(value[1] as Array<[number, number]>).map(([r]) => r).filter((r) => r >= 0));
      }
      return used;
    };
    const written = (node: NativeNode): number[] => [...node.outputs, ...(node.listOutputs ?? [])].filter((r) => r >= 0);
    const end = nodes.length;
    const registerCount = this.registers.size;
    const names: string[] = [];
    for (const [name, index] of this.registers) names[index] = name;
    const readers: number[][] = nodes.map(reads);
    const users: number[][] = Array.from({ length: registerCount }, () => []);
    readers.forEach((used, i) => { for (const r of used) users[r].push(i); });
    const lastUse = users.map((list) => (list.length > 0 ? list[list.length - 1] : -1));
    const definedAt = new Array<number>(registerCount).fill(-1);
    nodes.forEach((node, i) => { for (const r of written(node)) definedAt[r] = i; });
    const outputSet = new Set(this.description.outputs);
    for (const r of this.description.outputs) lastUse[r] = end;
    for (const [r] of this.description.mutations) lastUse[r] = end;

    // Which registers hold the batch, so that they shrink when samples leave: a tensor whose
    // first size is the batch symbol and no other size mentions it, or a size equal to it.
    const metaOf = (r: number): any => graph.tensor_values?.[names[r]] ?? graph.sym_int_values?.[names[r]];
    const mentions = (size: any) => batchSymbol !== undefined && (symbolOf(size) ?? '').includes(batchSymbol);
    const batchKind = new Array<'free' | 'batched' | 'tangled'>(registerCount).fill('free');
    for (let r = 0; r < registerCount; r++) {
      const meta = metaOf(r);
      if (batchSymbol === undefined || !meta) continue;
      if (Array.isArray(meta.sizes)) {
        const sizes = meta.sizes as any[];
        if (sizes.length > 0 && symbolOf(sizes[0]) === batchSymbol && !sizes.slice(1).some(mentions)) batchKind[r] = 'batched';
        else if (sizes.some(mentions)) batchKind[r] = 'tangled';
      } else if (symbolOf(meta) === batchSymbol) {
        batchKind[r] = 'batched';
      } else if (mentions(meta)) {
        batchKind[r] = 'tangled';
      }
    }
    this.description.batched = batchKind.flatMap((kind, r) => (kind === 'batched' ? [r] : []));

    // Module calls: maximal runs of consecutive nodes inside a module (a module reused, as
    // torchvision's ReLU, makes several runs). A hook runs at the end of each.
    const info: ProgramInfo = { modules: new Map() };
    for (const [name, index] of this.moduleIndex) {
      if (name === '') continue;
      const runs: Array<[number, number]> = [];
      for (let i = 0; i < nodes.length; i++) {
        if (!nodeModules[i].includes(name)) continue;
        if (runs.length > 0 && runs[runs.length - 1][1] === i - 1) runs[runs.length - 1][1] = i;
        else runs.push([i, i]);
      }
      const module: ProgramModule = { name, className: this.description.modules[index][1], calls: runs.length };
      info.modules.set(name, module);
      if (runs.length === 0) {
        module.hookRefusal = `module '${name}' runs no node of the exported program (it only holds parameters, or its calls were traced away)`;
        continue;
      }
      const points: Array<[number, number, number[]]> = [];
      for (const [first, last] of runs) {
        const escaping = new Set<number>();
        for (let i = first; i <= last; i++) {
          for (const r of written(nodes[i])) {
            if (outputSet.has(r) || users[r].some((j) => j < first || j > last)) escaping.add(r);
          }
        }
        const lastOutputs = written(nodes[last]);
        if (escaping.size !== 1 || lastOutputs.length !== 1 || !escaping.has(lastOutputs[0]) || nodes[last].listOutputs) {
          module.hookRefusal ??= escaping.size === 0
            ? `nothing that module '${name}' computes is used after it`
            : `module '${name}' passes on ${escaping.size === 1 ? 'a value that its last node does not return' : `${escaping.size} values`} ` +
              `(nodes '${nodes[first].name}' to '${nodes[last].name}'), so its output is not one tensor that a hook could see`;
          continue;
        }
        const inputs = new Set<number>();
        for (let i = first; i <= last; i++) {
          for (const r of readers[i]) if (definedAt[r] < first && !stateRegisters.has(r) && Array.isArray(metaOf(r)?.sizes)) inputs.add(r);
        }
        points.push([last, lastOutputs[0], [...inputs]]);
        // Samples can leave here when every value alive after this point that depends on the
        // batch has it as its first dimension (or is the batch size itself).
        const tangled: string[] = [];
        for (let r = 0; r < registerCount; r++) {
          if (batchKind[r] === 'tangled' && definedAt[r] <= last && lastUse[r] > last) tangled.push(names[r]);
        }
        if (tangled.length > 0) {
          module.boundaryRefusal ??= `after module '${name}', ${tangled.join(', ')} depend${tangled.length === 1 ? 's' : ''} on the batch other than by the first dimension`;
        }
      }
      // A hook runs on every call of its module or on none.
      if (module.hookRefusal !== undefined) continue;
      for (const [last, output, inputs] of points) {
        nodes[last].hooks.push(this.description.hooks.length);
        this.description.hooks.push([index, output, inputs]);
        for (const r of [output, ...inputs]) lastUse[r] = Math.max(lastUse[r], last);
      }
      if (batchSymbol === undefined) {
        module.boundaryRefusal ??= 'the program was exported with a fixed batch size (no torch.export.Dim on the first dimension of its input)';
      }
    }

    // A register read for the last time by a node (or the hooks after it) is let go after it.
    for (let r = 0; r < registerCount; r++) {
      const last = lastUse[r] >= 0 ? lastUse[r] : definedAt[r];
      if (last >= 0 && last < end) nodes[last].frees.push(r);
    }
    return info;
  }
}

/** Options of `torch.export.load`. */
export type ExportLoadOptions = LoadOptions;

/** Whether this LibTorch can load exported programs: 2.6 or later (the export schema's C++ types). */
export function exportedProgramsSupported(): boolean {
  const [major, minor] = binding.libtorchVersion.split('.').map(Number);
  return major > 2 || (major === 2 && minor >= 6);
}

/**
 * Loads a `.pt2` file written by Python's `torch.export.save` (PyTorch 2.6 or later) as a
 * module: its submodules by name, parameters and buffers, forward hooks, train/eval, and
 * early exits, as a TorchScript model loaded with `jit.load`. Needs LibTorch 2.6 or later.
 */
export function load(path: string, options: ExportLoadOptions = {}): ScriptModule {
  checkString(path, 'torch.export.load: path');
  checkOptions(options, ['device'], 'torch.export.load: options');
  if (options.device !== undefined) checkString(options.device, 'torch.export.load: options.device');
  const what = `cannot load exported program '${path}'`;
  if (!exportedProgramsSupported()) {
    throw new Error(`${what}: exported programs (torch.export) need LibTorch 2.6 or later, and this is LibTorch ${binding.libtorchVersion}; ` +
      'load a TorchScript model with jit.load instead');
  }
  const { entries } = readArchive(path, what);
  const contents = readPt2(entries, what);
  const translator = new Translator(contents.program, contents.weights, contents.constants, what);
  let info: ProgramInfo;
  try {
    info = translator.translate();
  } catch (error) {
    const message = (error as Error).message;
    if (message.startsWith(what)) throw error;
    // A field missing or of the wrong kind where the export schema has one.
    throw new Error(`${what}: the program's JSON does not follow the export schema (${message})`);
  }
  let native: NativeScriptModule;
  try {
    native = binding.loadExportedProgram(translator.description, path);
  } catch (error) {
    const message = (error as Error).message;
    throw new Error(message.startsWith(what) ? message : `${what}: ${message}`);
  }
  const module = new ScriptModule(native, new LoadedModel(path, info), '');
  if (options.device !== undefined) module.to(options.device);
  return module;
}
