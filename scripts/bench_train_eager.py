#!/usr/bin/python3
"""The eager-PyTorch side of scripts/bench-train.ts: one training step of ResNet-20 (the
ResNetCifar of make_fixtures.py, Distiller's module names) with the seed's exit attached
Distiller-style, by a forward hook on model.layer1[2].relu2 that runs the branch on the
module's output and keeps the result (as Distiller's BranchPoint keeps `self.output`).

Run by bench-train.js as a child process (run it with /usr/bin/python3: Debian's torch):

  bench_train_eager.py --data FILE --fixture resnet20_scripted.pt

FILE (written by the Node side with torch.save) holds the batches and the branch's initial
weights, so both sides start from the same weights and see the same data. The backbone's
weights come from the TorchScript fixture's state dict. The process then answers JSON
lines on stdin with JSON lines on stdout:

  {"cmd": "steps", "n": K}  ->  {"ms": [...], "phases": [[forward, loss, backward, step, release], ...], "losses": [...]}
  {"cmd": "quit"}

Each step: forward (with the branch), Distiller's early-exit loss, zero_grad(set_to_none=True),
backward, SGD step, then dropping the step's tensors, in that order, as the Node side does it
(where torch.tidy releases them).
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from make_fixtures import ResNetCifar  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--fixture", required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    data = torch.load(args.data)
    batches = [(data["x%d" % i], data["y%d" % i]) for i in range(int(data["batches"]))]
    weights = [float(w) for w in data["lossWeights"]]
    settings = data["sgd"]

    model = ResNetCifar()
    model.load_state_dict(torch.jit.load(args.fixture).state_dict())
    branch = nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, 10))
    branch.load_state_dict({"2.weight": data["branch.2.weight"], "2.bias": data["branch.2.bias"]})

    # Distiller's BranchPoint: the branch runs on the module's output; its result is kept.
    exits = {}

    def branch_point(module, inputs, output):
        exits["layer1.2.relu2"] = branch(output)

    model.layer1[2].relu2.register_forward_hook(branch_point)
    model.train()
    branch.train()
    params = list(model.parameters()) + list(branch.parameters())
    optimizer = torch.optim.SGD(params, lr=float(settings["lr"]), momentum=float(settings["momentum"]),
                                weight_decay=float(settings["weightDecay"]))

    def earlyexit_loss(outputs, target):
        # Distiller's earlyexit_loss: sum_i w_i * CE(exit_i) + (1 - sum w) * CE(final).
        loss = 0
        for i, weight in enumerate(weights):
            loss += weight * F.cross_entropy(outputs[i], target)
        return loss + (1.0 - sum(weights)) * F.cross_entropy(outputs[-1], target)

    step_index = [0]

    def step():
        x, y = batches[step_index[0] % len(batches)]
        step_index[0] += 1
        t0 = time.perf_counter()
        exits.clear()  # delete_exits_outputs
        final = model(x)
        outputs = [exits["layer1.2.relu2"], final]  # get_exits_outputs + [final]
        t1 = time.perf_counter()
        loss = earlyexit_loss(outputs, y)
        t2 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        optimizer.step()
        t4 = time.perf_counter()
        # Release the step's tensors inside the clock, as torch.tidy does on the Node side.
        value = loss.detach()
        del final, outputs, loss
        exits.clear()
        t5 = time.perf_counter()
        ms = lambda a, b: (b - a) * 1e3  # noqa: E731
        return ms(t0, t5), [ms(t0, t1), ms(t1, t2), ms(t2, t3), ms(t3, t4), ms(t4, t5)], value

    print(json.dumps({
        "ready": True, "torch": torch.__version__, "python": sys.version.split()[0],
        "threads": torch.get_num_threads(), "interopThreads": torch.get_num_interop_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "openblasThreads": os.environ.get("OPENBLAS_NUM_THREADS"),
    }), flush=True)

    for line in sys.stdin:
        request = json.loads(line)
        if request["cmd"] == "quit":
            break
        if request["cmd"] == "steps":
            times, phases, losses = [], [], []
            for _ in range(int(request["n"])):
                total, parts, loss = step()
                times.append(total)
                phases.append(parts)
                losses.append(loss.item())  # outside the clock, as on the Node side
            print(json.dumps({"ms": times, "phases": phases, "losses": losses}), flush=True)
        else:
            print(json.dumps({"error": "unknown command %r" % request["cmd"]}), flush=True)


if __name__ == "__main__":
    main()
