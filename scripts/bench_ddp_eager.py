"""The eager PyTorch side of scripts/bench-ddp.ts: one rank (RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT as torchrun sets them) training make_fixtures.py's ResNetCifar with the seed's exit
attached by a forward hook on layer1[2].relu2 (Distiller's BranchPoint), batch 64, SGD on
Distiller's early-exit loss; through torch.nn.parallel.DistributedDataParallel when WORLD_SIZE
> 1. Prints {"rank": R, "ms": timed steps' milliseconds} on its last line."""
import json
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from seed_exit import SeedExitResNet  # noqa: E402

world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
steps, warmup = int(os.environ["TEE_BENCH_STEPS"]), int(os.environ["TEE_BENCH_WARMUP"])
torch.set_num_threads(1)
torch.manual_seed(1)
net = SeedExitResNet().train()
net.model.load_state_dict(torch.jit.load(os.environ["TEE_BENCH_FIXTURE"]).state_dict())
if world > 1:
    dist.init_process_group("gloo")
    net = nn.parallel.DistributedDataParallel(net)
optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
torch.manual_seed(100 + rank)
x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))


def step():
    exit_out, final = net(x)
    loss = 0.3 * F.cross_entropy(exit_out, y) + 0.7 * F.cross_entropy(final, y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


for _ in range(warmup):
    step()
if world > 1:
    dist.barrier()
started = time.perf_counter()
for _ in range(steps):
    step()
ms = (time.perf_counter() - started) * 1000
if world > 1:
    dist.destroy_process_group()
print(json.dumps({"rank": rank, "ms": ms}))
