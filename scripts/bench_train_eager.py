#!/usr/bin/python3
"""The eager-PyTorch side of scripts/bench-train.ts: one training step of ResNet-20 (the
ResNetCifar of make_fixtures.py, Distiller's module names) with the seed's exit attached
Distiller-style, by a forward hook on model.layer1[2].relu2 that runs the branch on the
module's output and keeps the result (as Distiller's BranchPoint keeps `self.output`).

Started by the benchmark harness (bench_side.py's protocol) with /usr/bin/python3, Debian's
torch. Its options: `data`, a file the Node side wrote with torch.save (the batches and the
branch's initial weights, so both sides start from the same weights and see the same data),
`fixture` (the backbone's weights come from the TorchScript fixture's state dict) and
`threads`. Its factories: `eager`, the training step, and `eagerForward`, an eval forward
without gradients on the first `batch` samples of the first batch.

Each step: forward (with the branch), Distiller's early-exit loss, zero_grad(set_to_none=True),
backward, SGD step, then dropping the step's tensors, in that order, as the Node side does it
(where torch.tidy releases them). `output()` runs one more step and gives its loss, so the
two sides stay in step.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench_side import serve_side  # noqa: E402
from make_fixtures import ResNetCifar  # noqa: E402

PHASES = ["forward (with exit)", "early-exit loss", "zero_grad + backward", "optimizer step", "release the step's tensors"]


class EagerModel:
    """ResNet-20 with the fixture's weights and the seed's branch on a Distiller-style hook."""

    def __init__(self, options):
        torch.set_num_threads(int(options.get("threads", 1)))
        data = torch.load(options["data"])
        self.batches = [(data["x%d" % i], data["y%d" % i]) for i in range(int(data["batches"]))]
        self.data = data
        self.model = ResNetCifar()
        self.model.load_state_dict(torch.jit.load(options["fixture"]).state_dict())
        self.branch = nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, 10))
        self.branch.load_state_dict({"2.weight": data["branch.2.weight"], "2.bias": data["branch.2.bias"]})
        # Distiller's BranchPoint: the branch runs on the module's output; its result is kept.
        self.exits = {}

        def branch_point(module, inputs, output):
            self.exits["layer1.2.relu2"] = self.branch(output)

        self.model.layer1[2].relu2.register_forward_hook(branch_point)

    def forward(self, x):
        self.exits.clear()  # delete_exits_outputs
        final = self.model(x)
        return [self.exits["layer1.2.relu2"], final]  # get_exits_outputs + [final]


class EagerForward(EagerModel):
    """An eval-mode forward without gradients of the first batch's first `batch` samples."""

    def __init__(self, options):
        super().__init__(options)
        self.model.eval()
        self.branch.eval()
        self.x = self.batches[0][0][: int(options["batch"])].contiguous()
        self.describe = "eager PyTorch %s, eval, torch.no_grad" % torch.__version__

    def step(self):
        with torch.no_grad():
            self.forward(self.x)
        self.exits.clear()

    def output(self):
        with torch.no_grad():
            return [v for t in self.forward(self.x) for v in t.flatten().tolist()]


class EagerTraining(EagerModel):
    def __init__(self, options):
        super().__init__(options)
        data = self.data
        self.weights = [float(w) for w in data["lossWeights"]]
        settings = data["sgd"]
        self.model.train()
        self.branch.train()
        params = list(self.model.parameters()) + list(self.branch.parameters())
        self.optimizer = torch.optim.SGD(params, lr=float(settings["lr"]), momentum=float(settings["momentum"]),
                                         weight_decay=float(settings["weightDecay"]))
        self.index = 0
        self.last_loss = None
        self.describe = "eager PyTorch %s (Python %s), %d intra-op thread(s), forward hook as Distiller's BranchPoint" % (
            torch.__version__, sys.version.split()[0], torch.get_num_threads())

    def earlyexit_loss(self, outputs, target):
        # Distiller's earlyexit_loss: sum_i w_i * CE(exit_i) + (1 - sum w) * CE(final).
        loss = 0
        for i, weight in enumerate(self.weights):
            loss += weight * F.cross_entropy(outputs[i], target)
        return loss + (1.0 - sum(self.weights)) * F.cross_entropy(outputs[-1], target)

    def step(self):
        x, y = self.batches[self.index % len(self.batches)]
        self.index += 1
        t0 = time.perf_counter()
        outputs = self.forward(x)
        t1 = time.perf_counter()
        loss = self.earlyexit_loss(outputs, y)
        t2 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        self.optimizer.step()
        t4 = time.perf_counter()
        # Release the step's tensors inside the clock, as torch.tidy does on the Node side.
        self.last_loss = loss.detach()
        del outputs, loss
        self.exits.clear()
        t5 = time.perf_counter()
        times = [t0, t1, t2, t3, t4, t5]
        return {name: (times[i + 1] - times[i]) * 1e3 for i, name in enumerate(PHASES)}

    def output(self):
        self.step()
        return [self.last_loss.item()]


if __name__ == "__main__":
    serve_side({"eager": EagerTraining, "eagerForward": EagerForward})
