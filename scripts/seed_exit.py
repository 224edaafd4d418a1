"""The seed's early-exit ResNet-20 in eager PyTorch, as a module for DistributedDataParallel:
make_fixtures.py's ResNetCifar with the exit branch (AvgPool2d(3), Flatten, Linear(1600, 10))
run by a forward hook on layer1[2].relu2, as Distiller's BranchPoint does. forward returns
(exit output, final output)."""
import torch.nn as nn

from make_fixtures import ResNetCifar


class SeedExitResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = ResNetCifar()
        self.branch = nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, 10))
        self.cache = {}
        self.model.layer1[2].relu2.register_forward_hook(lambda m, i, o: self.cache.__setitem__("exit", self.branch(o)))

    def forward(self, x):
        final = self.model(x)
        return self.cache.pop("exit"), final
