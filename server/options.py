"""The options of the `headserve` commands, and the Settings `headserve serve` runs with.

`ray-config` reads an application's options here as `serve` reads them (ray_config.py).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import event_loop, extras, jobs_cli, remote
from .call_info import REQUEST_ID_IN
from .calls.connections import Connections
from .calls.security import ADMIN_TOKENS_ENV, Security, read_tokens
from .config import head_specs
from .core.limits import Limits, RequestLimits
from .observability import logs

if TYPE_CHECKING:  # loading imports torch: `headserve --help` works in the client install
    from .loading import Settings


class DefaultsShown(argparse.HelpFormatter):
    """Each option's help ends with its default, unless the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default not in (None, False, [], argparse.SUPPRESS)
        if shown and "default" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="headserve",
        description="One backbone, many heads, over gRPC.",
        formatter_class=DefaultsShown,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "model_dir",
            nargs="?",
            type=Path,
            metavar="MODEL_DIR",
            help="a local Hugging Face checkpoint folder (text: an encoder family of "
            "docs/backbones.md such as BERT, RoBERTa, ModernBERT, MPNet, DeBERTa; images: "
            "ResNet, ViT, ConvNeXt), or a model name such as efficientnet-lite0 (default: the "
            "packaged all-MiniLM-L6-v2)",
        )
        p.add_argument(
            "--backbone-kind",
            metavar="KIND",
            help="the backbone kind (entry point group headserve.backbones) that loads "
            "MODEL_DIR, e.g. transformers-text, transformers-image, efficientnet-lite "
            "(default: the first that claims it)",
        )
        p.add_argument(
            "--head",
            action="append",
            default=[],
            metavar="NAME=PLUGIN[:SOURCE][,k=v]",
            help="serve a head, e.g. sentiment=classify:/models/sst2 (repeatable)",
        )
        p.add_argument("--config", type=Path, help="TOML file with [heads.NAME] tables")
        p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when there is one)")
        p.add_argument(
            "--dtype", choices=["float32", "float16", "bfloat16"], help="default float32"
        )
        p.add_argument(
            "--runtime",
            choices=["auto", "torch", "onnx"],
            default="auto",
            help="what runs a text backbone's pass: torch (traced on a CPU), or ONNX Runtime "
            "(exported once, cached in ~/.cache/headserve/onnx, checked against torch at "
            "every start; torch if it differs). auto (default): onnx for float32 on a CPU "
            "when onnxruntime is installed, torch elsewhere",
        )
        p.add_argument(
            "--quantize",
            choices=["none", "int8"],
            default="none",
            help="int8: a text backbone's pass on ONNX Runtime with int8 weights (dynamic, per "
            "channel, feed-forward outputs kept float32; 1.25-1.5x float32 on the packaged "
            "MiniLM, vectors' cosine to float32 0.996 on average, 0.987 at worst: "
            "BENCHMARKS.md). Checked at every start; float32 if a check row falls under 0.98",
        )
        p.add_argument(
            "--allow-unverified-family",
            action="store_true",
            help="serve a text checkpoint whose model family is not in the verified table "
            "(docs/backbones.md), with a warning saying what was not checked; decoder models "
            "among them pool and classify wrongly with the encoder heads",
        )
        p.add_argument(
            "--allow-untrained",
            action="store_true",
            help="serve heads whose weights are missing from their checkpoint (random)",
        )
        p.add_argument(
            "--default-prompt-name",
            metavar="NAME",
            help="the prompt encode heads put before a text when a call names none: one of "
            "the checkpoint's named prompts (config_sentence_transformers.json), e.g. query",
        )
        plugins_arg(p)
        p.add_argument(
            "--allow-pickle",
            action="store_true",
            help="load pickle checkpoints (*.bin): they can run code; default: safetensors only",
        )
        p.add_argument(
            "--require-head",
            action="append",
            default=[],
            metavar="NAME",
            help="refuse to start unless head NAME loads and is usable (repeatable)",
        )
        p.add_argument(
            "--allow-failed-heads",
            action="store_true",
            help="when a head given with --head (or --config) fails to load, serve the others "
            "(default: the start stops, saying which and why)",
        )
        p.add_argument(
            "--head-store",
            type=Path,
            metavar="DIR",
            help="keep the heads loaded, replaced or unloaded at run time (HeadAdmin) in DIR, "
            "and serve them again after a restart (default: kept in memory only)",
        )
        log_args(p)

    def log_args(p: argparse.ArgumentParser, level: str = "INFO") -> None:
        p.add_argument("--log-level", default=level, help="DEBUG, INFO, WARNING, ERROR or CRITICAL")
        p.add_argument(
            "--log-format",
            choices=logs.FORMATS,
            default="text",
            help="text lines, or one JSON object per line (for a log collector)",
        )

    def plugins_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--plugins",
            metavar="NAMES",
            help="comma-separated plugin or distribution names allowed to load code into "
            "the server (default: every installed plugin)",
        )

    serve = sub.add_parser("serve", help="start the server")
    model_args(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 for all)")
    serve.add_argument("--port", type=int, default=50051, help="gRPC port (0: a free one)")
    limits = Limits()
    serve.add_argument(
        "--max-batch-tokens",
        type=int,
        default=limits.max_batch_tokens,
        help="padded tokens per backbone batch (rows x longest row)",
    )
    serve.add_argument(
        "--max-batch-items",
        type=int,
        default=limits.max_batch_items,
        help="rows per backbone batch",
    )
    serve.add_argument(
        "--max-wait-ms",
        type=float,
        default=limits.max_wait_ms,
        help="longest wait for a batch to fill while the model is idle",
    )
    serve.add_argument(
        "--max-queue-items",
        type=int,
        default=limits.max_queue_items,
        help="rows waiting for the model; beyond it unary calls get RESOURCE_EXHAUSTED "
        "(default: %(default)s)",
    )
    serve.add_argument(
        "--long-call-tokens",
        type=int,
        default=limits.long_call_tokens,
        help="a call with more backbone tokens than this (a long document, a large batch) "
        "queues that many at a time behind the calls that came meanwhile, and leaves a "
        "worker to them (default: %(default)s)",
    )
    serve.add_argument(
        "--bulk-batch-tokens",
        type=int,
        default=limits.bulk_batch_tokens,
        help="while interactive calls are queued or came in the last second, a batch carries "
        "at most this many tokens of bulk calls' rows (x-priority: bulk) (default: %(default)s)",
    )
    serve.add_argument(
        "--feature-cache-mb",
        type=int,
        default=0,
        metavar="MB",
        help="keep the backbone's output for rows seen before, at most MB megabytes of it (least "
        "recently used out): a row asked again, of any head, skips the backbone (default: off)",
    )
    serve.add_argument(
        "--feature-cache-for",
        choices=("all", "bulk"),
        default="all",
        help="whose rows the feature cache keeps: every call's, or bulk calls' alone (batch "
        "jobs, x-priority: bulk), interactive rows always going through the backbone "
        "(default: %(default)s)",
    )
    serve.add_argument(
        "--jobs-dir",
        type=Path,
        metavar="DIR",
        help="run batch jobs (the Jobs gRPC service, and OpenAI's Files and Batch APIs on "
        "--http-port), kept in DIR: their state in SQLite, their files beside it; unfinished "
        "jobs resume after a restart",
    )
    serve.add_argument(
        "--max-job-bytes",
        type=int,
        default=200 * 2**20,
        help="the largest job input file an upload may be (default: %(default)s)",
    )
    serve.add_argument(
        "--stream-in-flight-items",
        type=int,
        default=limits.stream_in_flight_items,
        help="items of one stream in flight; the stream stops reading beyond it "
        "(default: %(default)s)",
    )
    requests = RequestLimits()
    for name, text in (
        ("max_request_items", "items in one request (a call, or one stream message)"),
        ("max_item_chars", "characters in one text field of an item"),
        ("max_item_tokens", "backbone tokens one item may cost (every head and window)"),
        ("max_document_tokens", "tokens of one text read in chunks or windows"),
        ("max_message_bytes", "bytes of one request or response message"),
        ("max_concurrent_calls", "calls in progress at once, streams included, every transport"),
        ("max_streams", "streams open at once (below --max-concurrent-calls)"),
        ("max_image_pixels", "pixels (width x height) of one image item, checked before decoding"),
        ("max_image_decode_bytes", "memory the images decoding at once may take, all calls"),
        ("max_head_upload_bytes", "bytes of a head artifact uploaded in a LoadHead call"),
    ):
        serve.add_argument(
            "--" + name.replace("_", "-"),
            type=int,
            default=getattr(requests, name),
            help=f"{text} (default: %(default)s)",
        )
    connections = Connections()
    for name, kind, text in (
        ("keepalive_seconds", float, "ping a gRPC connection quiet this long"),
        ("keepalive_timeout_seconds", float, "drop a connection whose ping has no answer by then"),
        ("connection_idle_seconds", float, "close a gRPC connection with no call this long"),
        ("connection_age_seconds", float, "close every gRPC connection after this long (0: never)"),
        ("connection_age_grace_seconds", float, "time an aged connection's calls get to finish"),
        ("stream_idle_timeout", float, "end a stream that sent nothing this long (0: never)"),
        ("max_health_watches", int, "health Watch streams open at once, apart from the calls"),
        ("http_max_connections", int, "HTTP connections open at once; more get 503"),
        ("http_header_timeout", float, "seconds for an HTTP request's head to arrive, else 408"),
        ("http_body_timeout", float, "seconds for an HTTP request's body to arrive, else 408"),
        ("http_keepalive_timeout", float, "close a kept-alive HTTP connection idle this long"),
        ("http_max_header_bytes", int, "bytes of an HTTP request's head; more get 431"),
        ("http_max_headers", int, "header fields of an HTTP request; more get 431"),
        ("http_max_json_values", int, "values in an HTTP request's JSON body; more get 413"),
    ):
        serve.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            default=getattr(connections, name),
            help=f"{text} (default: %(default)s)",
        )
    serve.add_argument("--tls-cert", type=Path, help="serve TLS: certificate chain (PEM)")
    serve.add_argument("--tls-key", type=Path, help="serve TLS: private key (PEM)")
    serve.add_argument(
        "--tls-client-ca", type=Path, help="mutual TLS: require client certificates from this CA"
    )
    serve.add_argument(
        "--auth-token-file",
        type=Path,
        help="require 'authorization: Bearer <token>' with a token from this file (one per "
        "line); tokens may also come from $HEADSERVE_AUTH_TOKENS, never from the command line",
    )
    serve.add_argument("--open-health", action="store_true", help="health checks need no token")
    serve.add_argument(
        "--admin-token-file",
        type=Path,
        help="turn the admin RPCs on (HeadAdmin: load, replace, unload heads at run time) for "
        "the tokens in this file (one per line), or $HEADSERVE_ADMIN_TOKENS; a caller's "
        "token gets PERMISSION_DENIED there. Without: admin RPCs answer UNIMPLEMENTED",
    )
    serve.add_argument(
        "--workers",
        type=int,
        help="batches the model computes at once (default: on a CPU one per core, at most 4; "
        "on a GPU 1)",
    )
    serve.add_argument(
        "--threads", type=int, help="torch threads per worker (default: the cores / workers)"
    )
    serve.add_argument(
        "--worker-nice",
        type=int,
        default=limits.worker_nice,
        help="how much lower the model workers' CPU priority is than the event loop's "
        "(Linux; 0: the same)",
    )
    serve.add_argument(
        "--no-trace",
        dest="trace",
        action="store_false",
        help="run the backbone's packed pass as Python, not as a checked TorchScript trace",
    )
    serve.add_argument("--grace", type=float, default=10.0, help="seconds to finish calls on stop")
    serve.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus metrics over HTTP on this port, at /metrics (default: off; "
        "0 picks a free port)",
    )
    serve.add_argument(
        "--http-port",
        type=int,
        help="also serve the OpenAI-style HTTP API on this port (POST /v1/embeddings, "
        "/v1/rerank; GET /v1/models, /health), on the same host, TLS and tokens as gRPC "
        "(default: off; 0 picks a free port)",
    )
    serve.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address the metrics endpoint binds to (it has no authentication)",
    )
    serve.add_argument(
        "--access-log",
        choices=["on", "off"],
        default="on",
        help="a log line per finished call and per stream request (headserve.access)",
    )
    serve.add_argument(
        "--request-id-metadata",
        choices=REQUEST_ID_IN,
        default="initial",
        help="where a unary call's x-request-id goes back: in the initial metadata, sent "
        "first (default), or in the trailing metadata with the response or the error, which "
        "saves the server a write per call (BENCHMARKS.md); a stream always gets it first",
    )
    serve.add_argument(
        "--otlp-endpoint",
        metavar="URL",
        help="send OpenTelemetry traces over OTLP/gRPC to URL, e.g. http://localhost:4317 "
        "(default: off, unless the OTEL_EXPORTER_OTLP_* variables set an endpoint)",
    )
    serve.add_argument(
        "--event-loop",
        choices=event_loop.KINDS,
        default=event_loop.default_kind(),
        help="the event loop that runs gRPC, tokenizing and the batching (default: uvloop "
        "where it is installed)",
    )

    sub.add_parser(
        "ray-config",
        help="print a Ray Serve config file serving `serve`'s options (docs/scaling.md); "
        "`headserve ray-config --help` lists its own",
        add_help=False,
    )

    pull = sub.add_parser(
        "pull",
        help="download a model folder from the Hugging Face Hub (configuration, tokenizer and "
        "safetensors files only), ready for `serve`",
    )
    pull.add_argument(
        "repo_id", metavar="REPO_ID", help="e.g. sentence-transformers/all-MiniLM-L6-v2"
    )
    pull.add_argument("dir", metavar="DIR", type=Path, help="the folder to write it into")
    pull.add_argument("--revision", help="a branch, tag or commit (default: main)")
    log_args(pull)

    info = sub.add_parser("info", help="print what `serve` would serve, as JSON")
    model_args(info)

    heads = sub.add_parser(
        "heads",
        help="list the installed head plugins and their status, or with --server a running "
        "server's heads and their versions",
    )
    plugins_arg(heads)
    heads.add_argument("--json", action="store_true", help="print JSON instead of a table")
    remote.server_args(heads, admin=False)
    log_args(heads, "CRITICAL")  # the table already shows failures
    remote.add_commands(sub)
    jobs_cli.add_commands(sub)

    train = sub.add_parser(
        "train-head",
        help="train a classify or qa head on the frozen backbone; write a head artifact",
        description="Computes the backbone's features once (cached), trains a small network on "
        "them with a held-out validation split and early stopping, and writes DIR/head.json + "
        "DIR/head.safetensors, served by `headserve serve --head NAME=DIR`.",
    )
    train.add_argument("--task", required=True, choices=["classify", "qa"])
    train.add_argument(
        "--model",
        type=Path,
        help="the backbone the head will be served on, as `serve` takes it: a folder or a "
        "name such as efficientnet-lite0 (default: the packaged model)",
    )
    train.add_argument("--backbone-kind", metavar="KIND", help="as for serve")
    train.add_argument(
        "--data",
        required=True,
        type=Path,
        help="classify: .jsonl/.csv/.tsv with text, label[, text_pair]; on an image backbone, "
        "with image (a path) instead of text, or a folder of class folders of images; "
        "qa: SQuAD-style .jsonl (question, context, answer_text + answer_start or answers)",
    )
    train.add_argument("--out", required=True, type=Path, help="the artifact folder to write")
    train.add_argument(
        "--network",
        choices=["linear", "mlp", "tail"],
        default="linear",
        help="tail: retrain a copy of the backbone's last block under a linear layer (the "
        "tutorial's fine-tuning; efficientnet-lite backbones)",
    )
    train.add_argument("--hidden", type=int, default=256, help="MLP hidden units")
    train.add_argument("--dropout", type=float, default=0.1, help="MLP dropout")
    train.add_argument("--epochs", type=int, default=100, help="at most; early stopping decides")
    train.add_argument("--patience", type=int, default=5, help="epochs without improvement")
    train.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    train.add_argument("--batch-size", type=int, default=64, help="examples per step")
    train.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    train.add_argument("--val-fraction", type=float, default=0.2, help="held out for validation")
    train.add_argument("--seed", type=int, default=0, help="the split and the initial weights")
    train.add_argument("--pooling", choices=["mean", "cls"], default="mean", help="classify")
    train.add_argument("--doc-stride", type=int, default=128, help="qa: window overlap, tokens")
    train.add_argument(
        "--cache-dir", type=Path, help="feature cache (default: ~/.cache/headserve/features)"
    )
    train.add_argument("--no-cache", action="store_true", help="compute features, keep none")
    train.add_argument(
        "--skip-bad-rows", action="store_true", help="train on the good rows; bad ones are listed"
    )
    train.add_argument(
        "--text-column", default="text", help="the data's column of texts (default: text)"
    )
    train.add_argument(
        "--label-column", default="label", help="the data's column of labels (default: label)"
    )
    train.add_argument("--device", help="cpu, cuda ... (default: cuda when there is one)")
    train.add_argument("--threads", type=int, help="torch CPU threads (default: one per core)")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.add_argument(
        "--load-into",
        metavar="HOST:PORT",
        help="then load the head into this running server (HeadAdmin; --admin-token-file)",
    )
    train.add_argument(
        "--head-name", metavar="NAME", help="its name there (default: the --out folder's name)"
    )
    train.add_argument(
        "--replace", action="store_true", help="replace the served head of that name there"
    )
    remote.shadow_args(train)
    train.add_argument(
        "--admin-token-file",
        type=Path,
        help="for --load-into: a file whose first token is the server's admin token "
        "(or $HEADSERVE_ADMIN_TOKENS)",
    )
    train.add_argument(
        "--tls-ca", type=Path, help="for --load-into: TLS, the server's certificate's CA"
    )
    log_args(train)
    for command in sub.choices.values():
        command.formatter_class = DefaultsShown
    return parser


def allow_list(text: str | None) -> tuple[str, ...] | None:
    return tuple(p.strip() for p in text.split(",") if p.strip()) if text else None


def require_extras(args: argparse.Namespace) -> None:
    """Each feature asked for has its extra installed, or the start stops in one line."""
    extras.require("server", f"headserve {args.command}")
    wanted = {
        "onnx": (args.runtime == "onnx" and "--runtime onnx")
        or (args.quantize == "int8" and "--quantize int8"),
        "http": getattr(args, "http_port", None) is not None and "--http-port",
        "tracing": getattr(args, "otlp_endpoint", None) is not None and "--otlp-endpoint",
    }
    for extra, feature in wanted.items():
        if feature:
            extras.require(extra, feature)


def settings_of(args: argparse.Namespace) -> Settings:
    from .loading import Settings

    require_extras(args)
    extra = {}
    if args.command == "serve":
        extra = dict(
            limits=Limits(
                max_batch_tokens=args.max_batch_tokens,
                max_batch_items=args.max_batch_items,
                max_wait_ms=args.max_wait_ms,
                max_queue_items=args.max_queue_items,
                long_call_tokens=args.long_call_tokens,
                bulk_batch_tokens=args.bulk_batch_tokens,
                stream_in_flight_items=args.stream_in_flight_items,
                workers=args.workers,
                worker_nice=args.worker_nice,
            ),
            feature_cache_mb=args.feature_cache_mb,
            feature_cache_for=args.feature_cache_for,
            jobs_dir=args.jobs_dir,
            max_job_bytes=args.max_job_bytes,
            request_limits=RequestLimits(
                **{f.name: getattr(args, f.name) for f in dataclasses.fields(RequestLimits)}
            ),
            connections=Connections(
                **{f.name: getattr(args, f.name) for f in dataclasses.fields(Connections)}
            ),
            security=Security(
                tls_cert=args.tls_cert,
                tls_key=args.tls_key,
                tls_client_ca=args.tls_client_ca,
                tokens=read_tokens(args.auth_token_file),
                open_health=args.open_health,
                admin_tokens=read_tokens(
                    args.admin_token_file, variable=ADMIN_TOKENS_ENV, flag="--admin-token-file"
                ),
            ),
            threads=args.threads,
            trace=args.trace,
            grace_seconds=args.grace,
            metrics_port=args.metrics_port,
            metrics_host=args.metrics_host,
            http_port=args.http_port,
            access_log=args.access_log == "on",
            request_id_in=args.request_id_metadata,
            otlp_endpoint=args.otlp_endpoint,
        )
    return Settings(
        model_dir=args.model_dir,
        backbone_kind=args.backbone_kind,
        runtime=args.runtime,
        quantize=args.quantize,
        heads=head_specs(args.head, args.config),
        device=args.device,
        dtype=args.dtype,
        allow_untrained=args.allow_untrained,
        allow_unverified_family=args.allow_unverified_family,
        default_prompt_name=args.default_prompt_name,
        plugins=allow_list(args.plugins),
        require_heads=tuple(args.require_head),
        allow_failed_heads=args.allow_failed_heads,
        allow_pickle=args.allow_pickle,
        head_store=args.head_store,
        **extra,
    )


def serve_settings(argv: Sequence[str]) -> Settings:
    """The Settings `headserve serve ARGV...` would run with (a Ray Serve replica's too)."""
    return settings_of(parser().parse_args(["serve", *argv]))
