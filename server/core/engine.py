"""Running a task call: pick the heads, prepare the items, run the rows, finish the results.

Transport-free: takes and returns plain values (headserve.plugins.tasks), raises
errors from errors.py. The task descriptions (tasks/) are thin wrappers around `Core.run`.

A head's `prepare` (tokenizing, included) and `finish` run off the event loop, on a thread,
so that one slow head, or one huge item, cannot stall every other call and the health
checks; only a call whose heads all declare themselves cheap (`Head.cheap`: the built-in
ones) and whose text is short (INLINE_CHARS) runs them inline, where a thread hop would cost
more than the work (measured: a hop 0.08 ms of CPU, tokenizing 0.3 us a character).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from headserve.plugins.backbones import Backbone
from headserve.plugins.contract import Head, InvalidInput, Prepared
from headserve.plugins.tasks import ImageItem, QAItem, TextItem

from ..call_info import current_priority
from ..config import BUILTIN_TASKS
from ..errors import DeadlineExceeded, HeadFailed, HeadserveError, InvalidArgument, Overloaded
from .budget import ByteBudget
from .generic import check_output, parse_params
from .head_store import HeadStore
from .heads import HeadRegistry
from .limits import DECODE_BYTES_PER_PIXEL, RequestLimits
from .live_heads import HeadLoader, LiveHeads
from .memory import trim_heap
from .runner import Runner, Work, row_key
from .scheduler import Scheduler, Stats
from .shadows import Shadow
from .threads import bulk_threads

if TYPE_CHECKING:
    from ..observability.tracing import Tracing

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    results: list[list[Any]]  # [item][head]
    input_tokens: int
    queue_ms: float
    inference_ms: float


@dataclass(frozen=True)
class HeadPlan:
    """One head of a many-heads call (Core.run_heads): the head and its options, or why it
    cannot run (an unknown name, options it refuses): then every item gets that error."""

    head: Head | None
    options: Any = None
    error: HeadserveError | None = None


@dataclass(frozen=True)
class Tokenized:
    ids: list[int]
    tokens: list[str]
    offsets: list[tuple[int, int]]
    token_type_ids: list[int]
    sequence_ids: list[int]


def _item_error(index: int, exc: InvalidInput) -> InvalidArgument:
    """What a head's refusal of item `index` names: the item's field, or the call's option
    (a field "options.X": an option the head cannot honour, whatever the item)."""
    if exc.field.startswith("options."):
        return InvalidArgument(exc.field, exc.message)
    return InvalidArgument(f"items[{index}].{exc.field}", exc.message, item=index)


def _as_item(head: Head, item: Any, index: int) -> Any:
    """An item as `head` takes it: a question-answering head reads a text pair as
    (question, context)."""
    if head.task != "qa" or not isinstance(item, TextItem):
        return item
    if item.text_pair is None:
        raise InvalidArgument(
            f"items[{index}].text_pair",
            f"question-answering head {head.name!r} reads the item's text as the question and "
            "its text_pair as the context: send a text_pair",
            item=index,
        )
    return QAItem(item.text, item.text_pair)


def _settled(outputs: Sequence[Any]) -> None:
    """Raise what fails a whole many-heads call among rows that failed one by one: its
    deadline, or its cancellation. A head's failure on a row stays that head's."""
    for output in outputs:
        if isinstance(output, DeadlineExceeded) or (
            isinstance(output, BaseException) and not isinstance(output, Exception)
        ):
            raise output


def _failure(exc: BaseException) -> HeadserveError:
    """A shadow's refusal or failure of an item, as a cell of `_finish_all`."""
    if isinstance(exc, HeadserveError):
        return exc
    return HeadFailed(f"{exc!r}", head="")


INLINE_CHARS = 4096  # characters of a call's text that cheap heads prepare inline (~1.3 ms)


def _chars(item: Any) -> int:
    """Characters of an item's text fields (an image's are read off the loop already)."""
    if isinstance(item, TextItem):
        return len(item.text) + len(item.text_pair or "")
    if isinstance(item, QAItem):
        return len(item.question) + len(item.context)
    return 0


def _inline(heads: Sequence[Head], items: Sequence[Any]) -> bool:
    """Whether a call's prepare and finish may run on the event loop: cheap heads, short text."""
    if not all(getattr(head, "cheap", False) for head in heads):
        return False
    total = 0
    for item in items:
        total += _chars(item)
        if total > INLINE_CHARS:
            return False
    return True


async def _on_thread_unless(inline: bool, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` inline, or on a thread (the call's context goes with it); a bulk call's,
    always on a thread below the event loop's priority (threads.bulk_threads)."""
    if current_priority() == "bulk":
        return await bulk_threads.run(fn, *args)
    if inline:
        return fn(*args)
    return await asyncio.to_thread(fn, *args)


def _prepare(head: Head, item: Any, options: Any) -> Prepared:
    try:
        return head.prepare(item, options)
    except (InvalidInput, HeadserveError):
        raise
    except Exception as exc:  # a head's bug fails its own request, named, and nothing else
        raise HeadFailed(f"head {head.name!r} failed to prepare: {exc!r}", head=head.name) from exc


def _finish(head: Head, prepared: Prepared, rows: Sequence[Any], options: Any) -> Any:
    try:
        return head.finish(prepared, rows, options)
    except HeadserveError:
        raise
    except Exception as exc:  # a head's bug fails its own request, named, and nothing else
        raise HeadFailed(f"head {head.name!r} failed to finish: {exc!r}", head=head.name) from exc


def _finish_all(
    heads: Sequence[Head],
    prepared: Sequence[Sequence[Prepared | HeadserveError]],
    outputs: Sequence[Any],
    options: Sequence[Any],
    isolate: bool,
) -> list[list[Any]]:
    """Every cell's result from its rows' outputs (in `prepared`'s order), or its error."""
    results: list[list[Any]] = []
    position = 0
    for per_item in prepared:
        finished: list[Any] = []
        for head, p, opts in zip(heads, per_item, options, strict=True):
            if not isinstance(p, Prepared):
                finished.append(p)
                continue
            rows = outputs[position : position + len(p.rows)]
            position += len(p.rows)
            failed = next((r for r in rows if isinstance(r, Exception)), None)
            if failed is not None:  # isolate only: else submit raised it
                finished.append(failed)
                continue
            try:
                finished.append(_finish(head, p, rows, opts))
            except HeadserveError as exc:
                if not isolate:
                    raise
                finished.append(exc)
        results.append(finished)
    return results


TRIM_AFTER_BYTES = 64 * 1024 * 1024  # a decode that may cost this much trims the heap after


class Core:
    def __init__(
        self,
        backbone: Backbone,
        registry: HeadRegistry,
        runner: Runner,
        scheduler: Scheduler,
        *,
        torch_threads: int,
        request_limits: RequestLimits | None = None,
        tracing: Tracing | None = None,
        loader: HeadLoader | None = None,
        store: HeadStore | None = None,
    ) -> None:
        self.backbone = backbone
        self.tracing = tracing
        self.registry = registry  # replaced whole by a change at run time (live_heads.py)
        # heads loaded, replaced and unloaded at run time (HeadAdmin); None: not this core
        self.live = LiveHeads(self, loader, store) if loader is not None else None
        self.live_off = ""  # why heads cannot change at run time here, when `live` is None
        self._shadows_running: set[asyncio.Future[None]] = set()  # kept until they end
        self.runner = runner  # the scheduler's (its counters are read by tests and benchmarks)
        self.scheduler = scheduler
        self.torch_threads = torch_threads
        self.request_limits = request_limits or RequestLimits()
        self.decode_budget = ByteBudget(self.request_limits.max_image_decode_bytes)

    async def run(
        self,
        task: str,
        head_names: Sequence[str | None],
        items: Sequence[Any],
        options: Any,
        *,
        deadline: float | None = None,
        wait_for_room: bool = False,
    ) -> Outcome:
        """Results per item and head. `deadline` is on time.perf_counter() (the scheduler's
        clock); `wait_for_room` waits for queue space (streams) instead of failing with
        Overloaded (unary calls)."""
        if not items:
            raise InvalidArgument("items", "empty batch: send at least one item")
        self.request_limits.check_items(items)
        seen: set[str | None] = set()
        for name in head_names:
            if name in seen:
                raise InvalidArgument("options.heads", f"head {name!r} named twice")
            seen.add(name)
        registry = self.registry
        heads = [registry.resolve(task, name) for name in head_names]
        shadows = [registry.shadowing(head.name) for head in heads]
        return await self._run(
            heads,
            items,
            [options] * len(heads),
            deadline=deadline,
            wait_for_room=wait_for_room,
            shadows=[s if s is not None and s.sampled() else None for s in shadows],
        )

    async def run_head(
        self,
        name: str,
        items: Sequence[TextItem | ImageItem],
        params: dict[str, Any],
        *,
        truncate: bool,
        deadline: float | None = None,
        wait_for_room: bool = False,
    ) -> tuple[Head, Outcome]:
        """A generic head's outputs (Heads.Run): results are checked `Output`s, one per item."""
        head = self.registry.resolve_generic(name)
        if not items:
            raise InvalidArgument("items", "empty batch: send at least one item")
        self.request_limits.check_items(items)
        options = parse_params(head, params, truncate=truncate)
        outcome = await self._run(
            [head], items, [options], deadline=deadline, wait_for_room=wait_for_room
        )
        for per_item in outcome.results:
            per_item[0] = check_output(head, per_item[0])
        return head, outcome

    async def run_heads(
        self,
        plans: Sequence[HeadPlan],
        items: Sequence[TextItem | ImageItem],
        *,
        deadline: float | None = None,
        wait_for_room: bool = False,
    ) -> Outcome:
        """Several heads of any tasks on the same items, in one backbone pass per item.
        Per item and head its result or the HeadserveError that failed that head alone (a
        plan's error, the head's refusal of the item, its failure); what fails the call
        (no items, too many, a full queue, its deadline) is raised."""
        if not items:
            raise InvalidArgument("items", "empty batch: send at least one item")
        if not plans:
            raise InvalidArgument("heads", "no heads: name at least one")
        self.request_limits.check_items(items)
        runnable = [p for p in plans if p.head is not None]
        outcome = await self._run(
            [p.head for p in runnable if p.head is not None],
            items,
            [p.options for p in runnable],
            deadline=deadline,
            wait_for_room=wait_for_room,
            isolate=True,
        )
        results: list[list[Any]] = []
        for per_item in outcome.results:
            computed = iter(per_item)
            row: list[Any] = []
            for plan in plans:
                if plan.head is None:
                    row.append(plan.error)
                    continue
                result = next(computed)
                if plan.head.task not in BUILTIN_TASKS and not isinstance(result, Exception):
                    try:
                        result = check_output(plan.head, result)
                    except HeadFailed as exc:
                        result = exc
                row.append(result)
            results.append(row)
        return replace(outcome, results=results)

    async def _run(
        self,
        heads: Sequence[Head],
        items: Sequence[Any],
        options: Sequence[Any],
        *,
        deadline: float | None,
        wait_for_room: bool,
        isolate: bool = False,
        shadows: Sequence[Shadow | None] = (),
    ) -> Outcome:
        """Results per item and head (`options` per head). `isolate`: an item's failure
        with one head is that cell's HeadserveError, not the call's. `shadows`: per head, a
        shadow to run beside it on this call (shadows.py), or None."""
        if not wait_for_room:  # each item needs at least one row per head
            self.scheduler.refuse_if_full(len(items) * max(1, len(heads)))
        started = time.perf_counter()
        items = await self._read_images(items)
        chosen = [(column, s) for column, s in enumerate(shadows) if s is not None]
        inline = _inline([*heads, *(s.served.head for _, s in chosen)], items)
        prepared, shadowed = await _on_thread_unless(
            inline, self._prepare_with_shadows, heads, items, options, isolate, chosen
        )
        live_done: asyncio.Future[list[list[Any]]] = asyncio.get_running_loop().create_future()
        for (column, shadow), cells in zip(chosen, shadowed, strict=True):
            # started before the live rows are submitted: the shadow's rows join them in the
            # same batch, and share their backbone pass
            running = asyncio.ensure_future(
                self._shadow(shadow, cells, options[column], live_done, column, inline)
            )
            self._shadows_running.add(running)
            running.add_done_callback(self._shadows_running.discard)
        try:
            outcome = await self._computed(
                heads, items, options, prepared, inline, started, deadline, wait_for_room, isolate
            )
        except BaseException:
            live_done.cancel()
            raise
        live_done.set_result(outcome.results)
        return outcome

    async def _computed(
        self,
        heads: Sequence[Head],
        items: Sequence[Any],
        options: Sequence[Any],
        prepared: list[list[Prepared | HeadserveError]],
        inline: bool,
        started: float,
        deadline: float | None,
        wait_for_room: bool,
        isolate: bool,
    ) -> Outcome:
        """The prepared rows through the model, then finished: the call's outcome."""
        self.request_limits.check_outputs(prepared)
        tracing = self.tracing
        bulk = current_priority() == "bulk"
        work = [
            Work(head, row, bulk)
            for per_item in prepared
            for head, p in zip(heads, per_item, strict=True)
            if isinstance(p, Prepared)
            for row in p.rows
        ]
        if tracing is not None:
            names = [head.name for head in heads]
            tracing.prepared(started, time.perf_counter(), len(items), names)
        outputs: list[Any] = []  # every cell refused: nothing to compute
        stats = Stats(0.0, 0.0)
        if work:
            outputs, stats = await self.scheduler.submit(
                work, deadline=deadline, wait_for_room=wait_for_room, return_exceptions=isolate
            )
        if isolate:
            _settled(outputs)
        if tracing is not None:
            tracing.computed(stats, names, len(work))
        results = await _on_thread_unless(
            inline, _finish_all, heads, prepared, outputs, options, isolate
        )
        # Rows shared by several heads were computed once: count each once.
        unique_rows = {
            (index, row_key(row)): row.length
            for index, per_item in enumerate(prepared)
            for p in per_item
            if isinstance(p, Prepared)
            for row in p.rows
        }
        tokens = sum(unique_rows.values())
        return Outcome(results, tokens, stats.queue_ms, stats.inference_ms)

    def _prepare_with_shadows(
        self,
        heads: Sequence[Head],
        items: Sequence[Any],
        options: Sequence[Any],
        isolate: bool,
        chosen: Sequence[tuple[int, Shadow]],
    ) -> tuple[list[list[Prepared | HeadserveError]], list[list[Prepared | BaseException]]]:
        """The call's items prepared by its heads (`_prepare_all`), then by the shadows run
        beside them: a shadow's refusal or failure is its own, never the call's."""
        prepared = self._prepare_all(heads, items, options, isolate)
        shadowed: list[list[Prepared | BaseException]] = []
        for column, shadow in chosen:
            head = shadow.served.head
            cells: list[Prepared | BaseException] = []
            for index, item in enumerate(items):
                try:
                    cells.append(_prepare(head, _as_item(head, item, index), options[column]))
                except Exception as exc:  # noqa: BLE001 (the shadow's alone)
                    cells.append(exc)
            shadowed.append(cells)
        return prepared, shadowed

    async def _shadow(
        self,
        shadow: Shadow,
        cells: list[Prepared | BaseException],
        options: Any,
        live_done: asyncio.Future[list[list[Any]]],
        column: int,
        inline: bool,
    ) -> None:
        """A shadow's rows through the model beside a live call's, finished, and compared
        with the live head's results once they are there; nothing reaches the live call."""
        head, live = shadow.served.head, shadow.live
        metrics = self.scheduler.metrics
        bulk = current_priority() == "bulk"  # the live call's
        work = [Work(head, row, bulk) for p in cells if isinstance(p, Prepared) for row in p.rows]
        try:
            outputs: list[Any] = []
            if work:
                outputs, _ = await self.scheduler.submit(work, return_exceptions=True)
            cells_of = [[c if isinstance(c, Prepared) else _failure(c)] for c in cells]
            finished = await _on_thread_unless(
                inline, _finish_all, [head], cells_of, outputs, [options], True
            )
            results = await live_done
        except Overloaded:
            shadow.stats.skip()
            return
        except asyncio.CancelledError:
            return  # the live call ended without results: nothing to compare
        except Exception:  # noqa: BLE001 (a shadow's failure is counted, never raised)
            log.debug("shadow %s failed beside %s", shadow.name, live, exc_info=True)
            shadow.stats.failed(len(cells))
            metrics.shadow_failures.labels(live, shadow.name).inc(len(cells))
            return
        added = shadow.stats.record(
            shadow.served.task, [row[column] for row in results], [row[0] for row in finished]
        )
        metrics.shadow_items.labels(live, shadow.name).inc(added.items)
        if added.failures:
            metrics.shadow_failures.labels(live, shadow.name).inc(added.failures)
        for measure, value in added.sums.items():
            metrics.shadow_agreement.labels(live, shadow.name, measure).inc(value)

    def _prepare_all(
        self,
        heads: Sequence[Head],
        items: Sequence[Any],
        options: Sequence[Any],
        isolate: bool,
    ) -> list[list[Prepared | HeadserveError]]:
        """Every item prepared by every head, each item's tokens checked against the limit."""
        prepared: list[list[Prepared | HeadserveError]] = []
        for index, item in enumerate(items):
            cells: list[Prepared | HeadserveError] = []
            for head, opts in zip(heads, options, strict=True):
                try:
                    cells.append(_prepare(head, _as_item(head, item, index), opts))
                except InvalidInput as exc:
                    if not isolate:
                        raise _item_error(index, exc) from exc
                    cells.append(_item_error(index, exc))
                except HeadserveError as exc:
                    if not isolate:
                        raise
                    cells.append(exc)
            ready = [c for c in cells if isinstance(c, Prepared)]
            try:
                self.request_limits.check_tokens(index, ready)
            except HeadserveError as exc:
                if not isolate:
                    raise
                cells = [exc if isinstance(c, Prepared) else c for c in cells]
            prepared.append(cells)
        return prepared

    async def _read_images(self, items: Sequence[Any]) -> Sequence[Any]:
        """Items as the heads take them: each image decoded and preprocessed, off the event
        loop; an item of the wrong modality for the backbone is refused, named."""
        backbone = self.backbone
        for index, item in enumerate(items):
            if isinstance(item, ImageItem) != (backbone.modality == "image"):
                raise InvalidArgument(
                    f"items[{index}].image",
                    f"this server's backbone ({backbone.kind}) reads {backbone.modality}: "
                    + (
                        "send the item's image, not text"
                        if backbone.modality == "image"
                        else "send text, not an image"
                    ),
                    item=index,
                )
        if backbone.modality != "image":
            return items
        # each image's header first: what decoding it will cost, held from the server's
        # budget while it decodes, so concurrent decodes fit in --max-image-decode-bytes
        sizes = await asyncio.to_thread(self._image_sizes, items)
        decoded = []
        for index, item in enumerate(items):
            cost = sizes[index] * DECODE_BYTES_PER_PIXEL
            pixels = await self.decode_budget.run(cost, self._read_image, index, item, cost)
            decoded.append(replace(item, pixels=pixels))
        return decoded

    def _image_sizes(self, items: Sequence[ImageItem]) -> list[int]:
        from ..backbones.images import pixels  # Pillow: only image backbones need it

        limit = self.request_limits.max_image_pixels
        return [
            self._caller_image(index, pixels, item.data, limit) for index, item in enumerate(items)
        ]

    def _read_image(self, index: int, item: ImageItem, cost: int) -> Any:
        limit = self.request_limits.max_image_pixels
        try:
            return self._caller_image(index, self.backbone.read_image, item.data, limit)
        finally:
            if cost >= TRIM_AFTER_BYTES:  # give a large decode's memory back (memory.py)
                trim_heap()

    @staticmethod
    def _caller_image(index: int, read: Callable[[bytes, int], T], data: bytes, limit: int) -> T:
        try:
            return read(data, limit)
        except ValueError as exc:  # the caller's bytes: say what is wrong with them
            raise InvalidArgument(f"items[{index}].image", str(exc), item=index) from exc

    async def tokenized(
        self, items: Sequence[TextItem | ImageItem], *, add_special_tokens: bool, truncate: bool
    ) -> list[Tokenized]:
        """`tokenize`, off the event loop unless the text is short (INLINE_CHARS), as heads'
        prepare runs: 160 texts of 100,000 characters would hold the loop for seconds."""
        short = sum(_chars(item) for item in items[: self.request_limits.max_request_items + 1])
        return await _on_thread_unless(
            short <= INLINE_CHARS,
            functools.partial(
                self.tokenize, items, add_special_tokens=add_special_tokens, truncate=truncate
            ),
        )

    def tokenize(
        self, items: Sequence[TextItem | ImageItem], *, add_special_tokens: bool, truncate: bool
    ) -> list[Tokenized]:
        if not items:
            raise InvalidArgument("items", "empty batch: send at least one item")
        self.request_limits.check_items(items)
        tokenizer = self.backbone.tokenizer
        if tokenizer is None:
            raise InvalidArgument(
                "items",
                f"this server's backbone ({self.backbone.kind}) reads "
                f"{self.backbone.modality}s: it has no tokenizer",
            )
        out = []
        for index, item in enumerate(items):
            if isinstance(item, ImageItem):
                raise InvalidArgument(f"items[{index}].image", "Tokenize takes text", item=index)
            for name, text in (("text", item.text), ("text_pair", item.text_pair)):
                if text is not None and not text.strip():  # as every other RPC refuses it
                    raise InvalidArgument(f"items[{index}].{name}", "is empty", item=index)
            enc = tokenizer(
                item.text,
                item.text_pair,
                add_special_tokens=add_special_tokens,
                truncation="longest_first" if truncate else False,
                max_length=self.backbone.max_length if truncate else None,
                return_offsets_mapping=True,
                return_token_type_ids=True,
            )
            ids = list(enc["input_ids"])
            sequence_ids = [-1 if s is None else s for s in enc.sequence_ids()]
            out.append(
                Tokenized(
                    ids=ids,
                    tokens=enc.tokens(),
                    offsets=[(int(a), int(b)) for a, b in enc["offset_mapping"]],
                    token_type_ids=list(enc.get("token_type_ids") or [0] * len(ids)),
                    sequence_ids=sequence_ids,
                )
            )
        return out
