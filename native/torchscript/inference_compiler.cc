#include "torchscript/inference_compiler.h"

#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>

#include <ATen/Version.h>

#include <cstdlib>
#include <functional>
#include <map>
#include <sstream>
#include <stdexcept>

#include "onednn/chains.h"
#include "torchscript/batch_boundary.h"
#include "torchscript/batch_carry.h"
#include "torch_compat.h"

namespace tee {
namespace {

using torch::jit::Block;
using torch::jit::Node;
using torch::jit::Value;
// Per exit point: what writes its branch into the graph (none where it cannot), and the words
// that name the branch in a chain's errors ("the branch hooked on 'layer1'").
struct BranchInserter {
  std::function<Value*(torch::jit::Graph&, Value*)> insert;
  std::string name;
};
using BranchInserters = std::vector<BranchInserter>;

std::shared_ptr<torch::jit::Graph> ForwardGraph(const torch::jit::Module& module) {
  auto* function = dynamic_cast<torch::jit::GraphFunction*>(&module.get_method("forward").function());
  if (function == nullptr) throw std::runtime_error("the model's forward is not a TorchScript graph");
  return function->graph();
}

void RemoveTap(Node* tap) {
  Node* tuple = tap->input(1)->node();
  tap->destroy();
  if (tuple->kind() == c10::prim::TupleConstruct && !tuple->hasUses()) tuple->destroy();
}

// Replaces the taps of the inlined forward of `module`: those of `points` by exit points
// keyed by index, the others removed. The graph is the clone's own copy.
void KeyTapsByIndex(torch::jit::Module& module, const std::vector<std::string>& points) {
  std::shared_ptr<torch::jit::Graph> graph = ForwardGraph(module);
  InlineOwnGraphs(*graph);
  std::vector<Node*> taps;
  CollectTaps(graph->block(), taps);
  std::map<std::string, std::vector<Node*>> byName;
  for (Node* tap : taps) {
    std::string name;
    if (ModulePath(tap->input(0), graph->inputs()[0], name)) byName[name].push_back(tap);
  }
  for (size_t index = 0; index < points.size(); ++index) {
    const std::string& point = points[index];
    auto found = byName.find(point);
    if (found == byName.end()) {
      throw std::runtime_error("exit point '" + point + "' is never called by the model's forward, so it cannot be compiled with an exit");
    }
    int calls = CountCalls(found->second);
    if (calls != 1) {
      throw std::runtime_error("exit point '" + point + "' is called " +
                               (calls < 0 ? std::string("in a loop") : std::to_string(calls) + " times in one forward") +
                               ": the compiled model cannot tell which call is the exit");
    }
    // One call, possibly reached from several branches of an if/else: an exit point in each.
    for (Node* tap : found->second) {
      Value* output = tap->input(2);
      if (!output->type()->isSubtypeOf(*c10::TensorType::get())) {
        throw std::runtime_error("exit point '" + point + "' returns " + output->type()->annotation_str() +
                                 ", not a Tensor: a compiled exit needs a Tensor to give its branch");
      }
      torch::jit::WithInsertPoint before(tap);
      Node* exit = graph->create(c10::Symbol::fromQualString(kExitPointOperator),
                                 {graph->insertConstant(static_cast<int64_t>(index)), output}, 1);
      exit->output()->setType(output->type());
      graph->insertNode(exit);
      output->replaceAllUsesAfterNodeWith(exit, exit->output());
    }
  }
  for (Node* tap : taps) RemoveTap(tap);
  torch::jit::EliminateDeadCode(graph);
}

// Writes each exit's branch into the graph where it can be (Hook::insertInto), before the exit
// point, which then gets the branch's output (earlyexit::exit_point.ran): a oneDNN chain then
// takes the branch in with the layers before it.
void InsertBranches(torch::jit::Graph& graph, const BranchInserters& branches, onednn::NodeOrigins& origins) {
  std::vector<Node*> exits;
  CollectExitPoints(graph.block(), exits);
  for (Node* exit : exits) {
    int64_t index = torch::jit::constant_as<int64_t>(exit->input(0)).value();
    if (exit->inputs().size() != 2 || index >= static_cast<int64_t>(branches.size()) || !branches[index].insert) continue;
    torch::jit::WithInsertPoint before(exit);
    Node* last = exit->prev();
    Value* branch = branches[index].insert(graph, exit->input(1));
    if (branch == nullptr) continue;
    // A chain's errors name the branch its nodes came from.
    for (Node* node = last->next(); node != exit; node = node->next()) origins[node] = branches[index].name;
    Node* ran = graph.create(exit->kind(), {exit->input(0), exit->input(1), branch}, 1);
    ran->output()->setType(exit->output()->type());
    ran->insertBefore(exit);
    exit->output()->replaceAllUsesWith(ran->output());
    exit->destroy();
  }
}

// Freezes `module`, carries batch-sized values past its exit points where the frozen graph
// tells how (freezing has folded the model's settings, so an if/else on one is gone), and runs
// optimize_for_inference when asked and safe; `applied` says which. `carryProblems` comes in
// with the points already refused and goes out with the rest.
torch::jit::Module Freeze(torch::jit::Module& module, Optimization optimization, std::string& applied,
                          std::vector<std::string>& carryProblems, const BranchInserters& branches) {
  std::string problem = OneDnnProblem();
  if (optimization == Optimization::kOneDnn && !problem.empty()) {
    throw std::runtime_error("optimize: true cannot apply: " + problem + "; optimize: false compiles without oneDNN");
  }
  std::string chainsProblem = onednn::ChainsProblem();
  if (optimization == Optimization::kChains && !chainsProblem.empty()) {
    throw std::runtime_error("optimize: 'chains' cannot apply: " + chainsProblem);
  }
  torch::jit::Module frozen = torch::jit::freeze(module);
  CarryPastExitPoints(*ForwardGraph(frozen), carryProblems);
  if (optimization == Optimization::kChains || (optimization == Optimization::kAuto && chainsProblem.empty())) {
    onednn::NodeOrigins origins;
    InsertBranches(*ForwardGraph(frozen), branches, origins);
    if (onednn::LowerToChains(*ForwardGraph(frozen), origins) > 0) {
      applied = "oneDNN chains";
      return frozen;
    }
    if (optimization == Optimization::kChains) {
      throw std::runtime_error(
          "optimize: 'chains' cannot apply: the model has no convolution or linear layer with float32 CPU weights to build "
          "a oneDNN chain around");
    }
  }
  if (optimization == Optimization::kFrozen || !problem.empty()) {
    applied = "frozen";
    return frozen;
  }
  applied = "oneDNN";
  // A frozen module is optimized as it is, not frozen again.
  return torch::jit::optimize_for_inference(frozen);
}

torch::jit::Module Keyed(const torch::jit::Module& root, const std::vector<std::string>& points, const KeyedForInference& keyed,
                         std::vector<std::string>& carryProblems) {
  if (keyed) return keyed(points, carryProblems);
  torch::jit::Module clone = root.clone();
  clone.eval();
  KeyTapsByIndex(clone, points);
  // Nothing carried yet: freezing comes first (Freeze).
  carryProblems.assign(points.size(), "");
  return clone;
}

}  // namespace

std::string OneDnnProblem() {
  // Debian 13's LibTorch 2.6, built with oneDNN 3.7, dies of an integer division by zero
  // (SIGFPE) in oneDNN's sum as soon as a graph converted by optimize_for_inference adds two
  // tensors (Python's torch.jit.optimize_for_inference does the same there). A signal cannot
  // be caught, so the conversion is not offered where it is known to crash.
  if (const char* force = std::getenv("TEE_ONEDNN_INFERENCE")) {
    if (std::string(force) == "1") return "";
  }
  std::string config = at::show_config();
  if (TEE_TORCH_IS(2, 6) && config.find("MKL-DNN v3.7.") != std::string::npos) {
    return "LibTorch 2.6 built with oneDNN 3.7 (Debian 13's) crashes the process in oneDNN's sum on graphs that "
           "optimize_for_inference converts (set TEE_ONEDNN_INFERENCE=1 to try anyway)";
  }
  return "";
}

std::string InferenceModel::StaleReason(const std::shared_ptr<const HookMap>& currentHooks, uint64_t currentGeneration) const {
  if (currentHooks != hooks) return "hooks or exits were added or removed";
  if (currentGeneration != generation) return "the model's mode or device was changed (train(), eval() or to())";
  for (size_t i = 0; i < watched.size(); ++i) {
    if (watched[i].second._version() != versions[i]) return "'" + watched[i].first + "' was changed in place";
  }
  return "";
}

std::shared_ptr<InferenceModel> CompileForInference(const torch::jit::Module& root, const std::vector<std::string>& points,
                                                    std::shared_ptr<const HookMap> hooks, uint64_t generation,
                                                    Optimization optimization, const KeyedForInference& keyed) {
  if (root.is_training()) throw std::runtime_error("the model is in train mode: call eval() before compiling it for inference");
  auto compiled = std::make_shared<InferenceModel>();
  for (const std::string& point : points) {
    if (point.empty()) throw std::runtime_error("the root module cannot be an exit point");
    torch::jit::Module module = root;
    std::istringstream path(point);
    for (std::string name; std::getline(path, name, '.');) {
      if (!module.hasattr(name) || !module.attr(name).isModule()) {
        throw std::runtime_error("exit point '" + point + "' is not a submodule of the model");
      }
      module = module.attr(name).toModule();
    }
    compiled->points.push_back(module._ivalue());
    compiled->pointNames.push_back(point);
    auto found = hooks->find(module._ivalue().get());
    for (size_t i = 0; found != hooks->end() && i < found->second.size(); ++i) {
      const Hook& hook = *found->second[i];
      if (!hook.branch) {
        throw std::runtime_error("a JS forward hook is registered on '" + point +
                                 "': the compiled model runs exit branches only; remove it before compiling");
      }
      for (const at::Tensor& parameter : hook.parameters) compiled->watched.emplace_back("the branch at '" + point + "'", parameter);
    }
  }
  for (const auto& item : root.named_parameters()) compiled->watched.emplace_back(item.name, item.value);
  for (const auto& item : root.named_buffers()) compiled->watched.emplace_back(item.name, item.value);
  for (const auto& item : compiled->watched) compiled->versions.push_back(item.second._version());
  compiled->hooks = std::move(hooks);
  compiled->generation = generation;

  std::vector<std::string> carryProblems;
  torch::jit::Module clone = Keyed(root, points, keyed, carryProblems);
  // A point's branch is written into the graph only where it is the point's one hook.
  BranchInserters branches(points.size());
  for (size_t i = 0; i < points.size(); ++i) {
    auto found = compiled->hooks->find(compiled->points[i].get());
    if (found != compiled->hooks->end() && found->second.size() == 1) {
      branches[i] = {found->second[0]->insertInto, "the branch hooked on " + HookedModuleName(*found->second[0])};
    }
  }
  compiled->module = Freeze(clone, optimization, compiled->optimization, carryProblems, branches);
  std::shared_ptr<torch::jit::Graph> graph = ForwardGraph(compiled->module);
  std::vector<Node*> exits;
  CollectExitPoints(graph->block(), exits);
  compiled->batchBoundaries.assign(points.size(), false);
  std::vector<int> seen(points.size(), 0);
  for (Node* exit : exits) {
    int64_t index = torch::jit::constant_as<int64_t>(exit->input(0)).value();
    // A point reached from several branches is no batch boundary (it is not called
    // unconditionally). The check runs on the frozen graph: what freezing made of the
    // carries is what runs.
    compiled->batchBoundaries[index] = ++seen[index] == 1 && IsBoundaryNode(*graph, exit, exit->input(1));
  }
  compiled->perSampleProblems.assign(points.size(), "");
  for (size_t i = 0; i < points.size(); ++i) {
    if (seen[i] == 0) throw std::logic_error("freezing lost the exit point '" + points[i] + "'");
    if (compiled->batchBoundaries[i]) continue;
    compiled->perSampleProblems[i] = seen[i] > 1 ? "it is reached from several branches of an if/else"
                                     : !carryProblems.at(i).empty()
                                         ? carryProblems[i]
                                         : "a batch-sized value made before it is still read after it in the frozen graph";
  }
  return compiled;
}

torch::jit::Module CompilePlainForInference(const torch::jit::Module& root, Optimization optimization, std::string& applied,
                                            const KeyedForInference& keyed) {
  if (root.is_training()) throw std::runtime_error("the model is in train mode: call eval() before compiling it for inference");
  std::vector<std::string> carryProblems;
  torch::jit::Module clone = Keyed(root, {}, keyed, carryProblems);
  return Freeze(clone, optimization, applied, carryProblems, {});
}

}  // namespace tee
