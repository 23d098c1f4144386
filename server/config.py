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
after it and loaded from the backbone's own folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import tomllib

from headserve.plugins.contract import HeadSpec

BUILTIN_TASKS = ("encode", "mlm", "classify", "qa")


class ConfigError(ValueError):
    pass


def parse_head(text: str) -> HeadSpec:
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise ConfigError(f"--head {text!r}: expected NAME=PLUGIN[:SOURCE][,key=value...]")
    first, *pairs = rest.split(",")
    plugin, _, source = first.partition(":")
    options: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise ConfigError(f"--head {text!r}: option {pair!r} is not key=value")
        options[key.strip()] = value.strip()
    return HeadSpec(name.strip(), plugin.strip(), Path(source) if source else None, options)


def read_config(path: Path) -> tuple[HeadSpec, ...]:
    with path.open("rb") as f:
        data = tomllib.load(f)
    specs = []
    for name, table in data.get("heads", {}).items():
        if not isinstance(table, dict) or "plugin" not in table:
            raise ConfigError(f'{path}: [heads.{name}] needs plugin = "..."')
        options = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in table.items()}
        plugin = options.pop("plugin")
        source = options.pop("source", None)
        specs.append(HeadSpec(name, plugin, Path(source) if source else None, options))
    return tuple(specs)


def head_specs(cli: Sequence[str], config: Path | None) -> tuple[HeadSpec, ...]:
    """The configured heads, config file first; the built-in defaults when there are none."""
    specs = list(read_config(config)) if config else []
    specs += [parse_head(h) for h in cli]
    if not specs:
        return tuple(HeadSpec(task, task) for task in BUILTIN_TASKS)
    return tuple(specs)
