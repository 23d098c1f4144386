"""The Models service's tasks: what the server holds (GetModelInfo), and its tokenizer
(Tokenize)."""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
import json
import math
from typing import Any

from headserve.plugins.backbones import Backbone
from headserve.v1 import common_pb2
from headserve.v1 import models_pb2 as pb

from ..backbones.families import Family, family_of
from ..core.engine import Core
from ..core.heads import HeadRegistry, ServedHead
from ..core.shadows import MEASURES, Shadow
from .task import Task
from .wire import Call, text_items

_KINDS = {"value": pb.OutputField.KIND_VALUE, "tensor": pb.OutputField.KIND_TENSOR}


def server_version() -> str:
    try:
        return md.version("headserve")
    except md.PackageNotFoundError:
        return "unknown"


def head_info(registry: HeadRegistry, served: ServedHead) -> pb.HeadInfo:
    """A head as GetModelInfo (and an admin call's answer) shows it."""
    return pb.HeadInfo(
        name=served.spec.name,
        task=served.plugin.plugin.task,
        labels=list(served.head.labels),
        trained=served.head.trained,
        usable=registry.usable(served),
        plugin=served.plugin.ref.name,
        distribution=served.plugin.ref.distribution,
        version=served.plugin.ref.version,
        source=served.head.source,
        multi_label=served.head.multi_label,
        is_default=served.is_default,
        detail=served.head.detail,
        settings=dict(served.head.settings),
        head_version=served.version,
        outputs=[
            pb.OutputField(
                name=f.name,
                kind=_KINDS[f.kind],
                type=f.type,
                shape=f.shape,
                description=f.description,
                optional=f.optional,
            )
            for f in served.head.outputs
        ],
        parameters=[
            pb.ParameterInfo(
                name=p.name,
                type=p.type,
                default=json.dumps(p.default),
                description=p.description,
                choices=list(p.choices),
            )
            for p in served.head.parameters
        ],
    )


def shadow_info(registry: HeadRegistry, shadow: Shadow) -> pb.HeadInfo:
    """A shadow head as GetModelInfo shows it: its head, the live head it shadows, and its
    agreement so far."""
    info = head_info(registry, shadow.served)
    info.usable = False  # it answers no call of its own
    info.shadow_of = shadow.live
    stats = shadow.stats
    info.shadow.CopyFrom(
        pb.ShadowInfo(
            fraction=shadow.fraction,
            calls=stats.calls,
            items=stats.items,
            failures=stats.failures,
            skipped=stats.skipped,
            # the task's means (NaN before any item), NaN for the other tasks' measures
            **{
                m: stats.mean(m) if m in MEASURES.get(shadow.served.task, ()) else math.nan
                for ms in MEASURES.values()
                for m in ms
            },
        )
    )
    return info


def model_info(core: Core) -> pb.ModelInfo:
    backbone = core.backbone
    config = backbone.config
    registry = core.registry
    limits = core.scheduler.limits
    heads = [head_info(registry, served) for served in registry.heads.values()]
    heads += [shadow_info(registry, shadow) for shadow in registry.shadows.values()]
    tokenizer, image = backbone.tokenizer, backbone.image
    return pb.ModelInfo(
        backbone=pb.BackboneInfo(
            source=str(backbone.source),
            model_type=config.model_type,
            hidden_size=backbone.hidden_size,
            num_layers=backbone.num_layers,
            vocab_size=int(getattr(config, "vocab_size", 0) or 0),
            max_length=backbone.max_length,
            device=str(backbone.device),
            dtype=str(backbone.dtype).removeprefix("torch."),
            parameters=backbone.parameters,
            mask_token=(tokenizer.mask_token or "") if tokenizer is not None else "",
            load_seconds=backbone.load_seconds,
            kind=backbone.kind,
            modality=backbone.modality,
            runtime=backbone.runtime,
            **_family(backbone),
            image=pb.ImageInputInfo(
                height=image.height,
                width=image.width,
                preprocessing=image.preprocessing,
                mean=image.mean,
                std=image.std,
            )
            if image is not None
            else None,
        ),
        heads=heads,
        failed_plugins=[
            pb.PluginFailure(plugin=f.label, reason=f.reason) for f in registry.failures
        ],
        server_version=server_version(),
        allow_untrained=registry.allow_untrained,
        scheduler=pb.SchedulerInfo(
            max_batch_tokens=limits.max_batch_tokens,
            max_batch_items=limits.max_batch_items,
            max_wait_ms=limits.max_wait_ms,
            max_queue_items=limits.max_queue_items,
            stream_in_flight_items=limits.stream_in_flight_items,
            torch_threads=core.torch_threads,
            workers=core.scheduler.workers,
            long_call_tokens=limits.long_call_tokens,
            bulk_batch_tokens=limits.bulk_batch_tokens,
            feature_cache_bytes=core.runner.cache.max_bytes if core.runner.cache else 0,
        ),
        limits=pb.RequestLimitsInfo(**dataclasses.asdict(core.request_limits)),
    )


def _family(backbone: Backbone) -> dict[str, Any]:
    """BackboneInfo's family, verified and packing (families.py)."""
    family = getattr(backbone, "family", None) or family_of(backbone.config.model_type)
    if family is None:  # a third-party kind's model outside the table
        name = str(backbone.config.model_type)
        return {"family": name, "verified": False, "packing": _packing(backbone, None)}
    return {
        "family": family.name,
        "verified": family.verified,
        "packing": _packing(backbone, family),
    }


def _packing(backbone: Backbone, family: Family | None) -> str:
    if backbone.modality == "image":
        return "one image a row"
    if backbone.packing:
        return family.packing_of(backbone.config) if family is not None else "packed"
    why = getattr(backbone, "packing_detail", "")
    return f"padded batches ({why})" if why else "padded batches"


async def model_info_answer(
    core: Core, request: pb.GetModelInfoRequest, call: Call
) -> pb.ModelInfo:
    return model_info(core)


async def tokenize(core: Core, request: pb.TokenizeRequest, call: Call) -> pb.TokenizeResponse:
    add = request.add_special_tokens if request.HasField("add_special_tokens") else True
    results = await core.tokenized(
        text_items(request.items), add_special_tokens=add, truncate=request.truncate
    )
    return pb.TokenizeResponse(
        results=[
            pb.Tokenization(
                ids=t.ids,
                tokens=t.tokens,
                offsets=[common_pb2.Span(start=a, end=b) for a, b in t.offsets],
                token_type_ids=t.token_type_ids,
                sequence_ids=t.sequence_ids,
            )
            for t in results
        ]
    )


_MODELS = pb.DESCRIPTOR.services_by_name["Models"]
MODEL_INFO = Task("model_info", _MODELS, "GetModelInfo", model_info_answer, streams=False)
TOKENIZE = Task("tokenize", _MODELS, "Tokenize", tokenize, streams=False)
