"""Head configuration: `--head` options and the `--config` TOML file.

    --head NAME=PLUGIN[:SOURCE][,key=value...]
    --head sentiment=classify:/models/sst2
    --head topics=classify:/models/topics,multi_label=true

    # heads.toml
    [heads.sentiment]
    plugin = "classify"
    source = "/models/sst2"
    [heads.topics]
    plugin = "classify"
    source = "/models/topics"
    multi_label = true

With no heads configured, the server runs one head per built-in task, named
after it and loaded from the backbone's own folder; on the packaged default model,
the classifier is the packaged sentiment head (trained by `make sentiment-head`).
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import tomllib

from headserve.plugins.contract import HeadSpec
from headserve.plugins.metadata import MetadataError, read_json

BUILTIN_TASKS = ("encode", "mlm", "classify", "qa")
ARTIFACT_PLUGINS = {"classify": "trained_classify", "qa": "trained_qa"}  # plugins/trained.py
PACKAGED_SENTIMENT = "artifacts/minilm-sentiment"  # in headserve.plugins


class ConfigError(ValueError):
    pass


def parse_head(text: str) -> HeadSpec:
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise ConfigError(f"--head {text!r}: expected NAME=PLUGIN[:SOURCE][,key=value...]")
    first, *pairs = rest.split(",")
    plugin, colon, source = first.partition(":")
    if not colon and _looks_like_path(first):
        plugin, source = artifact_plugin(Path(first).expanduser()), first
    options: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise ConfigError(f"--head {text!r}: option {pair!r} is not key=value")
        options[key.strip()] = value.strip()
    return HeadSpec(name.strip(), plugin.strip(), Path(source) if source else None, options)


def _looks_like_path(text: str) -> bool:
    return text.startswith((".", "/", "~")) or "/" in text or (Path(text) / "head.json").is_file()


def artifact_plugin(folder: Path) -> str:
    """The plugin that serves the head artifact in `folder` (from its head.json task)."""
    meta = folder / "head.json"
    try:
        task = read_json(meta).get("task")
    except FileNotFoundError as exc:
        raise ConfigError(f"{folder}: not a head artifact (no head.json)") from exc
    except (OSError, MetadataError, AttributeError) as exc:
        raise ConfigError(f"{meta}: unreadable: {exc}") from exc
    if task not in ARTIFACT_PLUGINS:
        raise ConfigError(f"{meta}: unknown task {task!r}")
    return ARTIFACT_PLUGINS[task]


def packaged_sentiment_head() -> Path:
    return Path(str(resources.files("headserve.plugins") / PACKAGED_SENTIMENT))


def default_heads(*, packaged_model: bool) -> tuple[HeadSpec, ...]:
    """One head per built-in task from the backbone's folder; the packaged model (which has
    no task heads) gets the packaged sentiment classifier."""
    specs = [HeadSpec(task, task) for task in BUILTIN_TASKS]
    sentiment = packaged_sentiment_head()
    if packaged_model and (sentiment / "head.json").is_file():
        specs[BUILTIN_TASKS.index("classify")] = HeadSpec(
            "sentiment", ARTIFACT_PLUGINS["classify"], sentiment
        )
    return tuple(specs)


def read_config(path: Path) -> tuple[HeadSpec, ...]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}: not valid TOML ({exc})") from exc
    specs = []
    for name, table in data.get("heads", {}).items():
        if not isinstance(table, dict) or not ("plugin" in table or "source" in table):
            raise ConfigError(
                f'{path}: [heads.{name}] needs plugin = "..." (or source = an artifact folder)'
            )
        options = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in table.items()}
        source = options.pop("source", None)
        plugin = options.pop("plugin", None) or (artifact_plugin(Path(source)) if source else "")
        specs.append(HeadSpec(name, plugin, Path(source) if source else None, options))
    return tuple(specs)


def head_specs(cli: Sequence[str], config: Path | None) -> tuple[HeadSpec, ...]:
    """The configured heads, config file first; () when there are none (see default_heads)."""
    specs = list(read_config(config)) if config else []
    specs += [parse_head(h) for h in cli]
    return tuple(specs)
