"""PyTorch's own DistributedDataParallel on the recipe of ddp-recipe.js, for test/distributed.test.ts:
two Gloo ranks (torch.multiprocessing), each on half of the batch, ResNet-20 in eager PyTorch
with the seed exit after layer1.2.relu2. The start weights and the batch come from STATE (saved
by the library's torch.save). Rank 0 writes every parameter and buffer to OUT as JSON.

    python3 ddp_python.py ROOT PORT STATE OUT STEPS BN
"""
import json
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

ROOT, PORT, STATE, OUT, STEPS, BN = sys.argv[1:7]
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from seed_exit import SeedExitResNet  # noqa: E402

LR, MOMENTUM, WEIGHT_DECAY, EXIT_WEIGHT = 0.05, 0.9, 5e-4, 0.3


def run(rank):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{PORT}", rank=rank, world_size=2)
    saved = torch.load(STATE)
    net = SeedExitResNet().train()
    model, branch = net.model, net.branch
    model.load_state_dict({k: v for k, v in saved.items() if k not in ("x", "y") and not k.startswith("exits.0.")})
    branch.load_state_dict({k[len("exits.0."):]: v for k, v in saved.items() if k.startswith("exits.0.")})
    if BN == "eval":
        model.eval()
    ddp = nn.parallel.DistributedDataParallel(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    x, y = saved["x"], saved["y"]
    half = x.shape[0] // 2
    x, y = x[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half]
    for _ in range(int(STEPS)):
        exit_out, final = ddp(x)
        loss = EXIT_WEIGHT * F.cross_entropy(exit_out, y) + (1 - EXIT_WEIGHT) * F.cross_entropy(final, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if rank == 0:
        named = dict(model.named_parameters())
        named.update({"exits.0." + n: p for n, p in branch.named_parameters()})
        named.update(dict(model.named_buffers()))
        with open(OUT, "w") as f:
            json.dump({n: [float(v) for v in t.detach().flatten()] for n, t in named.items()}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(run, nprocs=2)
