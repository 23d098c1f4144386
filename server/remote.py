"""`headserve head load|unload|default` and `headserve heads --server`: a running server's
heads, changed and listed through the typed client (the HeadAdmin RPCs, GetModelInfo).

These commands only talk to a server: they work in the client-only install (no torch).

    headserve head load mood=./heads/mood --server HOST:PORT --admin-token-file admin.txt
    headserve head load mood=classify:/srv/ckpt,activation=sigmoid --server ... --replace
    headserve head unload mood --server ... --admin-token-file admin.txt
    headserve head default mood --server ... --admin-token-file admin.txt
    headserve heads --server HOST:PORT [--token-file callers.txt]

`NAME=DIR` (a head artifact, as `serve --head` takes it) is sent from this machine; in
`NAME=PLUGIN:SOURCE`, SOURCE is a folder the server reads.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .calls.security import ADMIN_TOKENS_ENV, TOKENS_ENV, SecurityError, read_tokens
from .config import ConfigError, parse_head

__all__ = ["add_commands", "run"]


def add_commands(sub: Any) -> None:
    """The `head` command (load, unload, default) on `sub` (the CLI's subparsers)."""
    head = sub.add_parser(
        "head",
        help="load, replace, unload a head on a running server, or make it default (an admin "
        "token: the server's --admin-token-file)",
    )
    actions = head.add_subparsers(dest="action", required=True, metavar="ACTION")
    load = actions.add_parser("load", help="load a head (NAME=DIR or NAME=PLUGIN[:SOURCE][,k=v])")
    load.add_argument(
        "spec",
        metavar="SPEC",
        help="as `serve --head`: NAME=DIR, a head artifact on this machine (sent), or "
        "NAME=PLUGIN[:SOURCE][,key=value...], SOURCE a folder the server reads",
    )
    load.add_argument("--replace", action="store_true", help="replace the served head of that name")
    shadow_args(load)
    for name, text in (
        ("unload", "stop serving a head (or running a shadow)"),
        ("default", "make a head the default of its task"),
        ("promote", "put a shadow head in place of the head it shadows, under its name"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("name", metavar="NAME")
    for action in actions.choices.values():
        server_args(action, admin=True)


def shadow_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shadow",
        metavar="LIVE_HEAD",
        help="load it as a shadow of LIVE_HEAD: run beside it, compared, never answering "
        "(`headserve heads --server` shows the agreement; `head promote` makes it live)",
    )
    parser.add_argument(
        "--fraction",
        type=float,
        help="with --shadow: the share of LIVE_HEAD's calls it runs on (default: all)",
    )


def server_args(parser: argparse.ArgumentParser, *, admin: bool) -> None:
    """--server and the token file (and TLS's root) of a command that calls a server."""
    parser.add_argument(
        "--server", required=admin, metavar="HOST:PORT", help="the running server to call"
    )
    if admin:
        parser.add_argument(
            "--admin-token-file",
            type=Path,
            help=f"a file whose first token is an admin token (or ${ADMIN_TOKENS_ENV})",
        )
    else:
        parser.add_argument(
            "--token-file",
            type=Path,
            help=f"a file whose first token is a caller's token (or ${TOKENS_ENV})",
        )
    parser.add_argument(
        "--tls-ca", type=Path, help="call over TLS, the server's certificate signed by this CA"
    )


def open_client(args: argparse.Namespace, *, admin: bool, **options: Any) -> Any:
    """The typed client a command's `server_args` name (`options`: the Client's others)."""
    from headserve.client import TLS, Client

    path = args.admin_token_file if admin else args.token_file
    variable = ADMIN_TOKENS_ENV if admin else TOKENS_ENV
    flag = "--admin-token-file" if admin else "--token-file"
    try:
        tokens = read_tokens(path, variable=variable, flag=flag)
    except SecurityError as exc:
        raise SystemExit(f"headserve {args.command}: {exc}") from None
    tls = TLS(ca=str(args.tls_ca)) if args.tls_ca else None
    options = {"max_retries": 0, **options}
    return Client(args.server, token=tokens[0] if tokens else None, tls=tls, **options)


def run(args: argparse.Namespace) -> None:
    """`headserve head ...`, or `headserve heads --server`: one line, or the table."""
    from headserve.client import HeadserveError

    try:
        if args.command == "heads":
            _table(args)
            return
        with open_client(args, admin=True) as client:
            if args.action == "load":
                print(_changed("loaded", _load(client, args), args.server))
            elif args.action == "unload":
                print(_changed("unloaded", client.unload_head(args.name), args.server))
            elif args.action == "promote":
                print(_changed("promoted", client.promote_head(args.name), args.server))
            else:
                print(_changed("made default", client.set_default_head(args.name), args.server))
    except HeadserveError as exc:  # its text starts with its code
        raise SystemExit(f"headserve {args.command}: {exc}") from None


def load_trained(args: argparse.Namespace, name: str, artifact: Path) -> None:
    """`train-head --load-into`: the artifact just written, sent to the running server."""
    from headserve.client import HeadserveError

    try:
        with open_client(args, admin=True) as client:
            change = client.load_head(
                name,
                artifact=artifact,
                replace=args.replace,
                shadow_of=args.shadow,
                shadow_fraction=args.fraction,
            )
    except HeadserveError as exc:
        raise SystemExit(f"headserve train-head --load-into: {exc}") from None
    print(_changed("loaded", change, args.server))


def _load(client: Any, args: argparse.Namespace) -> Any:
    try:
        spec = parse_head(args.spec)
    except ConfigError as exc:
        raise SystemExit(f"headserve head load: {exc}") from None
    name, rest = args.spec.split("=", 1)
    is_artifact = spec.source is not None and ":" not in rest.split(",", 1)[0]
    if is_artifact:  # NAME=DIR: this machine's artifact, sent
        return client.load_head(
            spec.name,
            artifact=spec.source,
            options=spec.options,
            replace=args.replace,
            shadow_of=args.shadow,
            shadow_fraction=args.fraction,
        )
    return client.load_head(
        spec.name,
        plugin=spec.plugin,
        source=str(spec.source) if spec.source else None,
        options=spec.options,
        replace=args.replace,
        shadow_of=args.shadow,
        shadow_fraction=args.fraction,
    )


def _changed(what: str, change: Any, server: str) -> str:
    head = change.head
    replaced = f", replacing {change.replaced_version}" if change.replaced_version else ""
    default = ", the default" if head.is_default else ""
    shadow = f", shadowing {head.shadow_of}" if head.shadow_of else ""
    detail = f"{head.task}, {head.head_version}{replaced}{default}{shadow}"
    return f"{what} {head.name} ({detail}) on {server}"


def _table(args: argparse.Namespace) -> None:
    with open_client(args, admin=False) as client:
        heads = client.model_info().heads
    rows = [
        {
            "name": h.name,
            "task": h.task,
            "version": h.head_version,
            "default": "yes" if h.is_default else "",
            "usable": "yes" if h.usable else ("shadow" if h.shadow_of else "no (--json: why)"),
            "detail": h.detail,
            "shadows": _agreement(h) if h.shadow_of else "",
            "plugin": h.plugin,
            "source": h.source,
        }
        for h in heads
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    columns = [c for c in rows[0] if c != "detail"] if rows else ["name"]
    cells = [columns, *([row[c] for c in columns] for row in rows)]
    widths = [max(len(str(row[i])) for row in cells) for i in range(len(columns))]
    for row in cells:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _agreement(head: Any) -> str:
    """A shadow's live head and its agreement so far, in a table cell."""
    shadow = head.shadow
    measures = {
        "top1_agreement": "top-1",
        "mean_abs_probability_difference": "mean |dp|",
        "mean_cosine": "cosine",
        "exact_match": "exact match",
    }
    shown = [
        f"{label} {getattr(shadow, name):.4f}"
        for name, label in measures.items()
        if getattr(shadow, name) == getattr(shadow, name)  # not NaN: this task's, measured
    ]
    return f"{head.shadow_of}: {shadow.items} items" + "".join(f", {m}" for m in shown)
