#!/usr/bin/python3
"""The AOTInductor side of scripts/bench-peer.ts (--aoti): PyTorch's own ahead-of-time
compiler on the same exported program (NAME.pt2 of scripts/peer_models.py), to place this
library's compiled forward against it (issue 28).

Compiled once per model with freezing on (weights as constants, oneDNN convolutions with
their ReLU and add fused, weights prepacked), as torch._inductor.aoti_compile_and_package
makes it, then kept beside the exported program (NAME.aoti-<batch>.pt2). Served by
bench_side.py's protocol; its factory `aoti` takes `pt2`, `batch`, `inputShape`, `threads`.

A step is what the Node sides' steps are: a tensor made from a flat float32 buffer, the
forward under torch.inference_mode(), the output read back as a flat buffer. The input is the
Node side's (bench-peer.ts's `input`: the same xorshift generator and Box-Muller transform),
so the outputs are compared before timing.
"""
import array
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from bench_side import serve_side  # noqa: E402


def peer_input(count):
    """bench-peer.ts's input(): xorshift32 uniforms, a Box-Muller normal each pair of draws."""
    state = 0x9E3779B9
    data = array.array("f", bytes(4 * count))

    def uniform():
        nonlocal state
        state ^= (state << 13) & 0xFFFFFFFF
        state ^= state >> 17
        state ^= (state << 5) & 0xFFFFFFFF
        return (state + 0.5) / 4294967296

    for i in range(count):
        u = uniform()
        v = uniform()
        data[i] = math.sqrt(-2 * math.log(u)) * math.cos(2 * math.pi * v)
    return data


class Aoti:
    def __init__(self, options):
        torch.set_num_threads(int(options.get("threads", 1)))
        pt2 = options["pt2"]
        self.shape = [int(options["batch"])] + [int(d) for d in options["inputShape"]]
        package = pt2[: -len(".pt2")] + ".aoti-%d.pt2" % self.shape[0]
        if not os.path.isfile(package):
            import torch._inductor.config as config

            config.freezing = True
            program = torch.export.load(pt2)
            # Compiled for this batch size, as a caller that knows it would.
            example = torch.randn(self.shape)
            program = torch.export.export(program.module(), (example,))
            # Written beside and renamed, so that an interrupted compile leaves no package behind.
            partial = package[: -len(".pt2")] + ".partial.pt2"
            torch._inductor.aoti_compile_and_package(program, package_path=partial)
            os.replace(partial, package)
        self.model = torch._inductor.aoti_load_package(package)
        self.data = peer_input(math.prod(self.shape))
        self.describe = "AOTInductor (PyTorch %s, freezing), %d thread(s)" % (torch.__version__, torch.get_num_threads())

    def once(self):
        with torch.inference_mode():
            x = torch.frombuffer(self.data, dtype=torch.float32).reshape(self.shape)
            return array.array("f", self.model(x).reshape(-1).numpy().tobytes())

    def step(self):
        self.once()

    def output(self):
        return list(self.once())


if __name__ == "__main__":
    serve_side({"aoti": Aoti})
