"""Hypothesis strategies for requests that hurt: hostile texts, odd masks, QA windows at
their edges, unknown heads and options out of range.

Texts never hold lone surrogates (Unicode category Cs): protobuf cannot encode them as
UTF-8, so the client library refuses to send them; that is the client's problem, not
the server's. Invalid UTF-8 on the wire is covered by the raw-bytes test instead.

The test model (tests/checkpoints.py) has a 64-token window; the fuzz server runs with
LIMITS below (16 items, 4,000 characters and 2,000 tokens an item, 2 MiB messages).

Every request strategy yields a `Case`, which holds the protobuf message and prints it
with long strings cut short (a falsifying example of 3 MB would drown the report).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message
from hypothesis import strategies as st

from headserve.server.core.limits import RequestLimits
from headserve.v1 import (
    classifier_pb2,
    common_pb2,
    encoder_pb2,
    heads_pb2,
    models_pb2,
    question_answerer_pb2,
    ranker_pb2,
    token_predictor_pb2,
)

WINDOW = 64  # tokens, special tokens included (tests/checkpoints.py MAX_LENGTH)
# The fuzz server's limits: small, so that generated requests hit every one of them.
LIMITS = RequestLimits(
    max_request_items=16,
    max_item_chars=4000,
    max_item_tokens=2000,
    max_message_bytes=2 * 1024 * 1024,
)
MAX_ITEMS = LIMITS.max_request_items
MAX_CHARS = LIMITS.max_item_chars
MAX_MESSAGE_BYTES = LIMITS.max_message_bytes
INT32 = (-(2**31), 2**31 - 1)
HEADS = ("encode", "mlm", "classify", "qa", "ner", "rank", "sparse")


class Case:
    """A generated request; its repr cuts long strings short."""

    __slots__ = ("message",)

    def __init__(self, message: Message) -> None:
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self.message).__name__}({abbreviated(self.message)})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # hypothesis' printer
        printer.text(repr(self))


def abbreviated(message: Message, limit: int = 120) -> str:
    """The message as a dict, every string longer than `limit` shown by its head and size."""

    def cut(value: Any) -> Any:
        if isinstance(value, str) and len(value) > limit:
            return f"{value[:limit]!r}... ({len(value):,} chars)"
        if isinstance(value, dict):
            return {k: cut(v) for k, v in value.items()}
        if isinstance(value, list):
            return [cut(v) for v in value]
        return value

    try:
        as_dict = json_format.MessageToDict(message, preserving_proto_field_name=True)
    except (ValueError, json_format.Error):  # a Struct holding NaN or infinity has no JSON
        return repr(str(message)[: limit * 20])
    return repr(cut(as_dict))


# --- texts ------------------------------------------------------------------------------------

# Every plane, controls and format characters included; no lone surrogates (see above).
ANY_CHAR = st.characters(exclude_categories=("Cs",))
WHITESPACE = (
    " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e\u034f"  # not whitespace to Python

ORDINARY = (
    "The quick brown fox jumps over the lazy dog.",
    "Alice works in Paris at the bank.",
    "Bob works in Berlin at the zoo.",
    "Where does Bob work?",
    "A great movie with a wonderful cast, but the ending was terrible.",
    "hello",
    "x",
    "?",
)
FRAGMENTS = (
    *ORDINARY,
    "東京都に住んでいます",  # Japanese
    "中文文本没有空格",  # Chinese, no spaces
    "한국어 텍스트",  # Korean
    "مرحبا بالعالم",  # Arabic, right to left
    "שָׁלוֹם עוֹלָם",  # Hebrew with points
    "\u202eevil\u202c text",  # right-to-left override
    "\u200fRTL mark\u200e",
    "👩\u200d👩\u200d👧\u200d👦",  # a ZWJ family
    "🏳\ufe0f\u200d🌈",  # flag, variation selector, ZWJ
    "👍🏽🇺🇳",  # skin tone, regional indicators
    "Ελληνικά",
    "Привет, мир",
    "हिन्दी पाठ",  # Devanagari, combining vowel signs
    "ไทยไม่มีช่องว่าง",  # Thai, no spaces
    "\ufdfa",  # one code point that NFKC expands to 18
    "\ufb01ne \ufb03x",  # ligatures fi, ffi
    "İstanbul ǅ ß ẞ",  # case mappings that change length
    "e\u0301 n\u0303 a\u030a",  # decomposed accents
    "\U0001d54f\U0001d552\U0001d55d",  # mathematical double-struck
    "\U00013000\U0001f600\U0002a6d6",  # planes 1 and 2
    "\U000e0041\U000e007f",  # tag characters (plane 14)
    "\U000f0000\U0010fffd",  # private use planes 15 and 16
    "\ufffd\uffff\ufffe",  # replacement character and non-characters
    "x\x00y\x00z",  # NUL inside a word
    "a\u0007b\u001bc\u007fd\u0085e",  # C0 and C1 controls
    "http://example.com/a?b=c&d=%20",
    "¯\\_(ツ)_/¯",
    "1234567890 3.14159 -2e10",
)

MASKS = (
    "[MASK]",
    "[MASK][MASK]",
    "[MASK] [MASK]",
    "[mask]",
    "<mask>",
    "[ MASK ]",
    "[MASK",
    "MASK]",
    "[[MASK]]",
    "##[MASK]",
    "[MASK]\u0301",  # a combining mark on the mask
    "[CLS][SEP][PAD][UNK]",  # other special tokens, typed in
)


def blank() -> st.SearchStrategy[str]:
    """Empty, whitespace-only, and invisible-only (not whitespace to str.strip) texts."""
    return st.one_of(
        st.just(""),
        st.text(st.sampled_from(WHITESPACE), min_size=1, max_size=20),
        st.text(st.sampled_from(WHITESPACE + INVISIBLE), min_size=1, max_size=20),
    )


def any_plane() -> st.SearchStrategy[str]:
    """Characters of every plane; the second one forces the astral planes."""
    return st.one_of(
        st.text(ANY_CHAR, min_size=1, max_size=60),
        st.text(
            st.characters(min_codepoint=0x10000, exclude_categories=("Cs",)),
            min_size=1,
            max_size=30,
        ),
    )


def controls() -> st.SearchStrategy[str]:
    """Control and format characters, NUL included, alone or between words."""
    control = st.one_of(st.just("\x00"), st.characters(categories=("Cc", "Cf")))
    alone = st.text(control, min_size=1, max_size=30)
    mixed = st.lists(st.one_of(control, st.sampled_from(ORDINARY)), min_size=1, max_size=12)
    return st.one_of(alone, mixed.map("".join))


def bare_combining() -> st.SearchStrategy[str]:
    """Combining marks stacked on nothing: alone, or leading a text."""
    marks = st.text(st.characters(categories=("Mn", "Mc", "Me")), min_size=1, max_size=40)
    return st.one_of(
        marks,
        st.tuples(marks, st.sampled_from(ORDINARY)).map("".join),
        st.builds(
            lambda m, n: m * n, st.sampled_from("\u0301\u0489\u20dd\u0f7e"), st.integers(1, 300)
        ),
    )


def mixed_scripts() -> st.SearchStrategy[str]:
    """Fragments of many scripts (RTL, CJK, emoji ZWJ sequences...), joined with or without
    spaces."""
    parts = st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=10)
    return st.tuples(parts, st.sampled_from(["", " ", "\n", "\u200d"])).map(
        lambda pj: pj[1].join(pj[0])
    )


def long_texts() -> st.SearchStrategy[str]:
    """Past the 64-token window (often), at and past the 4,000-character limit."""
    repeated = st.builds(
        lambda fragment, n: (fragment + " ") * n,
        st.sampled_from(FRAGMENTS),
        st.integers(2, 200),
    )
    near_char_limit = st.builds(  # exactly n characters, n around the limit
        lambda c, n: (c * n)[:n],
        st.sampled_from(["a", "é", "中", "👍", " x", "\u0301"]),
        st.integers(MAX_CHARS - 3, MAX_CHARS + 3),
    )
    window_edge = st.builds(lambda n: "word " * n, st.integers(WINDOW - 6, WINDOW + 2))
    return st.one_of(repeated, near_char_limit, window_edge)


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, each `weight` times in sum(weights). (st.one_of flattens
    nested and repeated strategies into equally likely branches, so it cannot weigh.)"""
    strategies = [strategy for _, strategy in choices]
    picks = [i for i, (weight, _) in enumerate(choices) for _ in range(weight)]
    return st.sampled_from(picks).flatmap(lambda i: strategies[i])


def mostly(
    usual: st.SearchStrategy[Any], anything: st.SearchStrategy[Any]
) -> st.SearchStrategy[Any]:
    """`usual` three times in four, else `anything`: so that whole requests often succeed
    while every odd value still comes up."""
    return weighted((3, usual), (1, anything))


def texts() -> st.SearchStrategy[str]:
    """Any text of the above, ordinary sentences among them."""
    return st.one_of(
        st.sampled_from(ORDINARY),
        mixed_scripts(),
        blank(),
        any_plane(),
        controls(),
        bare_combining(),
        long_texts(),
    )


def item_texts() -> st.SearchStrategy[str]:
    """The text of an item: ordinary half the time, hostile otherwise."""
    return weighted((1, st.sampled_from(ORDINARY)), (1, texts()))


def masked_texts() -> st.SearchStrategy[str]:
    """Texts holding mask tokens (right and wrong spellings) in odd places, or none."""

    def place(base: str, mask: str, where: str, count: int) -> str:
        words = base.split(" ")
        if where == "start":
            return mask + base
        if where == "end":
            return base + mask
        if where == "alone":
            return mask
        if where == "inside a word":
            word = max(words, key=len)
            cut = len(word) // 2
            return base.replace(word, word[:cut] + mask + word[cut:], 1)
        if where == "many":
            return (mask + " ") * count + base
        middle = len(words) // 2
        return " ".join([*words[:middle], mask, *words[middle:]])

    return mostly(
        st.builds(
            place,
            item_texts(),
            mostly(st.just("[MASK]"), st.sampled_from(MASKS)),
            st.sampled_from(["start", "end", "alone", "inside a word", "many", "middle"]),
            st.integers(1, 80),
        ),
        texts(),  # no mask at all, mostly
    )


def text_inputs(
    text: st.SearchStrategy[str] | None = None,
) -> st.SearchStrategy[common_pb2.TextInput]:
    """A text, or a pair (text_pair set, possibly to "")."""
    if text is None:
        text = item_texts()
    pair = mostly(st.none(), st.one_of(st.just(""), text))
    return st.builds(
        lambda t, p: (
            common_pb2.TextInput(text=t) if p is None else common_pb2.TextInput(text=t, text_pair=p)
        ),
        text,
        pair,
    )


def batches(items: st.SearchStrategy[Any], oversize: Any = None) -> st.SearchStrategy[list[Any]]:
    """1 to 3 items mostly; or 0 (refused), up to 16 (the limit) and a few past it; and, where
    `oversize` (an item over the message limit) is given, rarely a batch holding it."""
    usual = st.lists(items, min_size=1, max_size=3)
    odd = [
        (1, st.just([])),
        (4, st.lists(items, min_size=1, max_size=MAX_ITEMS)),
        (1, st.lists(items, min_size=MAX_ITEMS - 1, max_size=MAX_ITEMS)),  # at the limit
        (1, st.lists(items, min_size=MAX_ITEMS + 1, max_size=MAX_ITEMS + 3)),  # past it
    ]
    if oversize is not None:
        odd.append(
            (
                1,
                st.builds(
                    lambda batch, at: [*batch[:at], oversize(), *batch[at:]],
                    st.lists(items, max_size=3),
                    st.integers(0, 3),
                ),
            )
        )
    return mostly(usual, weighted(*odd))


# --- options ----------------------------------------------------------------------------------


def int32s(*special: int) -> st.SearchStrategy[int]:
    """Small values, the int32 extremes, the values named, and anything in range."""
    return st.one_of(
        st.sampled_from(sorted({0, 1, 2, -1, INT32[0], INT32[1], *special})),
        st.integers(-3, 300),
        st.integers(*INT32),
    )


def timeouts() -> st.SearchStrategy[float]:
    """Seconds a unary call may take: plenty, or now and then too little (DEADLINE_EXCEEDED
    while the server still works on the call)."""
    return weighted((9, st.just(60.0)), (1, st.sampled_from([0.001, 0.005, 0.02, 0.1])))


def request_ids() -> st.SearchStrategy[str]:
    return st.one_of(st.just(""), st.text(ANY_CHAR, max_size=20))


def head_names(right: str) -> st.SearchStrategy[str]:
    """The right head or the default (""); else a head of another task, or an unknown name."""
    return mostly(
        st.sampled_from([right, right, ""]),
        st.one_of(
            st.sampled_from([h for h in HEADS if h != right]), st.text(ANY_CHAR, max_size=20)
        ),
    )


def optional_bools() -> st.SearchStrategy[bool | None]:
    return st.one_of(st.none(), st.booleans())


# --- requests, one strategy per RPC -----------------------------------------------------------
# `oversize=False` keeps every request under the message limit (for the streams, where one
# message over it ends the whole stream: gRPC's doing, not a per-request error).


def _oversized_text_input() -> common_pb2.TextInput:
    """An item larger than a whole request may be: gRPC refuses it (RESOURCE_EXHAUSTED)."""
    return common_pb2.TextInput(text="x" * (MAX_MESSAGE_BYTES + 1024))


def _oversized_question() -> question_answerer_pb2.QuestionContext:
    return question_answerer_pb2.QuestionContext(
        question="Who?", context="x" * (MAX_MESSAGE_BYTES + 1024)
    )


def encode_requests(*, oversize: bool = True) -> st.SearchStrategy[Case]:
    def build(items, pooling, normalize, truncate, head, id, extra):  # type: ignore[no-untyped-def]
        options = encoder_pb2.EncodeOptions(pooling=pooling, truncate=truncate, head=head)
        if normalize is not None:
            options.normalize = normalize
        dimensions, prompt_name, prompt, side, (top_k, min_weight) = extra
        options.dimensions, options.prompt_name = dimensions, prompt_name
        options.truncation_side, options.sparse_top_k = side, top_k
        options.sparse_min_weight = min_weight
        if prompt is not None:
            options.prompt = prompt
        return Case(encoder_pb2.EncodeRequest(items=items, options=options, id=id))

    return st.builds(
        build,
        batches(text_inputs(), _oversized_text_input if oversize else None),
        # proto3 enums are open: an unknown number arrives as itself
        mostly(st.sampled_from([0, 1, 2, 3]), int32s(4)),
        optional_bools(),
        st.booleans(),
        head_names("encode"),
        request_ids(),
        # dimensions, prompt_name, prompt, truncation_side: mostly unset
        # dimensions, prompt_name, prompt, truncation_side, (sparse_top_k, sparse_min_weight)
        mostly(
            st.just((0, "", None, 0, (0, 0.0))),
            st.tuples(
                st.one_of(st.sampled_from([1, 16, 384, 385]), st.integers(0, 2**32 - 1)),
                st.one_of(st.just(""), st.sampled_from(["query"]), st.text(ANY_CHAR, max_size=8)),
                st.one_of(st.none(), texts()),
                mostly(st.sampled_from([0, 1, 2]), int32s(3)),
                st.tuples(
                    st.one_of(st.sampled_from([0, 1, 5]), st.integers(0, 2**32 - 1)),
                    st.one_of(st.sampled_from([0.0, 0.5]), st.floats(width=32)),
                ),
            ),
        ),
    )


def predict_requests(*, oversize: bool = True) -> st.SearchStrategy[Case]:
    return st.builds(
        lambda items, options, id: Case(
            token_predictor_pb2.PredictTokensRequest(items=items, options=options, id=id)
        ),
        batches(text_inputs(masked_texts()), _oversized_text_input if oversize else None),
        st.builds(
            token_predictor_pb2.PredictTokensOptions,
            top_k=mostly(st.integers(0, 10), int32s(5, 30521, 30522, 30523)),
            # full logits are [tokens, 30522] floats: ~7.8 MB an item, over the 2 MiB limit
            return_logits=mostly(st.just(False), st.just(True)),
            truncate=st.booleans(),
            head=head_names("mlm"),
        ),
        request_ids(),
    )


def classify_requests(*, oversize: bool = True) -> st.SearchStrategy[Case]:
    return st.builds(
        lambda items, options, id: Case(
            classifier_pb2.ClassifyRequest(items=items, options=options, id=id)
        ),
        batches(text_inputs(), _oversized_text_input if oversize else None),
        st.builds(
            classifier_pb2.ClassifyOptions,
            # none (the default head), one, or several: duplicates included
            heads=mostly(
                st.lists(st.sampled_from(["classify", ""]), max_size=1),
                st.lists(head_names("classify"), max_size=3),
            ),
            top_k=mostly(st.integers(0, 4), int32s(3, 4)),
            truncate=st.booleans(),
        ),
        request_ids(),
    )


def qa_items() -> st.SearchStrategy[question_answerer_pb2.QuestionContext]:
    """Hostile questions and contexts; questions longer than contexts; contexts whose length
    puts the answer at a window's edge."""
    qc = question_answerer_pb2.QuestionContext
    ordinary_question = st.sampled_from(["Where does Bob work?", "Who?", "what", "?"])
    ordinary = st.builds(qc, question=ordinary_question, context=st.sampled_from(ORDINARY))
    hostile = st.one_of(
        st.builds(qc, question=texts(), context=item_texts()),
        st.builds(qc, question=ordinary_question, context=texts()),
    )
    long_question = st.builds(
        lambda q, n, context: qc(question=(q + " ") * n, context=context),
        st.sampled_from(["Where does Bob work?", "why", "中"]),
        st.integers(1, 80),
        st.sampled_from(["Bob works in Paris.", "x", "中"]),
    )
    # Filler tokens before (and after) the answer: around the window's room for the context
    # (and its multiples), one token per filler word.
    at_edge = st.builds(
        lambda q, filler, before, after, answer: qc(
            question=q, context=(filler + " ") * before + answer + (" " + filler) * after
        ),
        ordinary_question,
        st.sampled_from(["word", "中", "!", "x"]),
        st.integers(WINDOW - 16, 3 * WINDOW),
        st.integers(0, WINDOW),
        st.sampled_from(["Bob works in Paris.", "Paris", "P", "👩\u200d👩\u200d👧"]),
    )
    return st.one_of(ordinary, hostile, long_question, at_edge)


def qa_requests(*, oversize: bool = True) -> st.SearchStrategy[Case]:
    return st.builds(
        lambda items, options, id: Case(
            question_answerer_pb2.AnswerQuestionRequest(items=items, options=options, id=id)
        ),
        batches(qa_items(), _oversized_question if oversize else None),
        st.builds(
            question_answerer_pb2.AnswerQuestionOptions,
            top_k=mostly(st.integers(0, 5), int32s(20, 1000)),
            max_answer_length=mostly(st.integers(0, 40), int32s(30, WINDOW, 10_000)),
            doc_stride=mostly(st.integers(0, 40), int32s(3, 4, 8, 30, 64, 128, 10_000)),
            allow_no_answer=st.booleans(),
            head=head_names("qa"),
        ),
        request_ids(),
    )


def json_values() -> st.SearchStrategy[Any]:
    """JSON-ish values for a Struct: wrong types, NaN and infinities, nesting."""
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([float("nan"), float("inf"), float("-inf"), 0.5, 1.0, -0.0, 1e308]),
        st.integers(-(2**53), 2**53),
        st.text(ANY_CHAR, max_size=20),
        st.sampled_from(["simple", "none", "max", "", "O", "B-PER,I-PER", "O,,O", " , "]),
    )
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.text(ANY_CHAR, max_size=8), children, max_size=4),
        ),
        max_leaves=10,
    )


NER_OPTIONS = {
    "aggregation": st.sampled_from(["simple", "none"]),
    "ignore_labels": st.one_of(
        st.sampled_from(["O", "", "O,B-PER", "B-PER,I-PER,B-LOC,I-LOC,B-ORG,I-ORG", " O , "]),
        st.text(ANY_CHAR, max_size=20),
    ),
    "return_logits": st.booleans(),
}


def run_options() -> st.SearchStrategy[dict[str, Any]]:
    """Valid ner options, or the same keys with any JSON value, or unknown keys."""
    valid = st.fixed_dictionaries({}, optional=NER_OPTIONS)
    wrong = st.dictionaries(st.sampled_from(sorted(NER_OPTIONS)), json_values(), max_size=3)
    unknown = st.dictionaries(
        st.one_of(st.sampled_from([*NER_OPTIONS, "top_k", ""]), st.text(ANY_CHAR, max_size=12)),
        json_values(),
        max_size=4,
    )
    return mostly(valid, st.one_of(wrong, unknown))


def structs(values: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


def run_requests(*, oversize: bool = True) -> st.SearchStrategy[Case]:
    return st.builds(
        lambda items, options, head, truncate, id: Case(
            heads_pb2.RunRequest(
                items=items, options=structs(options), head=head, truncate=truncate, id=id
            )
        ),
        batches(text_inputs(), _oversized_text_input if oversize else None),
        run_options(),
        head_names("ner"),
        st.booleans(),
        request_ids(),
    )


# A head and the options field of its task (HeadCall.options), for RunHeads.
MATCHED_OPTIONS = (
    ("encode", "encode"),
    ("sparse", "encode"),
    ("classify", "classify"),
    ("rank", "classify"),
    ("mlm", "predict_tokens"),
    ("qa", "answer_question"),
    ("ner", "params"),
)
OPTION_FIELDS = (None, "encode", "classify", "predict_tokens", "answer_question", "params")


def head_calls() -> st.SearchStrategy[heads_pb2.HeadCall]:
    """A head with options of its task, mostly; else any head (or name) with any options."""

    def build(head_and_field, encode, classify, predict, qa, params):  # type: ignore[no-untyped-def]
        head, field = head_and_field
        call = heads_pb2.HeadCall(head=head)
        chosen = {
            "encode": encode.message.options,
            "classify": classify.message.options,
            "predict_tokens": predict.message.options,
            "answer_question": qa.message.options,
            "params": structs(params),
        }.get(field)
        if chosen is not None:
            getattr(call, field).CopyFrom(chosen)
        return call

    matched = st.sampled_from(MATCHED_OPTIONS).flatmap(
        lambda pair: st.sampled_from([pair, (pair[0], None)])
    )
    any_pair = st.tuples(
        st.one_of(st.sampled_from(HEADS), st.text(ANY_CHAR, max_size=12)),
        st.sampled_from(OPTION_FIELDS),
    )
    return st.builds(
        build,
        mostly(matched, any_pair),
        encode_requests(oversize=False),
        classify_requests(oversize=False).map(lambda c: _without_heads(c)),
        predict_requests(oversize=False),
        qa_requests(oversize=False),
        run_options(),
    )


def _without_heads(case: Case) -> Case:
    """A ClassifyOptions' heads list is refused in a HeadCall: mostly leave it empty."""
    if len(case.message.options.heads) and case.message.options.heads[0] != "classify":
        del case.message.options.heads[:]
    return case


def run_heads_requests(*, oversize: bool = True) -> st.SearchStrategy[Case]:
    return st.builds(
        lambda items, heads, truncate, id: Case(
            heads_pb2.RunHeadsRequest(items=items, heads=heads, truncate=truncate, id=id)
        ),
        batches(text_inputs(masked_texts()), _oversized_text_input if oversize else None),
        mostly(st.lists(head_calls(), min_size=1, max_size=4), st.lists(head_calls(), max_size=8)),
        st.booleans(),
        request_ids(),
    )


def tokenize_requests(*, oversize: bool = True) -> st.SearchStrategy[Case]:
    def build(items, add, truncate):  # type: ignore[no-untyped-def]
        request = models_pb2.TokenizeRequest(items=items, truncate=truncate)
        if add is not None:
            request.add_special_tokens = add
        return Case(request)

    return st.builds(
        build,
        batches(text_inputs(masked_texts()), _oversized_text_input if oversize else None),
        optional_bools(),
        st.booleans(),
    )


def rerank_requests(*, oversize: bool = True) -> st.SearchStrategy[Case]:
    def build(query, documents, head, top_n, return_documents, truncate, id):  # type: ignore[no-untyped-def]
        options = ranker_pb2.RerankOptions(
            head=head, top_n=top_n, return_documents=return_documents, truncate=truncate
        )
        return Case(
            ranker_pb2.RerankRequest(query=query, documents=documents, options=options, id=id)
        )

    big = (lambda: "x" * (MAX_MESSAGE_BYTES + 1024)) if oversize else None
    return st.builds(
        build,
        texts(),
        batches(texts(), big),
        # a cross-encoder, an encode head, the default; else one that cannot rank
        mostly(st.sampled_from(["rank", "encode", ""]), head_names("classify")),
        mostly(st.integers(0, 4), int32s()),
        st.booleans(),
        st.booleans(),
        request_ids(),
    )


def streams(requests: st.SearchStrategy[Case]) -> st.SearchStrategy[list[Case]]:
    """Several requests for one stream, good and bad mixed."""
    return st.lists(requests, min_size=1, max_size=6)


# Bytes that are not a valid request of any method, and some that may parse.
NOT_PROTOBUF = (
    b"\xff\xff\xff\xff",
    b"\x08",  # a varint field with no value
    b"\x0a\x05ab",  # a length-delimited field cut short
    b"\x0a\x03\x0a\x01\xff",  # items[0].text holding invalid UTF-8
    b"\x0a\x02\xc3\x28",  # field 1 as an invalid UTF-8 string
    b"\x0f\x00",  # wire type 7 (does not exist)
    b"\x00\x00",  # field number 0
    b"\x0b\x0c",  # an empty group
    b"\x0a\xff\xff\xff\xff\x0f",  # a length of 4 GiB
)


def raw_bodies() -> st.SearchStrategy[bytes]:
    return st.one_of(st.sampled_from(NOT_PROTOBUF), st.binary(max_size=200))
