#!/usr/bin/python3
"""Models for the peer benchmark against onnxruntime-node.

Usage: /usr/bin/python3 scripts/peer_models.py OUTDIR

For each benchmark model (fixed weights, torch.manual_seed(0), eval mode) writes:
  NAME.pt                   the backbone, TorchScript (torch.jit.script)
  NAME.branch.pt            the exit branch's state_dict (torch.save; an nn.Sequential,
                            keys like "2.weight")
  NAME.full.onnx            the backbone: input "input" -> "output"
  NAME.prefix_branch.onnx   backbone up to and including the exit point, then the branch:
                            "input" -> "exit"
  NAME.prefix_branch.pt     the same, TorchScript
  NAME.prefix_exit.onnx     "input" -> ("exit", "activation"): the branch output and the
                            activation at the exit point
  NAME.rest.onnx            "activation" -> "output": the backbone after the exit point
  manifest.json             exit points, branch specs, shapes, versions, reference outputs

and the text encoder of the transformer fixtures (test/fixtures, trained by
make_transformer_fixtures.py), its full forward only:
  text_encoder.pt, text_encoder.pt2   the fixture's TorchScript and exported program, copied
  text_encoder.onnx                    the same weights: "input_ids" (int64 [batch, tokens],
                                       [PAD] = 0) -> "output", both axes dynamic

All ONNX files use the TorchScript-based exporter, opset 17, a dynamic batch axis.
Runs on PyTorch 1.13 (Debian 12) and 2.6 (Debian 13) alike.
"""
import importlib.util
import inspect
import json
import os
import sys

import torch
from torch import Tensor, nn
from typing import Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OPSET = 17
TOL = 1e-6


def load_fixture_definitions():
    """scripts/make_fixtures.py's model classes (its re-exec runs only under __main__)."""
    spec = importlib.util.spec_from_file_location(
        "tee_make_fixtures", os.path.join(HERE, "make_fixtures.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_branch(spec):
    """The branch from its text spec, e.g. ["AvgPool2d(3)", "Flatten()", "Linear(1600, 10)"]."""
    return nn.Sequential(*[eval("nn." + layer, {"nn": nn}) for layer in spec])


class PrefixBranch(nn.Module):
    def __init__(self, prefix: nn.Module, branch: nn.Module):
        super().__init__()
        self.prefix = prefix
        self.branch = branch

    def forward(self, x: Tensor) -> Tensor:
        return self.branch(self.prefix(x))


class PrefixExit(nn.Module):
    def __init__(self, prefix: nn.Module, branch: nn.Module):
        super().__init__()
        self.prefix = prefix
        self.branch = branch

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        activation = self.prefix(x)
        return self.branch(activation), activation


# Each builder returns (backbone, prefix, rest) in eval mode: prefix runs the backbone up to
# and including the exit point, rest the remainder; rest(prefix(x)) == backbone(x). prefix and
# rest share their modules with the backbone.

def build_resnet20(defs):
    model = defs.ResNetCifar().eval()
    prefix = nn.Sequential(model.conv1, model.bn1, model.relu, model.layer1)
    # ResNetCifar.forward ends with x.view(x.size(0), -1): Flatten on a contiguous tensor.
    rest = nn.Sequential(model.layer2, model.layer3, model.avgpool, nn.Flatten(), model.fc)
    return model, prefix, rest


def build_mnist_cnn(defs):
    model = defs.MnistCnn()
    saved = torch.jit.load(os.path.join(ROOT, "models", "mnist_cnn.pt"), map_location="cpu")
    model.load_state_dict(saved.state_dict())
    model.eval()
    saved.eval()
    # The Python definition must compute what the shipped TorchScript computes.
    with torch.no_grad():
        x = torch.randn(3, 1, 28, 28)
        diff = (model(x) - saved(x)).abs().max().item()
    if diff > TOL:
        raise SystemExit("mnist_cnn: MnistCnn differs from models/mnist_cnn.pt by %g" % diff)
    prefix = model.features1
    rest = nn.Sequential(model.features2, model.classifier)
    return model, prefix, rest


def build_mobilenet_v2(defs):
    import torchvision
    try:  # torchvision >= 0.13: weights=None; older: pretrained=False
        model = torchvision.models.mobilenet_v2(weights=None)
    except TypeError:
        model = torchvision.models.mobilenet_v2(pretrained=False)
    # Random init leaves batch norm at mean 0, variance 1: through 17 blocks the logits
    # shrink to ~1e-9, too small for a meaningful comparison. Statistics from a few seeded
    # random batches (cumulative average) keep every activation at a normal scale.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(8, 3, 224, 224))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    model.eval()
    prefix = model.features[:5]
    # MobileNetV2._forward_impl: features, adaptive_avg_pool2d(1, 1), flatten(x, 1), classifier.
    rest = nn.Sequential(model.features[5:], nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(1),
                         model.classifier)
    return model, prefix, rest


MODELS = [
    {"name": "resnet20", "build": build_resnet20, "exit": "layer1.2.relu2",
     "branch": ["AvgPool2d(3)", "Flatten()", "Linear(1600, 10)"], "input": [3, 32, 32]},
    {"name": "mnist_cnn", "build": build_mnist_cnn, "exit": "features1",
     "branch": ["MaxPool2d(2)", "Flatten()", "Linear(784, 10)"], "input": [1, 28, 28]},
    # features.4: the first inverted residual block at 28x28 (32 channels), after ~1/3 of
    # the network's multiply-adds at 224 px.
    {"name": "mobilenet_v2", "build": build_mobilenet_v2, "exit": "features.4",
     "branch": ["AdaptiveAvgPool2d(1)", "Flatten()", "Linear(32, 1000)"], "input": [3, 224, 224]},
]


def allow_export_without_onnx_package():
    """PyTorch 2.x's TorchScript-based exporter imports the `onnx` Python package after it
    has serialized the model, only to append onnxscript functions of custom operators
    (torch/onnx/_internal/onnx_proto_utils.py, _add_onnxscript_fn): with no custom
    operators that step returns the model as it was. Debian 13 has python3-torch without
    python3-onnx, so where `onnx` is missing the step is skipped. PyTorch 1.13 does not
    need the package."""
    try:
        import onnx  # noqa: F401
        return
    except ImportError:
        pass
    try:
        from torch.onnx._internal import onnx_proto_utils
    except ImportError:
        return
    if hasattr(onnx_proto_utils, "_add_onnxscript_fn"):
        def without_onnxscript_functions(model_bytes, custom_opsets):
            if custom_opsets:
                raise SystemExit("custom opsets need the onnx Python package")
            return model_bytes
        onnx_proto_utils._add_onnxscript_fn = without_onnxscript_functions


def onnx_export(module, x, path, input_names, output_names):
    dynamic = {name: {0: "batch"} for name in input_names + output_names}
    kwargs = dict(input_names=input_names, output_names=output_names, dynamic_axes=dynamic,
                  opset_version=OPSET, do_constant_folding=True)
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # PyTorch 2.x: the TorchScript-based exporter
    with torch.no_grad():
        torch.onnx.export(module, (x,), path, **kwargs)


def tensor_json(t):
    t = t.detach().contiguous()
    return {"shape": list(t.shape), "data": t.reshape(-1).tolist()}


def max_diff(a, b):
    return (a - b).abs().max().item()


def check(label, diff):
    print("  %-44s max |diff| %.3g" % (label, diff))
    if not diff <= TOL:
        raise SystemExit("%s: difference %g exceeds %g" % (label, diff, TOL))


def try_onnxruntime():
    try:
        import onnxruntime  # noqa: F401
        return onnxruntime
    except Exception:
        return None


def make_model(defs, spec, outdir, ort):
    name = spec["name"]
    print("%s (exit %s)" % (name, spec["exit"]))
    torch.manual_seed(0)
    backbone, prefix, rest = spec["build"](defs)
    # Containers made here start in training mode, and torch.onnx.export restores each
    # exported module's mode afterwards, recursively: all of them in eval mode, or the
    # shared batch norms would be switched back to training by the export of prefix/rest.
    for module in (backbone, prefix, rest):
        module.eval()
    branch = build_branch(spec["branch"]).eval()
    exit_module = dict(backbone.named_modules()).get(spec["exit"])
    if exit_module is None:
        raise SystemExit("%s: no module %s" % (name, spec["exit"]))
    prefix_branch = PrefixBranch(prefix, branch).eval()
    prefix_exit = PrefixExit(prefix, branch).eval()

    path = lambda suffix: os.path.join(outdir, name + suffix)  # noqa: E731
    scripted = torch.jit.script(backbone)
    if spec["exit"] not in dict(scripted.named_modules()):
        raise SystemExit("%s: the scripted backbone has no module %s" % (name, spec["exit"]))
    torch.jit.save(scripted, path(".pt"))
    torch.save(branch.state_dict(), path(".branch.pt"))
    torch.jit.save(torch.jit.script(prefix_branch), path(".prefix_branch.pt"))
    # The same backbone as torch.export makes it (PyTorch 2.6 and later), for the interpreter rows.
    exported = None
    if hasattr(torch, "export") and tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 6):
        batch = torch.export.Dim("batch", min=1, max=4096)
        example = torch.randn([2] + spec["input"])
        torch.export.save(torch.export.export(backbone, (example,), dynamic_shapes=({0: batch},)), path(".pt2"))
        exported = name + ".pt2"

    torch.manual_seed(1234)
    x = torch.randn([2] + spec["input"])
    onnx_export(backbone, x, path(".full.onnx"), ["input"], ["output"])
    onnx_export(prefix_branch, x, path(".prefix_branch.onnx"), ["input"], ["exit"])
    onnx_export(prefix_exit, x, path(".prefix_exit.onnx"), ["input"], ["exit", "activation"])
    with torch.no_grad():
        activation_ref = prefix(x)
    onnx_export(rest, activation_ref, path(".rest.onnx"), ["activation"], ["output"])

    # PyTorch checks: the files against the eager backbone with a hook at the exit point.
    if any(m.training for m in backbone.modules()) or any(m.training for m in branch.modules()):
        raise SystemExit("%s: a module is in training mode after the export" % name)
    hooked = []
    handle = exit_module.register_forward_hook(lambda m, i, o: hooked.append(o.clone()))
    with torch.no_grad():
        full = backbone(x)
        handle.remove()
        exit_ref = branch(hooked[0])
        loaded = torch.jit.load(path(".pt"))
        check("NAME.pt vs eager backbone", max_diff(loaded(x), full))
        pb = torch.jit.load(path(".prefix_branch.pt"))(x)
        check("prefix_branch.pt vs hooked exit + branch", max_diff(pb, exit_ref))
        ex, act = prefix_exit(x)
        check("prefix_exit activation vs hooked exit", max_diff(act, hooked[0]))
        check("prefix_exit exit vs hooked exit + branch", max_diff(ex, exit_ref))
        check("rest(prefix_exit) vs full", max_diff(rest(act), full))
        restored = build_branch(spec["branch"])
        restored.load_state_dict(torch.load(path(".branch.pt")))
        check("branch.pt reloaded vs branch", max_diff(restored.eval()(hooked[0]), exit_ref))

    onnx_checked = False
    if ort is not None:
        run = lambda f, feeds: ort.InferenceSession(  # noqa: E731
            path(f), providers=["CPUExecutionProvider"]).run(None, feeds)
        xn = x.numpy()
        check("full.onnx (onnxruntime)", max_diff(torch.from_numpy(run(".full.onnx", {"input": xn})[0]), full))
        check("prefix_branch.onnx (onnxruntime)",
              max_diff(torch.from_numpy(run(".prefix_branch.onnx", {"input": xn})[0]), exit_ref))
        e, a = run(".prefix_exit.onnx", {"input": xn})
        out = run(".rest.onnx", {"activation": a})[0]
        check("prefix_exit + rest .onnx (onnxruntime)", max(
            max_diff(torch.from_numpy(e), exit_ref), max_diff(torch.from_numpy(out), full)))
        onnx_checked = True

    return {
        "exitPoint": spec["exit"],
        "branch": spec["branch"],
        "inputShape": spec["input"],
        "activationShape": list(activation_ref.shape[1:]),
        "files": {k: name + s for k, s in (
            ("backbone", ".pt"), ("branchStateDict", ".branch.pt"), ("full", ".full.onnx"),
            ("prefixBranch", ".prefix_branch.onnx"), ("prefixBranchScript", ".prefix_branch.pt"),
            ("prefixExit", ".prefix_exit.onnx"), ("rest", ".rest.onnx"))},
        "exported": exported,
        "onnxNames": {"full": [["input"], ["output"]], "prefixBranch": [["input"], ["exit"]],
                      "prefixExit": [["input"], ["exit", "activation"]],
                      "rest": [["activation"], ["output"]]},
        "onnxCheckedInPython": onnx_checked,
        "reference": {"input": tensor_json(x), "full": tensor_json(full),
                      "prefixBranch": tensor_json(exit_ref)},
    }


def make_text_encoder(outdir, ort):
    """The text encoder fixture, rebuilt in Python from its TorchScript's weights and exported
    to ONNX with a dynamic batch and length; the fixture files themselves are copied, so that
    both sides of the benchmark read the same weights even if the fixtures are made again."""
    import shutil
    import make_transformer_fixtures as t
    print("text_encoder (full forward)")
    fixtures = os.path.join(ROOT, "test", "fixtures")
    scripted = os.path.join(fixtures, "text_encoder_scripted.pt")
    if not os.path.isfile(scripted):
        raise SystemExit("%s is missing: run npm run fixtures first" % scripted)
    saved = torch.jit.load(scripted, map_location="cpu").eval()
    state = saved.state_dict()
    model = t.TextEncoder(state["tokens.weight"].shape[0], t.DIM, t.HEADS, t.HIDDEN, t.LAYERS, t.MAX_LENGTH, 2)
    model.load_state_dict(state)
    model.eval()
    shutil.copyfile(scripted, os.path.join(outdir, "text_encoder.pt"))
    exported = None
    if os.path.isfile(os.path.join(fixtures, "text_encoder_exported.pt2")):
        shutil.copyfile(os.path.join(fixtures, "text_encoder_exported.pt2"), os.path.join(outdir, "text_encoder.pt2"))
        exported = "text_encoder.pt2"
    # Two rows of different lengths: the second padded, so the mask is exported too.
    generator = torch.Generator().manual_seed(1234)
    x = torch.randint(3, state["tokens.weight"].shape[0], (2, 24), generator=generator)
    x[0, 0] = x[1, 0] = 2
    x[1, 17:] = 0
    path = os.path.join(outdir, "text_encoder.onnx")
    kwargs = dict(input_names=["input_ids"], output_names=["output"], opset_version=OPSET, do_constant_folding=True,
                  dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "output": {0: "batch"}})
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    with torch.no_grad():
        torch.onnx.export(model, (x,), path, **kwargs)
        full = model(x)
        check("text_encoder: Python definition vs fixture", max_diff(saved(x), full))
    if ort is not None:
        out = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input_ids": x.numpy()})[0]
        check("text_encoder.onnx (onnxruntime)", max_diff(torch.from_numpy(out), full))
    return {"files": {"backbone": "text_encoder.pt", "full": "text_encoder.onnx"}, "exported": exported,
            "reference": {"input": tensor_json(x), "full": tensor_json(full)}}


def main(outdir):
    os.makedirs(outdir, exist_ok=True)
    torch.set_num_threads(1)
    defs = load_fixture_definitions()
    allow_export_without_onnx_package()
    ort = try_onnxruntime()
    if ort is None:
        print("onnxruntime for Python not importable: ONNX files not checked here")
    models = {spec["name"]: make_model(defs, spec, outdir, ort) for spec in MODELS}
    import torchvision
    manifest = {
        "torchVersion": torch.__version__,
        "torchvisionVersion": torchvision.__version__,
        "pythonVersion": sys.version.split()[0],
        "onnxOpset": OPSET,
        "onnxruntimePython": ort.__version__ if ort is not None else None,
        "seed": 0,
        "referenceSeed": 1234,
        "models": models,
        "textEncoder": make_text_encoder(outdir, ort),
    }
    with open(os.path.join(outdir, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    print("wrote %s" % os.path.join(outdir, "manifest.json"))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: peer_models.py OUTDIR")
    main(sys.argv[1])
