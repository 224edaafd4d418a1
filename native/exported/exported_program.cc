#include "exported/exported_program.h"

#include <ATen/core/builtin_function.h>
#include <torch/script.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "exported/inference_graph.h"
#include "exported/interpreter.h"
#include "node/errors.h"
#include "tensor/dtypes.h"
#include "tensor/tensor.h"
#include "torchscript/method_call.h"
#include "torchscript/script_module.h"

namespace tee {
namespace {

Napi::Array ArrayAt(const Napi::Object& object, const char* key) {
  Napi::Value value = object.Get(key);
  if (!value.IsArray()) throw std::invalid_argument(std::string("the program description has no array '") + key + "'");
  return value.As<Napi::Array>();
}

int64_t Int(const Napi::Value& value) { return value.As<Napi::Number>().Int64Value(); }

std::vector<int64_t> Ints(const Napi::Value& value) {
  Napi::Array array = value.As<Napi::Array>();
  std::vector<int64_t> ints(array.Length());
  for (uint32_t i = 0; i < array.Length(); ++i) ints[i] = Int(array.Get(i));
  return ints;
}

// [tag, ...]: see NativeArgument in lib/torch/export.ts.
ProgramArgument ParseArgument(const Napi::Value& value) {
  Napi::Array spec = value.As<Napi::Array>();
  std::string tag = spec.Get(0u).ToString();
  ProgramArgument argument;
  Napi::Value payload = spec.Get(1u);
  if (tag == "value") {
    argument.kind = ProgramArgument::Kind::kValue;
    argument.value = Int(payload);
  } else if (tag == "values" || tag == "optionalValues") {
    argument.kind = tag == "values" ? ProgramArgument::Kind::kValues : ProgramArgument::Kind::kOptionalValues;
    argument.values = Ints(payload);
  } else if (tag == "ints") {
    // [register or -1, literal] pairs.
    argument.kind = ProgramArgument::Kind::kInts;
    Napi::Array items = payload.As<Napi::Array>();
    for (uint32_t i = 0; i < items.Length(); ++i) {
      Napi::Array item = items.Get(i).As<Napi::Array>();
      argument.values.push_back(Int(item.Get(0u)));
      argument.literals.push_back(Int(item.Get(1u)));
    }
  } else if (tag == "none") {
    argument.constant = c10::IValue();
  } else if (tag == "int" || tag == "dtype" || tag == "layout" || tag == "memoryFormat") {
    argument.constant = Int(payload);
  } else if (tag == "float") {
    argument.constant = payload.As<Napi::Number>().DoubleValue();
  } else if (tag == "bool") {
    argument.constant = payload.ToBoolean().Value();
  } else if (tag == "string") {
    argument.constant = payload.ToString().Utf8Value();
  } else if (tag == "device") {
    argument.constant = ParseDevice(payload.ToString().Utf8Value());
  } else if (tag == "intList") {
    argument.constant = Ints(payload);
  } else if (tag == "floatList") {
    Napi::Array array = payload.As<Napi::Array>();
    std::vector<double> floats(array.Length());
    for (uint32_t i = 0; i < array.Length(); ++i) floats[i] = array.Get(i).As<Napi::Number>().DoubleValue();
    argument.constant = floats;
  } else if (tag == "boolList") {
    Napi::Array array = payload.As<Napi::Array>();
    c10::List<bool> bools;
    for (uint32_t i = 0; i < array.Length(); ++i) bools.push_back(array.Get(i).ToBoolean().Value());
    argument.constant = bools;
  } else {
    throw std::invalid_argument("unknown argument kind '" + tag + "'");
  }
  return argument;
}

SymbolicOp ParseSymbolic(const std::string& target) {
  if (target == "_operator.add") return SymbolicOp::kAdd;
  if (target == "_operator.sub") return SymbolicOp::kSub;
  if (target == "_operator.mul") return SymbolicOp::kMul;
  if (target == "_operator.floordiv") return SymbolicOp::kFloorDiv;
  if (target == "_operator.mod") return SymbolicOp::kMod;
  if (target == "_operator.neg") return SymbolicOp::kNeg;
  return SymbolicOp::kNone;
}

// The model of `description`: its module tree, with the program's interpreter as the root's forward.
std::shared_ptr<ModelState> Build(const Napi::Object& description) {
  auto graph = std::make_shared<ProgramGraph>();
  auto state = std::make_shared<ModelState>();
  // One class per module, each in a compilation unit of its own: the name stays the Python
  // class's, and hooks and call sites are told apart by type as for TorchScript.
  Napi::Array modules = ArrayAt(description, "modules");
  bool training = description.Get("training").ToBoolean();
  std::vector<torch::jit::Module> objects;
  for (uint32_t i = 0; i < modules.Length(); ++i) {
    Napi::Array module = modules.Get(i).As<Napi::Array>();
    std::string name = module.Get(0u).ToString();
    std::string type = module.Get(1u).ToString();
    objects.emplace_back(c10::QualifiedName("__torch__." + type), std::make_shared<torch::jit::CompilationUnit>(), false);
    objects.back().register_attribute("training", c10::BoolType::get(), training);
    graph->moduleNames.push_back(name);
  }
  Napi::Array tensors = ArrayAt(description, "tensors");
  std::vector<std::pair<int64_t, std::string>> owners;
  for (uint32_t i = 0; i < tensors.Length(); ++i) {
    Napi::Array entry = tensors.Get(i).As<Napi::Array>();
    int64_t module = Int(entry.Get(0u));
    std::string attribute = entry.Get(1u).ToString();
    std::string kind = entry.Get(2u).ToString();
    at::Tensor tensor = Tensor::FromJs(entry.Get(3u), "program tensor");
    torch::jit::Module& owner = objects.at(module);
    if (kind == "parameter") {
      owner.register_parameter(attribute, tensor, false);
    } else if (kind == "buffer") {
      owner.register_buffer(attribute, tensor);
    } else {
      owner.register_attribute(attribute, c10::TensorType::get(), tensor);
    }
    owners.emplace_back(module, attribute);
  }
  // Children after their own attributes, in the order given (PyTorch's named_modules()).
  for (uint32_t i = 1; i < modules.Length(); ++i) {
    Napi::Array module = modules.Get(i).As<Napi::Array>();
    int64_t parent = Int(module.Get(2u));
    std::string name = graph->moduleNames[i];
    std::string child = name.substr(name.rfind('.') == std::string::npos ? 0 : name.rfind('.') + 1);
    objects.at(parent).register_module(child, objects[i]);
  }
  for (const auto& object : objects) graph->modules.push_back(object._ivalue());

  Napi::Array inputs = ArrayAt(description, "inputs");
  int64_t users = 0;
  for (uint32_t i = 0; i < inputs.Length(); ++i) {
    int64_t source = Int(inputs.Get(i));
    ProgramInput input;
    if (source < 0) {
      input.user = -source - 1;
      users = std::max(users, input.user + 1);
    } else {
      input.module = owners.at(source).first;
      input.slot = graph->modules[input.module]->type()->getAttributeSlot(owners.at(source).second);
    }
    graph->inputs.push_back(std::move(input));
  }
  Napi::Array nodes = ArrayAt(description, "nodes");
  for (uint32_t i = 0; i < nodes.Length(); ++i) {
    Napi::Object spec = nodes.Get(i).As<Napi::Object>();
    ProgramNode node;
    node.name = spec.Get("name").ToString();
    node.target = spec.Get("target").ToString();
    int64_t module = Int(spec.Get("module"));
    node.module = module >= 0 ? graph->moduleNames.at(module) : "";
    node.symbolic = ParseSymbolic(node.target);
    Napi::Array given = spec.Get("args").As<Napi::Array>();
    for (uint32_t a = 0; a < given.Length(); ++a) {
      Napi::Array pair = given.Get(a).As<Napi::Array>();
      node.given.emplace_back(pair.Get(0u).ToString(), ParseArgument(pair.Get(1u)));
    }
    node.outputs = Ints(spec.Get("outputs"));
    if (spec.Get("listOutputs").IsArray()) node.listOutputs = Ints(spec.Get("listOutputs"));
    node.frees = Ints(spec.Get("frees"));
    node.hooks = Ints(spec.Get("hooks"));
    if (spec.Get("mode").IsArray()) {
      Napi::Array mode = spec.Get("mode").As<Napi::Array>();
      node.modeModule = Int(mode.Get(0u));
      node.modeArgumentName = mode.Get(1u).ToString();
      node.batchCounter = Int(mode.Get(2u));
      node.modeSlot = graph->modules.at(node.modeModule)->type()->getAttributeSlot("training");
    }
    graph->nodes.push_back(std::move(node));
  }
  Napi::Array hooks = ArrayAt(description, "hooks");
  for (uint32_t i = 0; i < hooks.Length(); ++i) {
    Napi::Array spec = hooks.Get(i).As<Napi::Array>();
    ProgramHook hook;
    hook.module = Int(spec.Get(0u));
    hook.output = Int(spec.Get(1u));
    hook.inputs = Ints(spec.Get(2u));
    state->calledTypes.insert(graph->modules.at(hook.module)->type().get());
    graph->hooks.push_back(std::move(hook));
  }
  graph->outputs = Ints(description.Get("outputs"));
  Napi::Array mutations = ArrayAt(description, "mutations");
  for (uint32_t i = 0; i < mutations.Length(); ++i) {
    Napi::Array pair = mutations.Get(i).As<Napi::Array>();
    graph->mutations.emplace_back(Int(pair.Get(0u)), Int(pair.Get(1u)));
  }
  graph->registerCount = static_cast<size_t>(Int(description.Get("registers")));
  graph->batched.assign(graph->registerCount, false);
  for (int64_t batched : Ints(description.Get("batched"))) graph->batched.at(batched) = true;
  ResolveOperators(*graph);

  // The root's forward: the interpreter, with the user inputs' names and types.
  torch::jit::Module& root = objects.front();
  std::vector<c10::Argument> arguments{c10::Argument("self", root.type())};
  Napi::Array names = ArrayAt(description, "inputNames");
  for (uint32_t i = 0; i < names.Length(); ++i) arguments.emplace_back(names.Get(i).ToString(), c10::TensorType::get());
  if (static_cast<int64_t>(names.Length()) != users) throw std::invalid_argument("the program's user inputs and their names disagree");
  c10::TypePtr returns = c10::TensorType::get();
  if (graph->outputs.size() != 1) {
    returns = c10::TupleType::create(std::vector<c10::TypePtr>(graph->outputs.size(), c10::TensorType::get()));
  }
  c10::FunctionSchema schema("forward", "", std::move(arguments), {c10::Argument("", returns)});
  std::weak_ptr<ProgramGraph> weak = graph;
  size_t count = static_cast<size_t>(users);
  auto forward = std::make_shared<torch::jit::BuiltinOpFunction>(
      c10::QualifiedName(*root.type()->name(), "forward"), std::move(schema), [weak, count](torch::jit::Stack& stack) {
        std::shared_ptr<ProgramGraph> program = weak.lock();
        if (!program) throw std::runtime_error("the exported program was disposed");
        std::vector<c10::IValue> userInputs(std::make_move_iterator(stack.end() - count), std::make_move_iterator(stack.end()));
        torch::jit::drop(stack, count + 1);
        stack.push_back(program->Run(std::move(userInputs)));
      });
  root.type()->addMethod(forward.get());
  state->root = root;
  state->program = graph;
  state->programForward = forward;
  state->programNodesRun = graph->nodesRun;
  state->keyedForInference = [graph](const std::vector<std::string>& points, std::vector<std::string>& carryProblems) {
    return ProgramForInference(*graph, points, carryProblems);
  };
  return state;
}

}  // namespace

Napi::Value LoadExportedProgram(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject() || !info[1].IsString()) ThrowTypeError(env, "loadExportedProgram(description, name: string)");
  std::string file = info[1].As<Napi::String>().Utf8Value();
  std::string context = "cannot load exported program '" + file + "'";
  return Guard(env, context.c_str(), [&]() -> Napi::Value {
    std::shared_ptr<ModelState> state = Build(info[0].As<Napi::Object>());
    torch::jit::Module root = state->root;
    return ScriptModule::Wrap(env, std::move(state), root, "");
  });
}

}  // namespace tee
