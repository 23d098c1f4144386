"""The answer_question task: QuestionAnswerer.AnswerQuestion and its stream, and QA heads in
RunHeads."""

from __future__ import annotations

from headserve.plugins.tasks import QAItem, QAOptions, QuestionAnswer
from headserve.v1 import heads_pb2
from headserve.v1 import question_answerer_pb2 as pb

from ..core.engine import Core
from .task import HeadForm, Task
from .wire import Call, options, usage_timing


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


async def answer(
    core: Core, request: pb.AnswerQuestionRequest, call: Call
) -> pb.AnswerQuestionResponse:
    o = request.options
    items = [QAItem(i.question, i.context) for i in request.items]
    outcome = await core.run(
        "qa",
        [o.head or None],
        items,
        qa_options(o),
        deadline=call.deadline,
        wait_for_room=call.wait_for_room,
    )
    return pb.AnswerQuestionResponse(
        results=[answers(r[0]) for r in outcome.results], **usage_timing(outcome)
    )


def _head_result(value: QuestionAnswer) -> heads_pb2.HeadResult:
    return heads_pb2.HeadResult(answer=answers(value))


TASK = Task(
    "answer_question",
    pb.DESCRIPTOR.services_by_name["QuestionAnswerer"],
    "AnswerQuestion",
    answer,
    serving="qa",
    heads=HeadForm("qa", "answer_question", qa_options, _head_result),
)
