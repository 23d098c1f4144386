"""`headserve serve`, `info`, `heads`, `head`, `jobs` and `train-head`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from google.protobuf import json_format

from . import event_loop, extras, jobs_cli, remote
from .calls.security import SecurityError
from .config import ConfigError
from .discovery import StartupError
from .extras import MissingExtra
from .observability import logs
from .options import allow_list, parser, settings_of

if TYPE_CHECKING:
    from .core.engine import Core
    from .loading import Settings


def _train_head(args: argparse.Namespace) -> None:
    from headserve.plugins.artifact import Network

    from .backbones.backbone import default_model_dir
    from .core.threads import set_torch_threads
    from .training.command import TrainOptions, train_head
    from .training.data import Columns, DataError
    from .training.features import default_cache_dir
    from .training.fit import FitSettings

    set_torch_threads(args.threads)
    options = TrainOptions(
        task=args.task,
        data=args.data,
        out=args.out,
        model=args.model or default_model_dir(),
        network=Network(args.network, args.hidden, args.dropout),
        fit=FitSettings(
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            weight_decay=args.weight_decay,
            patience=args.patience,
            seed=args.seed,
        ),
        val_fraction=args.val_fraction,
        pooling=args.pooling,
        doc_stride=args.doc_stride,
        cache_dir=None if args.no_cache else (args.cache_dir or default_cache_dir()),
        skip_bad_rows=args.skip_bad_rows,
        columns=Columns(text=args.text_column, label=args.label_column),
        device=args.device,
        progress=not args.quiet,
        backbone_kind=args.backbone_kind,
    )
    try:
        report = train_head(options)
    except (DataError, ValueError, OSError) as exc:
        raise SystemExit(f"headserve train-head: {exc}") from exc
    print("\n".join(report.summary()))
    if args.load_into:
        args.server = args.load_into
        remote.load_trained(args, args.head_name or args.out.name, args.out)


def _pull(args: argparse.Namespace) -> None:
    from .pull import PullError, pull

    try:
        print(pull(args.repo_id, args.dir, args.revision).summary())
    except (PullError, OSError) as exc:
        raise SystemExit(f"headserve pull: {exc}") from None


def _list_heads(args: argparse.Namespace) -> None:
    """`headserve heads`: discover, import and validate every plugin; load no model."""
    from .discovery import plugin_report

    rows = plugin_report(allow_list(args.plugins))
    if args.json:
        print(json.dumps([row._asdict() for row in rows], indent=2))
        return
    columns = ("name", "task", "distribution", "version", "status")
    cells = [columns, *(tuple(str(getattr(r, c)) for c in columns) for r in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns) - 1)]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        _run(argv)
    except (StartupError, MissingExtra) as exc:
        # One line that says why, and no traceback: the configuration is wrong, not the code.
        logging.getLogger("headserve").critical("cannot start: %s", exc)
        raise SystemExit(1) from None
    except ModuleNotFoundError as exc:  # one a feature did not check for
        extra = extras.named_by(exc)
        if extra is None:
            raise
        logging.getLogger("headserve").critical(
            "cannot start: %s", MissingExtra(extra, f"this command (it imports {exc.name})")
        )
        raise SystemExit(1) from None


def _run(argv: list[str]) -> None:
    if argv[:1] == ["ray-config"]:  # its own options, then `serve`'s: parsed by ray_config.py
        _ray_config(argv[1:])
        return
    args = parser().parse_args(argv)
    if args.command == "head" or (args.command == "heads" and args.server):
        remote.run(args)  # a running server's heads: the client alone
        return
    if args.command == "jobs":
        extras.require("http", "headserve jobs")
        jobs_cli.run(args)  # a running server's batch jobs, over its HTTP endpoint
        return
    logs.configure(args.log_level, args.log_format)
    extras.require("server", f"headserve {args.command}")
    if args.command == "heads":
        _list_heads(args)
        return
    if args.command == "pull":
        _pull(args)
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logs.quiet_transformers()
    if args.command == "train-head":
        _train_head(args)
        return
    from .app import serve

    try:
        settings = settings_of(args)
    except (ConfigError, SecurityError, ValueError, OSError) as exc:
        raise StartupError(str(exc)) from exc
    if args.command == "info":
        from .tasks.models import model_info

        info = model_info(_build(settings))
        print(
            json.dumps(
                json_format.MessageToDict(info, always_print_fields_with_no_presence=True), indent=2
            )
        )
        return
    event_loop.run(serve(settings, f"{args.host}:{args.port}"), args.event_loop)


def _ray_config(argv: Sequence[str]) -> None:
    logs.configure("WARNING", "text")
    try:
        extras.require("server", "headserve ray-config")
        from .ray_config import main as print_config

        print_config(argv)
    except (ConfigError, SecurityError, ValueError, OSError, MissingExtra) as exc:
        logging.getLogger("headserve").critical("cannot write the config: %s", exc)
        raise SystemExit(1) from None


def _build(settings: Settings) -> Core:
    """`info`'s core: a configuration that cannot load is a start-up error, as in serve."""
    from .app import build_core

    try:
        return build_core(settings)
    except (ValueError, OSError) as exc:
        raise StartupError(str(exc)) from exc


if __name__ == "__main__":
    main()
