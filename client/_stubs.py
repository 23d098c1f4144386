"""The generated gRPC stubs of every headserve service, over one channel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from headserve.v1 import (
    admin_pb2_grpc,
    classifier_pb2_grpc,
    encoder_pb2_grpc,
    heads_pb2_grpc,
    jobs_pb2_grpc,
    models_pb2_grpc,
    question_answerer_pb2_grpc,
    ranker_pb2_grpc,
    token_predictor_pb2_grpc,
)

__all__ = ["Stubs"]


@dataclass(frozen=True, slots=True)
class Stubs:
    """One stub per service; works over a ``grpc.Channel`` or a ``grpc.aio.Channel``.

    Typed ``Any``: the stubs' callables are untyped without grpc type stubs, and differ between
    sync and aio channels anyway. The types live at the edges, in ``_convert``.
    """

    encoder: Any
    token_predictor: Any
    classifier: Any
    question_answerer: Any
    models: Any
    heads: Any
    ranker: Any
    admin: Any
    jobs: Any

    @classmethod
    def over(cls, channel: Any) -> Stubs:
        """Stubs for every service over ``channel``."""
        return cls(
            encoder=encoder_pb2_grpc.EncoderStub(channel),
            token_predictor=token_predictor_pb2_grpc.TokenPredictorStub(channel),
            classifier=classifier_pb2_grpc.ClassifierStub(channel),
            question_answerer=question_answerer_pb2_grpc.QuestionAnswererStub(channel),
            models=models_pb2_grpc.ModelsStub(channel),
            heads=heads_pb2_grpc.HeadsStub(channel),
            ranker=ranker_pb2_grpc.RankerStub(channel),
            admin=admin_pb2_grpc.HeadAdminStub(channel),
            jobs=jobs_pb2_grpc.JobsStub(channel),
        )
