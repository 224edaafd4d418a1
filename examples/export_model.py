#!/usr/bin/python3
"""Export a PyTorch model for torch-early-exit with torch.export (PyTorch 2.6 or later).

Usage: python3 examples/export_model.py OUT.pt2

Plain PyTorch, nothing of torch-early-exit's is imported: export the model with its batch
dimension dynamic (so that the Node side can run any batch size, and let samples leave the
batch early), check the exported program against the eager model, and save it. Node then
loads it with `torch.export.load('OUT.pt2')`. scripts/make_fixtures.py follows the same
recipe (export_with_dynamic_batch) for the tests.
"""
import sys

import torch
from torch import nn


def export_with_dynamic_batch(model, example):
    # Dim("batch") makes the first dimension symbolic: the program is valid for every batch
    # size from 1 to 4096, and says so on every tensor it makes.
    batch = torch.export.Dim("batch", min=1, max=4096)
    return torch.export.export(model, (example,), dynamic_shapes=({0: batch},))


def main(out):
    # Any nn.Module whose forward torch.export can trace; eval() for the mode to serve in
    # (Node's train()/eval() switch batch norm and dropout either way).
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(16, 10),
    ).eval()
    example = torch.randn(2, 1, 28, 28)
    program = export_with_dynamic_batch(model, example)
    with torch.no_grad():
        for batch in (1, 5):
            x = torch.randn(batch, 1, 28, 28)
            assert torch.allclose(program.module()(x), model(x), atol=1e-5)
    torch.export.save(program, out)
    print("saved %s (%d nodes, modules: %s)" % (
        out, sum(1 for n in program.graph.nodes if n.op == "call_function"),
        ", ".join(name for name, _ in model.named_modules() if name)))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: export_model.py OUT.pt2")
    main(sys.argv[1])
