"""A bounded gRPC load generator (loopback only) for headserve's Encoder and friends.

    .venv/bin/python bench/load.py TARGET --concurrency 64 --seconds 15 [--mix encode|mixed]
    .venv/bin/python bench/load.py TARGET --stream-batch 32 --seconds 15

Unary mode: CONCURRENCY callers, each sending one sentence per call, back to back, for
SECONDS (and at most --max-calls calls). Stream mode: one bidirectional stream of
batches of STREAM_BATCH sentences, with up to --stream-window batches outstanding.
"mixed" rotates Encode, Classify, AnswerQuestion and PredictTokens in equal shares on
the same sentences. Prints one JSON object: sentences/s, p50/p99 latency (ms), errors.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable

import grpc
from data import sentences

from headserve.v1 import (
    classifier_pb2,
    classifier_pb2_grpc,
    common_pb2,
    encoder_pb2,
    encoder_pb2_grpc,
    question_answerer_pb2,
    question_answerer_pb2_grpc,
    token_predictor_pb2,
    token_predictor_pb2_grpc,
)


def _masked(text: str) -> str:
    words = text.split()
    words[len(words) // 2] = "[MASK]"
    return " ".join(words)


def calls(channel: grpc.aio.Channel, mix: str) -> list[Callable[[str], object]]:
    encoder = encoder_pb2_grpc.EncoderStub(channel)
    encode = lambda t: encoder.Encode(  # noqa: E731
        encoder_pb2.EncodeRequest(items=[common_pb2.TextInput(text=t)])
    )
    if mix == "encode":
        return [encode]
    classifier = classifier_pb2_grpc.ClassifierStub(channel)
    qa = question_answerer_pb2_grpc.QuestionAnswererStub(channel)
    mlm = token_predictor_pb2_grpc.TokenPredictorStub(channel)
    return [
        encode,
        lambda t: classifier.Classify(
            classifier_pb2.ClassifyRequest(items=[common_pb2.TextInput(text=t)])
        ),
        lambda t: qa.AnswerQuestion(
            question_answerer_pb2.AnswerQuestionRequest(
                items=[
                    question_answerer_pb2.QuestionContext(question="What is it about?", context=t)
                ]
            )
        ),
        lambda t: mlm.PredictTokens(
            token_predictor_pb2.PredictTokensRequest(items=[common_pb2.TextInput(text=_masked(t))])
        ),
    ]


async def unary(
    target: str, texts: list[str], concurrency: int, seconds: float, max_calls: int, mix: str
) -> dict:
    async with grpc.aio.insecure_channel(target) as channel:
        rpcs = calls(channel, mix)
        latencies: list[float] = []
        errors = 0
        counter = itertools.count()
        stop_at = time.perf_counter() + seconds

        async def caller(k: int) -> None:
            nonlocal errors
            i = k * 97
            while time.perf_counter() < stop_at:
                n = next(counter)
                if n >= max_calls:
                    return
                text = texts[i % len(texts)]
                i += 1
                started = time.perf_counter()
                try:
                    await rpcs[n % len(rpcs)](text)
                    latencies.append(time.perf_counter() - started)
                except grpc.RpcError:
                    errors += 1

        await rpcs[0](texts[0])  # warm up the connection and the model
        started = time.perf_counter()
        await asyncio.gather(*(caller(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - started
    return _summary(len(latencies), latencies, elapsed, errors, concurrency=concurrency, mix=mix)


async def stream(target: str, texts: list[str], batch: int, window: int, seconds: float) -> dict:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel)
        sent: dict[str, float] = {}
        latencies: list[float] = []
        errors = 0
        credit = asyncio.Semaphore(window)
        stop_at = time.perf_counter() + seconds

        async def requests() -> AsyncIterator[encoder_pb2.EncodeRequest]:
            for n in itertools.count():
                if time.perf_counter() >= stop_at:
                    return
                await credit.acquire()
                start = n * batch % len(texts)
                chunk = (texts * 2)[start : start + batch]
                sent[str(n)] = time.perf_counter()
                yield encoder_pb2.EncodeRequest(
                    id=str(n), items=[common_pb2.TextInput(text=t) for t in chunk]
                )

        started = time.perf_counter()
        async for reply in stub.EncodeStream(requests()):
            latencies.append(time.perf_counter() - sent.pop(reply.id))
            errors += reply.HasField("error")
            credit.release()
        elapsed = time.perf_counter() - started
    return _summary(len(latencies) * batch, latencies, elapsed, errors, stream_batch=batch)


def _summary(
    done: int, latencies: list[float], elapsed: float, errors: int, **extra: object
) -> dict:
    ordered = sorted(latencies) or [float("nan")]
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3  # noqa: E731
    return {
        **extra,
        "sentences": done,
        "seconds": elapsed,
        "sentences_s": done / elapsed,
        "p50_ms": pick(0.50),
        "p99_ms": pick(0.99),
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--max-calls", type=int, default=200_000)
    parser.add_argument("--mix", choices=["encode", "mixed"], default="encode")
    parser.add_argument("--stream-batch", type=int, default=0)
    parser.add_argument("--stream-window", type=int, default=4)
    parser.add_argument("--sentences", type=int, default=2000)
    args = parser.parse_args()
    texts = sentences(args.sentences)
    if args.stream_batch:
        result = asyncio.run(
            stream(args.target, texts, args.stream_batch, args.stream_window, args.seconds)
        )
    else:
        result = asyncio.run(
            unary(args.target, texts, args.concurrency, args.seconds, args.max_calls, args.mix)
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
