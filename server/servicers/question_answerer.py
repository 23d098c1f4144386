"""QuestionAnswerer service: protobuf in, plain values to the core, protobuf out."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from headserve.plugins.tasks import QAItem, QAOptions, QuestionAnswer
from headserve.v1 import question_answerer_pb2 as pb
from headserve.v1 import question_answerer_pb2_grpc

from ._calls import Call, CoreHolder, options, ready, stream, unary, usage_timing


def answers(qa: QuestionAnswer) -> pb.QuestionAnswer:
    return pb.QuestionAnswer(
        answers=[
            pb.Answer(text=a.text, score=a.score, start=a.start, end=a.end, no_answer=a.no_answer)
            for a in qa.answers
        ],
        windows=qa.windows,
    )


def qa_options(o: pb.AnswerQuestionOptions) -> QAOptions:
    return options(
        QAOptions,
        top_k=o.top_k or None,
        max_answer_length=o.max_answer_length or None,
        doc_stride=o.doc_stride or None,
        allow_no_answer=o.allow_no_answer,
    )


class QuestionAnswererServicer(question_answerer_pb2_grpc.QuestionAnswererServicer):
    def __init__(self, state: CoreHolder) -> None:
        self._state = state

    async def AnswerQuestion(
        self, request: pb.AnswerQuestionRequest, context: grpc.aio.ServicerContext
    ) -> pb.AnswerQuestionResponse:
        return await unary(self._state, context, lambda call: self._answer(request, call))

    async def AnswerQuestionStream(
        self,
        request_iterator: AsyncIterator[pb.AnswerQuestionRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.AnswerQuestionStreamResponse]:
        async for reply in stream(
            request_iterator, context, self._state, self._answer, pb.AnswerQuestionStreamResponse
        ):
            yield reply

    async def _answer(
        self, request: pb.AnswerQuestionRequest, call: Call
    ) -> pb.AnswerQuestionResponse:
        core = ready(self._state)
        o = request.options
        opts = qa_options(o)
        items = [QAItem(i.question, i.context) for i in request.items]
        outcome = await core.run(
            "qa",
            [o.head or None],
            items,
            opts,
            deadline=call.deadline,
            wait_for_room=call.wait_for_room,
        )
        return pb.AnswerQuestionResponse(
            results=[answers(r[0]) for r in outcome.results], **usage_timing(outcome)
        )
