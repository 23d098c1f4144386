"""The fuzz suite's settings, server and outcome counter.

Hypothesis profiles, picked by HEADSERVE_FUZZ_PROFILE:
  ci    (default) a few hundred cases in all, the same ones every run (derandomized)
  long  at least 10,000 cases in all, freshly random each run (bench/fuzz.py runs it)

HEADSERVE_FUZZ_REPORT=FILE writes, at the end of the session, per RPC: the cases run
and how many ended in each status code ("OK" for a reply), and for the streams the
outcome of each request inside them ("response" or the google.rpc code's name).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from checkpoints import LABELS
from hypothesis import HealthCheck, settings
from outcomes import OUTCOMES, PROFILE_ENV, Outcomes
from serving import ServerThread
from strategies import LIMITS

from headserve.plugins.contract import HeadSpec
from headserve.server.loading import Settings

REPORT_ENV = "HEADSERVE_FUZZ_REPORT"

# Examples per property test. The suite has 12 property tests (6 unary RPCs, 5 streams,
# raw bytes); a stream case sends several requests but counts as one case.
CI_EXAMPLES = 40
LONG_EXAMPLES = 1000

_SUPPRESSED = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
settings.register_profile(
    "ci",
    max_examples=CI_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=_SUPPRESSED,
)
settings.register_profile(
    "long",
    max_examples=LONG_EXAMPLES,
    deadline=None,
    derandomize=False,
    database=None,
    print_blob=True,  # a failure prints the @reproduce_failure line that replays it
    suppress_health_check=_SUPPRESSED,
)
settings.load_profile(os.environ.get(PROFILE_ENV, "ci"))


@pytest.fixture(scope="session")
def outcomes() -> Outcomes:
    return OUTCOMES


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = os.environ.get(REPORT_ENV)
    if path:
        Path(path).write_text(json.dumps(OUTCOMES.report(), indent=2) + "\n")


@pytest.fixture(scope="session")
def fuzz_server(bert, tmp_path_factory) -> Iterator[ServerThread]:  # type: ignore[no-untyped-def]
    heads = (
        HeadSpec("encode", "encode", None, {"pooling": "cls"}),
        HeadSpec("mlm", "mlm", bert.mlm),
        HeadSpec("classify", "classify", bert.classify),
        HeadSpec("qa", "qa", bert.qa),
        HeadSpec("ner", "token_classification", bert.ner),
        # a cross-encoder for Ranker.Rerank: the classifier's first label ranks
        HeadSpec("rank", "classify", bert.classify, {"rerank_score": f"label:{LABELS[0]}"}),
        HeadSpec("sparse", "sparse", bert.mlm),  # SPLADE pooling of an untrained-for-it MLM
    )
    thread = ServerThread(
        Settings(
            model_dir=bert.backbone,
            heads=heads,
            device="cpu",
            request_limits=LIMITS,
            http_port=0,  # the OpenAI-style endpoint too (test_fuzz_http.py)
            jobs_dir=tmp_path_factory.mktemp("fuzz-jobs"),  # the Jobs service's RPCs answer
        )
    )
    yield thread
    thread.stop()
