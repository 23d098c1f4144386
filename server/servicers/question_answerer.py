"""QuestionAnswerer service: protobuf in, plain values to the core, protobuf out."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from headserve.plugins.tasks import QAItem, QAOptions, QuestionAnswer
from headserve.v1 import question_answerer_pb2 as pb
from headserve.v1 import question_answerer_pb2_grpc

from ._calls import CoreHolder, options, ready, stream, unary, usage_timing


def _answers(qa: QuestionAnswer) -> pb.QuestionAnswer:
    return pb.QuestionAnswer(
        answers=[
            pb.Answer(text=a.text, score=a.score, start=a.start, end=a.end, no_answer=a.no_answer)
            for a in qa.answers
        ],
        windows=qa.windows,
    )


class QuestionAnswererServicer(question_answerer_pb2_grpc.QuestionAnswererServicer):
    def __init__(self, state: CoreHolder, *, stream_in_flight: int = 8) -> None:
        self._state = state
        self._in_flight = stream_in_flight

    async def AnswerQuestion(
        self, request: pb.AnswerQuestionRequest, context: grpc.aio.ServicerContext
    ) -> pb.AnswerQuestionResponse:
        return await unary(context, lambda: self._answer(request))

    async def AnswerQuestionStream(
        self,
        request_iterator: AsyncIterator[pb.AnswerQuestionRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.AnswerQuestionStreamResponse]:
        async for reply in stream(
            request_iterator, self._answer, pb.AnswerQuestionStreamResponse, in_flight=self._in_flight
        ):
            yield reply

    async def _answer(self, request: pb.AnswerQuestionRequest) -> pb.AnswerQuestionResponse:
        core = ready(self._state)
        o = request.options
        opts = options(
            lambda: QAOptions(
                top_k=o.top_k or 1,
                max_answer_length=o.max_answer_length or 30,
                doc_stride=o.doc_stride or 128,
                allow_no_answer=o.allow_no_answer,
            )
        )
        items = [QAItem(i.question, i.context) for i in request.items]
        outcome = await core.run("qa", [o.head or None], items, opts)
        return pb.AnswerQuestionResponse(
            results=[_answers(r[0]) for r in outcome.results], **usage_timing(outcome)
        )
