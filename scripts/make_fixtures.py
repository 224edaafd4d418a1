#!/usr/bin/python3
"""Generate TorchScript models and JSON reference data for the JS tests.

Usage: /usr/bin/python3 scripts/make_fixtures.py OUTDIR

Tensors in JSON are {"shape": [...], "dtype": "float32"|"int64", "data": [...]}
with data flattened in row-major order.
"""
import copy
import hashlib
import json
import os
import sys

EXPECTED_FILES = [
    "resnet20_scripted.pt",
    "resnet20_traced.pt",
    "resnet20_frozen.pt",
    "corrupt.pt",
    "containers_scripted.pt",
    "resnet20_reference.json",
    "containers_reference.json",
    "resnet18_scripted.pt",
    "resnet18_traced.pt",
    "mobilenet_v2_scripted.pt",
    "mobilenet_v2_traced.pt",
    "torchvision_reference.json",
]


def script_digest():
    with open(os.path.abspath(__file__), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def up_to_date(outdir, digest):
    stamp = os.path.join(outdir, "STAMP")
    if not os.path.isfile(stamp):
        return False
    with open(stamp) as f:
        if f.read().strip() != digest:
            return False
    return all(os.path.isfile(os.path.join(outdir, n)) for n in EXPECTED_FILES)


# The stamp check runs before importing torch, the slow part of start-up.
if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make_fixtures.py OUTDIR")
    if up_to_date(sys.argv[1], script_digest()):
        print("fixtures up to date")
        sys.exit(0)
    # TorchScript serializes __constants__ (a Python set) in hash order, so the
    # .pt files are only byte-stable with a fixed string hash seed.
    if os.environ.get("PYTHONHASHSEED") != "0":
        env = dict(os.environ, PYTHONHASHSEED="0")
        os.execve(sys.executable,
                  [sys.executable, os.path.abspath(__file__)] + sys.argv[1:], env)

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from typing import Dict, List, Optional, Tuple  # noqa: E402

DTYPES = {torch.float32: "float32", torch.int64: "int64"}


def tensor_json(t):
    t = t.detach().contiguous()
    return {
        "shape": list(t.shape),
        "dtype": DTYPES[t.dtype],
        # float32 -> Python float is exact, so the JSON holds the exact values.
        "data": t.reshape(-1).tolist(),
    }


# ---------------------------------------------------------------------------
# CIFAR ResNet-20 with Distiller's module names (block_gates dropped).
# ---------------------------------------------------------------------------

def conv3x3(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride,
                     padding=1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=False)
        self.downsample = downsample

    def forward(self, x):
        residual = x
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            residual = self.downsample(x)
        out = out + residual
        out = self.relu2(out)
        return out


class ResNetCifar(nn.Module):
    def __init__(self, layers=(3, 3, 3), num_classes=10):
        super().__init__()
        self.inplanes = 16
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=3, stride=1,
                               padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(16, layers[0])
        self.layer2 = self._make_layer(32, layers[1], stride=2)
        self.layer3 = self._make_layer(64, layers[2], stride=2)
        self.avgpool = nn.AvgPool2d(8, stride=1)
        self.fc = nn.Linear(64, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out",
                                        nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                # Non-trivial statistics so BN is not an identity at eval time.
                with torch.no_grad():
                    n = m.num_features
                    m.running_mean.copy_(torch.randn(n) * 0.1)
                    m.running_var.copy_(torch.rand(n) + 0.5)
                    m.weight.copy_(1 + torch.randn(n) * 0.1)
                    m.bias.copy_(torch.randn(n) * 0.1)

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride,
                          bias=False),
                nn.BatchNorm2d(planes),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        for _ in range(1, blocks):
            layers.append(BasicBlock(self.inplanes, planes))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.avgpool(x)
        x = x.view(x.size(0), -1)
        x = self.fc(x)
        return x


# ---------------------------------------------------------------------------
# Container / signature coverage model.
# ---------------------------------------------------------------------------

class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        return self.lin(x) * 0.5


class Containers(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)])
        self.heads = nn.ModuleDict({"a": nn.Linear(8, 4), "b": nn.Linear(8, 2)})
        self.act = nn.ReLU()
        self.left = Scale()
        self.right = Scale()

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        for block in self.blocks:
            x = block(x)
        x = self.act(self.left(x))
        x = self.act(self.right(x))
        return self.heads["a"](x), self.heads["b"](x)

    @torch.jit.export
    def describe(self, x: Tensor, scale: float, n: int, flag: bool, name: str,
                 xs: List[Tensor], d: Dict[str, Tensor]
                 ) -> Tuple[Tensor, float, int, bool, str, List[Tensor],
                            Dict[str, Tensor]]:
        return (x * scale, scale * 2.0, n + 1, not flag, name + "!",
                [t * 2 for t in xs], {k: v + 1 for k, v in d.items()})

    @torch.jit.export
    def with_optional(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        if y is None:
            return x
        return x + y


# ---------------------------------------------------------------------------

def max_diff(a, b):
    return (a - b).abs().max().item()


class Writer:
    def __init__(self, outdir):
        self.outdir = outdir

    def path(self, name):
        return os.path.join(self.outdir, name)

    def done(self, name):
        print("wrote %s (%d bytes)" % (self.path(name),
                                       os.path.getsize(self.path(name))))

    def json(self, name, obj):
        with open(self.path(name), "w") as f:
            json.dump(obj, f, allow_nan=False)
        self.done(name)

    def jit(self, name, module):
        torch.jit.save(module, self.path(name))
        self.done(name)

    def bytes(self, name, data):
        with open(self.path(name), "wb") as f:
            f.write(data)
        self.done(name)


def make_resnet(w):
    torch.manual_seed(0)
    model = ResNetCifar().eval()
    x = torch.randn(2, 3, 32, 32)

    scripted = torch.jit.script(model)
    traced = torch.jit.trace(model, x)
    frozen = torch.jit.freeze(torch.jit.script(model))

    with torch.no_grad():
        out = model(x)
        layer1_out = model.layer1(model.relu(model.bn1(model.conv1(x))))
        for label, m in (("scripted", scripted), ("traced", traced),
                         ("frozen", frozen)):
            d = max_diff(m(x), out)
            assert d < 1e-5, "%s differs from eager by %g" % (label, d)

    torch.manual_seed(1)
    branch = nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, 10)).eval()
    with torch.no_grad():
        exit_out = branch(layer1_out)

    w.jit("resnet20_scripted.pt", scripted)
    w.jit("resnet20_traced.pt", traced)
    w.jit("resnet20_frozen.pt", frozen)
    with open(w.path("resnet20_scripted.pt"), "rb") as f:
        w.bytes("corrupt.pt", f.read(3000))
    # As every PyTorch tutorial saves weights: the OrderedDict, _metadata and all.
    torch.save(branch.state_dict(), w.path("branch_state_dict.pt"))
    w.done("branch_state_dict.pt")

    # What the JS side sees is the reloaded archive; check it round-trips.
    with torch.no_grad():
        for name in ("resnet20_scripted.pt", "resnet20_traced.pt",
                     "resnet20_frozen.pt"):
            d = max_diff(torch.jit.load(w.path(name))(x), out)
            assert d < 1e-5, "reloaded %s differs by %g" % (name, d)

    w.json("resnet20_reference.json", {
        "input": tensor_json(x),
        "output": tensor_json(out),
        "named_modules": [n for n, _ in model.named_modules()],
        "named_children": [n for n, _ in model.named_children()],
        "named_parameters": {n: tensor_json(p) for n, p in model.named_parameters()},
        "named_buffers": {n: {"shape": list(b.shape)} for n, b in model.named_buffers()},
        "layer1_output": tensor_json(layer1_out),
        "exit": {
            "branch_state_dict": {k: tensor_json(v) for k, v in branch.state_dict().items()},
            "exit_output": tensor_json(exit_out),
            "final_output": tensor_json(out),
        },
    })


def make_containers(w):
    torch.manual_seed(2)
    model = Containers().eval()
    x = torch.randn(3, 8)
    scripted = torch.jit.script(model)

    args = {
        "x": torch.randn(2, 2),
        "scale": 1.5,
        "n": 3,
        "flag": True,
        "name": "abc",
        "xs": [torch.randn(2), torch.randn(3)],
        "d": {"k": torch.randn(2)},
    }
    with torch.no_grad():
        a, b = model(x)
        sa, sb = scripted(x)
        assert max_diff(a, sa) < 1e-6 and max_diff(b, sb) < 1e-6
        result = scripted.describe(*args.values())
        assert torch.equal(scripted.with_optional(x), x)
        assert torch.equal(scripted.with_optional(x, x), x + x)

    w.jit("containers_scripted.pt", scripted)

    def encode(v):
        if isinstance(v, Tensor):
            return tensor_json(v)
        if isinstance(v, (list, tuple)):
            return [encode(e) for e in v]
        if isinstance(v, dict):
            return {k: encode(e) for k, e in v.items()}
        return v

    w.json("containers_reference.json", {
        "input": tensor_json(x),
        "outputs": [tensor_json(a), tensor_json(b)],
        "named_modules": [n for n, _ in model.named_modules()],
        "named_parameters": {n: tensor_json(p) for n, p in model.named_parameters()},
        "describe": {"args": encode(args), "result": encode(result)},
    })


def distiller_sgd_steps(model, cache, x, y, weight, optimizer, steps):
    """Optimizer steps of Distiller's weighted loss, the exit's output taken by a forward hook
    into cache["exit"]; returns the losses."""
    losses = []
    for _ in range(steps):
        final = model(x)
        loss = weight * F.cross_entropy(cache["exit"], y) + (1 - weight) * F.cross_entropy(final, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def make_training(w):
    """Two SGD steps of Distiller-style joint and exits-only training, in eager PyTorch."""
    torch.manual_seed(0)
    model = ResNetCifar()
    model.load_state_dict(torch.jit.load(w.path("resnet20_scripted.pt")).state_dict())
    torch.manual_seed(1)
    branch = nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, 10))
    model_state = copy.deepcopy(model.state_dict())
    branch_state = copy.deepcopy(branch.state_dict())
    torch.manual_seed(3)
    x = torch.randn(8, 3, 32, 32)
    y = torch.randint(0, 10, (8,))
    settings = {"lossWeights": [0.3], "lr": 0.05, "momentum": 0.9, "weightDecay": 5e-4, "steps": 2}

    scenarios = {}
    for name, frozen in (("joint", False), ("exits_only", True)):
        model.load_state_dict(model_state)
        branch.load_state_dict(branch_state)
        cache = {}
        hook = model.layer1[2].relu2.register_forward_hook(
            lambda module, inputs, output: cache.__setitem__("exit", branch(output)))
        for p in model.parameters():
            p.requires_grad_(not frozen)
        params = ([] if frozen else list(model.parameters())) + list(branch.parameters())
        optimizer = torch.optim.SGD(params, lr=settings["lr"], momentum=settings["momentum"],
                                    weight_decay=settings["weightDecay"])
        # A frozen backbone stays in eval mode: its batch-norm statistics do not move.
        model.train(not frozen)
        branch.train()
        losses = distiller_sgd_steps(model, cache, x, y, settings["lossWeights"][0], optimizer, settings["steps"])
        hook.remove()
        named = dict(model.named_parameters())
        named.update({"exits.0." + n: p for n, p in branch.named_parameters()})
        scenarios[name] = {
            "losses": losses,
            "parameters": {n: tensor_json(p) for n, p in named.items()},
            "running_mean": tensor_json(model.layer3[2].bn2.running_mean),
        }
        for p in model.parameters():
            p.requires_grad_(True)

    w.json("training_reference.json", {"input": tensor_json(x), "target": tensor_json(y),
                                       "settings": settings, "scenarios": scenarios})


class MnistCnn(nn.Module):
    """The demo's backbone: cheap first block, expensive second, so an exit after the
    first saves most of the compute."""

    def __init__(self):
        super().__init__()
        self.features1 = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2))
        self.features2 = nn.Sequential(
            nn.Conv2d(16, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features2(self.features1(x)))


def make_mnist_cnn(w):
    torch.manual_seed(5)
    model = MnistCnn().train()
    w.jit("mnist_cnn.pt", torch.jit.script(model))


def make_optimizers(w):
    """Parameters after three steps of each optimizer on fixed gradients."""
    torch.manual_seed(4)
    start = torch.randn(6)
    grads = [torch.randn(6) for _ in range(3)]
    cases = {
        "sgd": (torch.optim.SGD, {"lr": 0.1}),
        "sgd_momentum_dampening": (torch.optim.SGD, {"lr": 0.1, "momentum": 0.8, "dampening": 0.3, "weight_decay": 0.01}),
        "sgd_nesterov": (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
        "adam": (torch.optim.Adam, {"lr": 0.01}),
        "adam_weight_decay": (torch.optim.Adam, {"lr": 0.01, "betas": (0.8, 0.99), "weight_decay": 0.1}),
        "adamw": (torch.optim.AdamW, {"lr": 0.01}),
    }
    results = {}
    for name, (cls, options) in cases.items():
        param = start.clone().requires_grad_(True)
        optimizer = cls([param], **options)
        for grad in grads:
            param.grad = grad.clone()
            optimizer.step()
        results[name] = tensor_json(param)
    w.json("optimizer_reference.json", {"start": tensor_json(start), "grads": [tensor_json(g) for g in grads],
                                        "results": results})


class ClassErrorMeter:
    """torchnet's ClassErrorMeter(accuracy=True, topk=...), as Distiller uses it."""

    def __init__(self, topk):
        self.topk = sorted(topk)
        self.sum = {k: 0 for k in self.topk}
        self.n = 0

    def add(self, output, target):
        output = output.numpy()
        target = target.numpy()
        pred = torch.from_numpy(output).topk(int(self.topk[-1]), 1, True, True)[1].numpy()
        correct = pred == target[:, None].repeat(pred.shape[1], 1)
        for k in self.topk:
            self.sum[k] += int(correct[:, 0:k].sum())
        self.n += output.shape[0]

    def value(self, k):
        return float(self.sum[k]) / self.n * 100.0


class AverageValueMeter:
    """torchnet's AverageValueMeter: the mean of the values added."""

    def __init__(self):
        self.values = []

    def add(self, value):
        self.values.append(float(value))

    @property
    def mean(self):
        return sum(self.values) / len(self.values)


def distiller_validate(batches, thresholds, num_classes):
    """Distiller's earlyexit_validate_loss over batches, then earlyexit_validate_stats."""
    num_exits = len(batches[0][0])
    topk = (1, min(5, num_classes))
    exiterrors = [ClassErrorMeter(topk) for _ in range(num_exits)]
    losses_exits = [AverageValueMeter() for _ in range(num_exits)]
    exit_taken = [0] * num_exits
    decisions = []
    criterion = nn.CrossEntropyLoss(reduction="none")
    for output, target in batches:
        loss_exits = [criterion(output[e], target) for e in range(num_exits)]
        for e in range(num_exits):
            losses_exits[e].add(torch.mean(loss_exits[e]))
        for i in range(target.size(0)):
            taken = num_exits - 1
            for e in range(num_exits - 1):
                if loss_exits[e][i] < thresholds[e]:
                    taken = e
                    break
            exiterrors[taken].add(output[taken].data[i].reshape(1, -1), torch.full([1], target[i].item(), dtype=torch.long))
            exit_taken[taken] += 1
            decisions.append(taken)
    top1 = [0.0] * num_exits
    top5 = [0.0] * num_exits
    losses = [0.0] * num_exits
    total = sum(exit_taken)
    for e in range(num_exits):
        if exit_taken[e]:
            top1[e] += exiterrors[e].value(1)
            top5[e] += exiterrors[e].value(topk[1])
            losses[e] += losses_exits[e].mean
    percent = [exit_taken[e] * 100.0 / total for e in range(num_exits)]
    total_top1 = sum(top1[e] * (exit_taken[e] / total) for e in range(num_exits))
    total_top5 = sum(top5[e] * (exit_taken[e] / total) for e in range(num_exits))
    return {"exitTaken": exit_taken, "percentTaken": percent, "top1": top1, "top5": top5,
            "lossMeans": losses, "totalTop1": total_top1, "totalTop5": total_top5, "decisions": decisions}


def make_distiller_stats(w):
    """Distiller's validation statistics on fixed outputs of two exits and a final one."""
    torch.manual_seed(6)
    cases = []
    for num_classes, thresholds in ((10, [0.6, 1.2]), (10, [0.0, 0.0]), (3, [2.0, 0.8])):
        batches = []
        for size in (16, 16, 7):
            target = torch.randint(0, num_classes, (size,))
            # Outputs leaning toward the target by varying amounts, so exits differ.
            output = [torch.randn(size, num_classes) * 1.5 + 2.5 * torch.nn.functional.one_hot(target, num_classes) * torch.rand(size, 1)
                      for _ in range(3)]
            batches.append((output, target))
        cases.append({
            "thresholds": thresholds,
            "batches": [{"outputs": [tensor_json(o) for o in output], "target": tensor_json(target)}
                        for output, target in batches],
            "expected": distiller_validate(batches, thresholds, num_classes),
        })
    w.json("distiller_stats_reference.json", {"cases": cases})


def make_torchvision(w):
    """torchvision's ResNet-18 and MobileNetV2 as users export them: nested calls through
    `_forward_impl`, Sequential stages and blocks that reuse a module (BasicBlock's relu)."""
    import torchvision
    reference = {}
    torch.manual_seed(0)
    x = torch.randn(4, 3, 64, 64)
    reference["input"] = tensor_json(x)
    for name, make in (("resnet18", torchvision.models.resnet18),
                       ("mobilenet_v2", torchvision.models.mobilenet_v2)):
        torch.manual_seed(0)
        model = make(num_classes=10)
        # Batch-norm statistics measured on data (a fresh network's defaults let activations
        # die out, and every input would give the same output).
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = None
        model.train()
        with torch.no_grad():
            for _ in range(4):
                model(torch.randn(8, 3, 64, 64))
        model.eval()
        # What Python's forward hooks see at the exit points the tests use.
        points = {"resnet18": ["layer1.0", "layer2.1", "layer3", "layer1.0.conv2"],
                  "mobilenet_v2": ["features.3", "features.6", "features.14"]}[name]
        hooked = {}
        handles = [model.get_submodule(p).register_forward_hook(
            lambda m, i, o, p=p: hooked.__setitem__(p, tensor_json(o))) for p in points]
        with torch.no_grad():
            reference[name] = tensor_json(model(x))
        for handle in handles:
            handle.remove()
        reference[name + "_hooks"] = hooked
        with torch.no_grad():
            scripted = torch.jit.script(model)
            traced = torch.jit.trace(model, x[:1])
            assert max_diff(scripted(x), model(x)) < 1e-5
            assert max_diff(traced(x), model(x)) < 1e-5
        w.jit("%s_scripted.pt" % name, scripted)
        w.jit("%s_traced.pt" % name, traced)
        if can_export():
            # Exported as torchvision makes them: batch norm with its default momentum.
            model = copy.deepcopy(model)
            for module in model.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.momentum = 0.1
            program = export_with_dynamic_batch(model, x[:2])
            torch.export.save(program, w.path("%s_exported.pt2" % name))
            w.done("%s_exported.pt2" % name)
            reference[name + "_exported_modules"] = [[n, class_name(m)] for n, m in model.named_modules()]
            reference[name + "_exported_training"] = sgd_reference(
                model, *{"resnet18": ("layer1.0.conv2", 64), "mobilenet_v2": ("features.6", 32)}[name])
    w.json("torchvision_reference.json", reference)


def sgd_reference(model, point, channels):
    """Two SGD steps of Distiller's weighted loss with a pooled linear exit at `point`, in eager
    PyTorch, from the exported weights; a few parameters and buffers of the result (the whole
    network would make the JSON hundreds of megabytes)."""
    model = copy.deepcopy(model).train()
    torch.manual_seed(7)
    branch = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10)).train()
    branch_state = {k: tensor_json(v) for k, v in branch.state_dict().items()}
    x = torch.randn(4, 3, 64, 64)
    y = torch.tensor([1, 7, 3, 3])
    settings = {"lossWeight": 0.3, "lr": 0.05, "momentum": 0.9, "weightDecay": 5e-4, "steps": 2, "seed": 11}
    cache = {}
    handle = model.get_submodule(point).register_forward_hook(
        lambda m, i, o: cache.__setitem__("exit", branch(o)))
    optimizer = torch.optim.SGD(list(model.parameters()) + list(branch.parameters()), lr=settings["lr"],
                                momentum=settings["momentum"], weight_decay=settings["weightDecay"])
    # Dropout (MobileNetV2's classifier) draws from the default generator: the same seed and
    # the same calls give LibTorch's kernel the same numbers on the Node side.
    torch.manual_seed(settings["seed"])
    losses = distiller_sgd_steps(model, cache, x, y, settings["lossWeight"], optimizer, settings["steps"])
    handle.remove()
    state = model.state_dict()
    names = list(dict(model.named_parameters()))
    buffers = [n for n in state if n.endswith("running_mean") or n.endswith("num_batches_tracked")]
    chosen = [names[0], names[len(names) // 2], names[-1], buffers[0], buffers[-2], buffers[-1]]
    return {"point": point, "channels": channels, "settings": settings, "input": tensor_json(x), "target": tensor_json(y),
            "branch_state_dict": branch_state, "losses": losses,
            "after": {n: tensor_json(state[n].float()) for n in chosen},
            "branch_after": {k: tensor_json(v) for k, v in branch.state_dict().items()}}


def can_export():
    """torch.export with the .pt2 layout this library reads: PyTorch 2.6 and later."""
    return hasattr(torch, "export") and tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 6)


def class_name(module):
    return type(module).__module__ + "." + type(module).__qualname__


def export_with_dynamic_batch(model, example):
    """The recipe of the README (examples/export_model.py), as a user follows it."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
    from export_model import export_with_dynamic_batch as recipe
    return recipe(model, example)


def make_exported(w):
    """Exported programs (torch.export, PyTorch >= 2.6) and what eager PyTorch says of them."""
    torch.manual_seed(0)
    model = ResNetCifar().eval()
    program = export_with_dynamic_batch(model, torch.randn(2, 3, 32, 32))
    torch.export.save(program, w.path("resnet20_exported.pt2"))
    w.done("resnet20_exported.pt2")
    reloaded = torch.export.load(w.path("resnet20_exported.pt2")).module()
    points = ["layer1.2.relu2", "layer2.1", "layer1.0", "fc"]
    cases = []
    torch.manual_seed(4)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 32)
        seen = {}
        handles = [model.get_submodule(p).register_forward_hook(
            lambda m, i, o, p=p: seen.__setitem__(p, o.detach().clone())) for p in points]
        with torch.no_grad():
            out = model(x)
            d = max_diff(reloaded(x), out)
            assert d < 1e-5, "the reloaded exported program differs from eager by %g" % d
        for h in handles:
            h.remove()
        cases.append({"input": tensor_json(x), "output": tensor_json(out),
                      "hooks": {p: tensor_json(seen[p]) for p in points}})
    torch.manual_seed(5)
    cnn = MnistCnn().eval()
    torch.export.save(export_with_dynamic_batch(cnn, torch.randn(2, 1, 28, 28)), w.path("mnist_cnn_exported.pt2"))
    w.done("mnist_cnn_exported.pt2")
    owners = set()
    for node in program.graph.nodes:
        for name, _ in (node.meta.get("nn_module_stack") or {}).values():
            owners.add(name)
    w.json("exported_reference.json", {
        "torch_version": torch.__version__.split("+")[0],
        "named_modules": [[n, class_name(m)] for n, m in model.named_modules()],
        "modules_with_nodes": sorted(owners),
        "node_count": sum(1 for node in program.graph.nodes if node.op == "call_function"),
        "named_parameters": [n for n, _ in model.named_parameters()],
        "named_buffers": [n for n, _ in model.named_buffers()],
        "cases": cases,
    })


def main(outdir):
    digest = script_digest()
    os.makedirs(outdir, exist_ok=True)
    stamp = os.path.join(outdir, "STAMP")
    if os.path.exists(stamp):
        os.remove(stamp)

    torch.set_num_threads(1)
    w = Writer(outdir)
    make_resnet(w)
    make_containers(w)
    make_training(w)
    make_optimizers(w)
    make_mnist_cnn(w)
    make_distiller_stats(w)
    make_torchvision(w)
    if can_export():
        make_exported(w)

    # Which PyTorch made these: the other LibTorch's tests read them from torch-<version>/.
    with open(os.path.join(outdir, "TORCH_VERSION"), "w") as f:
        f.write(torch.__version__.split("+")[0] + "\n")
    with open(stamp, "w") as f:
        f.write(digest + "\n")
    print("wrote %s" % stamp)


if __name__ == "__main__":
    main(sys.argv[1])
