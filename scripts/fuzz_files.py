"""Makes and judges the damaged files of the fuzz suite (scripts/fuzz.ts), independently of
the library: Python's zipfile says whether a file's own checksums and sizes show damage.

  python3 fuzz_files.py JOB.json

JOB: {"seed": int, "out": folder, "cases": [{"id": int, "base": path, "family": "bytes"|"content"}]}
Prints one JSON line: {"<id>": {"path": ..., "mutation": ..., "damaged": bool}, ...}

- "bytes": the file's bytes are changed (flips, a cut, zeroed, inserted or deleted ranges,
  changes near the end where the zip directory lives). Checksums are left as they were.
- "content": one entry's data is changed and the archive is written again with correct
  checksums: a valid zip with damaged content, which only LibTorch's own parsing can refuse.
- "storage": one tensor storage (data/N, constants/N) is made shorter or longer (cut, bytes
  inserted or deleted) and the archive written again with correct checksums: its tensors no
  longer fit their storage, which no checksum shows. (Its bytes flipped in place would be a
  valid file of other weights, which nothing in the format can tell from the original.)
- "pickle": bytes of data.pkl flipped, cut or inserted, written again with correct checksums.
- "weights": bytes of one storage flipped in place, written again with correct checksums: a
  valid file of other weights (for checkpoints, whose digests must find it).
"""
import json
import os
import random
import sys
import zipfile


def judge(path):
    """True when Python's zipfile finds the archive damaged (bad CRC, sizes, names or structure)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is not None
    except Exception:
        return True


def mutate_bytes(data, rng):
    data = bytearray(data)
    kind = rng.choice(["flip", "flip", "flip", "cut", "zero", "insert", "delete", "tail"])
    if kind == "flip":
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data))
            data[at] ^= rng.randint(1, 255)
        return bytes(data), "flip"
    if kind == "cut":
        return bytes(data[: rng.randrange(len(data))]), "cut"
    if kind == "zero":
        at = rng.randrange(len(data))
        end = min(len(data), at + rng.randint(1, 256))
        data[at:end] = bytes(end - at)
        return bytes(data), "zero"
    if kind == "insert":
        at = rng.randrange(len(data))
        return bytes(data[:at] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))) + data[at:]), "insert"
    if kind == "delete":
        at = rng.randrange(len(data))
        return bytes(data[:at] + data[at + rng.randint(1, 64):]), "delete"
    at = len(data) - 1 - rng.randrange(min(len(data), 512))
    data[at] ^= rng.randint(1, 255)
    return bytes(data), "tail"


def is_storage(name):
    return name.split("/")[-2:-1] in (["data"], ["constants"]) and not name.endswith(".pkl")


def mutate_content(path, target, rng, family):
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        if family in ("storage", "weights"):
            candidates = [n for n in names if is_storage(n)]
        elif family == "pickle":
            candidates = [n for n in names if n.endswith("/data.pkl")]
        else:
            # The entries LibTorch parses itself: pickles, code, constants, versions.
            candidates = [n for n in names if not is_storage(n)]
        name = rng.choice(candidates or names)
        entries = [(n, archive.read(n)) for n in names]
    out = []
    how = None
    for n, data in entries:
        if n == name and data:
            data = bytearray(data)
            how = rng.choice(["cut", "insert", "delete"] if family == "storage" else ["flip"] if family == "weights" else ["flip", "cut", "insert"])
            if how == "delete":
                at = rng.randrange(len(data))
                data = data[:at] + data[at + rng.randint(1, 64):]
            elif how == "flip":
                for _ in range(rng.randint(1, 3)):
                    at = rng.randrange(len(data))
                    data[at] ^= rng.randint(1, 255)
            elif how == "cut":
                data = data[: rng.randrange(len(data))]
            else:
                at = rng.randrange(len(data))
                data = data[:at] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 16))) + data[at:]
            data = bytes(data)
        out.append((n, data))
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
        for n, data in out:
            archive.writestr(n, data)
    return "%s-%s:%s" % (family, how, name)


def main():
    job = json.load(open(sys.argv[1]))
    results = {}
    for case in job["cases"]:
        rng = random.Random(job["seed"] * 1000003 + case["id"])
        target = os.path.join(job["out"], "case-%d%s" % (case["id"], os.path.splitext(case["base"])[1]))
        if case["family"] != "bytes":
            mutation = mutate_content(case["base"], target, rng, case["family"])
        else:
            data, mutation = mutate_bytes(open(case["base"], "rb").read(), rng)
            open(target, "wb").write(data)
        results[str(case["id"])] = {"path": target, "mutation": mutation, "damaged": judge(target)}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
