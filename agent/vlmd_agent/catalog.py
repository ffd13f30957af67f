"""The event catalog: every kind vlmd accepts and every field of its body, declared once.

Each kind's body is a `msgspec.Struct`. A field's annotation is its type and bounds (what
validation enforces); its `doc` says what it means and in which unit. Everything else is derived
from here: validation of what producers send (`vlmd_agent.wire`), the daemon's typed bodies,
Datasette's column metadata, export column types and the columns of answers.csv. A new metric
is one new field here (and, if answers.csv should carry it, its name in `ANSWER_COLUMNS`).

Units are pint names, as Datasette shows them: ``ms``, ``s``, ``MiB`` (1024 * 1024 bytes, as
the agent measures memory), ``J``; counts have none.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

MAX_ID = 256
RUN_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
SHARD_PATTERN = r"^\d{1,6}/\d{1,6}$"
_BIG = sys.float_info.max  # bounds that make infinities invalid (JSON has none; Python has)


def doc(meaning: str, unit: str | None = None) -> Meta:
    """A field's meaning (and unit), for validation errors, Datasette and the docs."""
    return Meta(description=meaning, extra={"unit": unit} if unit else {})


# -- value types: bounds only; a field adds its meaning with `doc` ------------------------------
Text = str
Number = Annotated[float, Meta(ge=-_BIG, le=_BIG)]
NonNegative = Annotated[float, Meta(ge=0, le=_BIG)]
Count = Annotated[int, Meta(ge=0)]
Integer = int
Host = Annotated[str, Meta(max_length=256)]
Shard = Annotated[str, Meta(pattern=SHARD_PATTERN)]
"""``"i/n"``: shard i of n (0 <= i < n, which `vlmd_agent.wire` checks besides the pattern)."""
ItemId = int | Annotated[str, Meta(min_length=1, max_length=MAX_ID)]
Texts = str | list[str]
FailReason = Literal["oom", "timeout", "backend_error", "bad_input"]


class Body(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """The body of an event. Producers may add fields the catalog does not name: they are
    stored as sent (the log keeps the body's JSON), but nothing reads them. Bodies are
    immutable and hold no cycles, so the garbage collector need not track them (``gc=False``:
    ingest makes thousands a batch)."""


class RunSubmitted(Body, kw_only=True, frozen=True):
    """``run.submitted``: a run was submitted (to vlmd, or registered by a launcher)."""

    model: Annotated[str, Meta(max_length=1024), doc("Model SPEC (openai:NAME@URL, hf:PATH, "
                                                     "demo:NAME)")]
    dataset: Annotated[str, Meta(max_length=4096), doc("Dataset path or name")]
    total: Annotated[Count | None, doc("Items in the run, when known at submission")] = None
    dataset_sha256: Annotated[Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")] | None,
                              doc("SHA-256 of the dataset's content as vlmd read it at "
                                  "submission: of its file, or of its shards' digests in "
                                  "reading order (docs/DATASETS.md)")] = None
    name: Annotated[Annotated[str, Meta(pattern=RUN_PATTERN)] | None,
                    doc("A human name for the run")] = None
    config: Annotated[dict[str, Any] | None, doc("The launch options, as submitted")] = None
    shards: Annotated[Annotated[int, Meta(ge=1)] | None, doc("Agents the items are split over")
                      ] = None


class RunStarted(Body, kw_only=True, frozen=True):
    """``run.started``: one agent (one shard) started evaluating its share."""

    total: Annotated[Count, doc("Items in this agent's share")]
    host: Annotated[Host, doc("The agent's host")]
    pid: Annotated[Count, doc("The wrapper's process id")]
    shard: Annotated[Shard | None, doc("The agent's shard, i/n")] = None


class ItemOutcome(Body, kw_only=True, frozen=True):
    """What ``item.completed`` and ``item.failed`` share: the item and what it cost."""

    item: Annotated[ItemId, doc("Dataset item id")]
    question: Annotated[Text | None, doc("The question asked, when the agent sent it")] = None
    expected: Annotated[Texts | None, doc("The expected answer (a JSON array when several are "
                                          "accepted)")] = None
    shard: Annotated[Shard | None, doc("The agent's shard (i/n) that produced the outcome")
                     ] = None
    ttft_ms: Annotated[NonNegative | None, doc("Time to first token: request sent to the first "
                                               "chunk with generated content", "ms")] = None
    tpot_ms: Annotated[NonNegative | None, doc("Time per output token after the first: "
                                               "(e2e - TTFT) / (tokens - 1)", "ms")] = None
    e2e_ms: Annotated[NonNegative | None, doc("End-to-end latency of the request", "ms")] = None
    input_tokens: Annotated[Count | None, doc("Prompt tokens, as the server or tokenizer "
                                              "counted them")] = None
    output_tokens: Annotated[Count | None, doc("Generated tokens")] = None
    vram_before_mb: Annotated[NonNegative | None, doc("GPU memory in use before the request",
                                                      "MiB")] = None
    vram_peak_delta_mb: Annotated[Number | None, doc("Peak GPU memory during the request minus "
                                                     "before it (negative: memory freed)",
                                                     "MiB")] = None
    scorer: Annotated[Annotated[str, Meta(max_length=16)] | None,
                      doc("The scorer that grades the item: mcq, vqa, anls, relaxed or exact "
                          "(docs/SCORING.md)")] = None
    options: Annotated[dict[str, str] | None, doc("A multiple-choice item's options, letter -> "
                                                  "text")] = None
    hint: Annotated[Text | None, doc("The item's hint (context) shown with the question")
                    ] = None
    category: Annotated[Text | None, doc("The item's category in its benchmark (MMBench's "
                                         "ability, ScienceQA's category, MMMU's subject)")] = None
    l2_category: Annotated[Text | None, doc("The coarser category above it (MMBench's "
                                            "l2-category, ScienceQA's subject)")] = None
    split: Annotated[Text | None, doc("The benchmark split the item comes from (dev, test)")
                     ] = None
    circular_group: Annotated[Annotated[str, Meta(max_length=MAX_ID)] | None,
                              doc("In a circular file (CircularEval), the question this "
                                  "rotation belongs to: its index modulo 1,000,000")] = None


class ItemCompleted(ItemOutcome, kw_only=True, frozen=True):
    """``item.completed``: the model answered an item."""

    answer: Annotated[Text, doc("The model's answer")]
    score: Annotated[Number | None, doc("Score from 0 to 1 (the dataset's scorer)")] = None
    tokens_source: Annotated[Annotated[str, Meta(max_length=32)] | None,
                             doc("Where output_tokens comes from: usage (the server's), "
                                 "tokenizer, or chunks (streamed chunks counted)")] = None
    vram_note: Annotated[Annotated[str, Meta(max_length=256)] | None,
                         doc("Why no VRAM delta was measured, when none was (a remote server, "
                             "a CPU model)")] = None
    vram_source: Annotated[Literal["torch.cuda", "nvml", "torch.cuda-shared",
                                   "nvml-shared"] | None,
                           doc("How the VRAM delta was measured; -shared: other requests were "
                               "in flight, so it is theirs as much as this item's")] = None
    itl_ms: Annotated[list[NonNegative] | None,
                      doc("Gaps between consecutive content chunks after the first (for ITL "
                          "percentiles)", "ms")] = None
    request_start: Annotated[NonNegative | None,
                             doc("When the request was sent (epoch seconds; the kernel's send "
                                 "time where timing_source is kernel)", "s")] = None
    timing_source: Annotated[Literal["kernel", "kernel-rx", "user", "mixed"] | None,
                             doc("The clock of the timings: kernel (packet timestamps at both "
                                 "ends), kernel-rx (received data only), user (read by the "
                                 "process), mixed")] = None
    energy_j: Annotated[NonNegative | None,
                        doc("GPU energy used during the request: NVML's energy counter over "
                            "it, on the model's GPUs (in-process models)", "J")] = None
    energy_source: Annotated[Literal["nvml", "na"] | None,
                             doc("nvml: energy_j was measured; na: the GPU has no energy "
                                 "counter")] = None
    kv_cache_peak: Annotated[NonNegative | None,
                             doc("The serving engine's KV-cache usage at its peak during the "
                                 "request, a fraction from 0 to 1 (its /metrics; shared by "
                                 "every request it serves)")] = None
    server_running: Annotated[Count | None,
                              doc("Requests the engine was running, at most, during the "
                                  "request")] = None
    server_waiting: Annotated[Count | None,
                              doc("Requests waiting in the engine's queue, at most, during the "
                                  "request")] = None
    choice: Annotated[Annotated[str, Meta(pattern=r"^[A-Z]$")] | None,
                      doc("The option letter read from a multiple-choice answer (by the rules "
                          "or the judge)")] = None
    unparsed: Annotated[bool | None, doc("True when no rule (nor judge) could tell which option "
                                         "the answer picks: it scores 0, never a guess")] = None
    judged: Annotated[bool | None, doc("True when a judge's verdict (item.judged) decided the "
                                       "score")] = None


class ItemFailed(ItemOutcome, kw_only=True, frozen=True):
    """``item.failed``: an item got no answer."""

    reason: Annotated[FailReason, doc("Why: oom, timeout, backend_error or bad_input")]
    message: Annotated[Text, doc("What went wrong, for a person")]


class ItemJudged(Body, kw_only=True, frozen=True):
    """``item.judged``: a judge model read a multiple-choice answer the rules could not
    (``--judge``); the item's ``item.completed`` follows its verdict."""

    item: Annotated[ItemId, doc("Dataset item id")]
    judge: Annotated[Annotated[str, Meta(max_length=1024)], doc("The judge's model SPEC "
                                                                "(openai:NAME@URL)")]
    prompt: Annotated[Text, doc("What the judge was asked")]
    reply: Annotated[Text | None, doc("The judge's reply, as it came")] = None
    letter: Annotated[Annotated[str, Meta(pattern=r"^[A-Z]$")] | None,
                      doc("The option letter read from the reply (Z: no option matches); "
                          "none when the reply names none")] = None
    error: Annotated[Text | None, doc("Why the judge gave no reply, when it did not")] = None
    shard: Annotated[Shard | None, doc("The agent's shard (i/n) that asked")] = None


class Gpu(Body, kw_only=True, frozen=True):
    """One GPU in a sample (`vlmd_agent.watch.gpu`: NVML, else nvidia-smi). A metric the device
    cannot give is null and named in ``na``; a lost GPU has only ``index``, ``lost``, ``error``.
    Not validated field by field (devices vary); declared for its meaning and units."""

    index: Annotated[Integer | None, doc("GPU index (nvidia-smi --query-gpu=index)")] = None
    uuid: Annotated[Text | None, doc("GPU UUID (uuid)")] = None
    name: Annotated[Text | None, doc("GPU model name (name)")] = None
    mem_used_mb: Annotated[NonNegative | None, doc("GPU memory used (memory.used)", "MiB")] = None
    mem_total_mb: Annotated[NonNegative | None, doc("GPU memory in total (memory.total)", "MiB")
                            ] = None
    mem_reserved_mb: Annotated[NonNegative | None, doc("GPU memory the driver reserves "
                                                       "(memory.reserved)", "MiB")] = None
    util_gpu: Annotated[NonNegative | None, doc("GPU utilisation (utilization.gpu)", "percent")
                        ] = None
    util_mem: Annotated[NonNegative | None, doc("Memory controller utilisation "
                                                "(utilization.memory)", "percent")] = None
    power_w: Annotated[NonNegative | None, doc("Power draw (power.draw)", "W")] = None
    temp_c: Annotated[Number | None, doc("GPU temperature in degrees Celsius (temperature.gpu)")
                      ] = None
    proc_mem_mb: Annotated[NonNegative | None, doc("GPU memory of the model's processes", "MiB")
                           ] = None
    proc_mem_source: Annotated[Text | None, doc("Where proc_mem_mb comes from")] = None
    na: Annotated[list[str] | None, doc("The metrics this device cannot give")] = None
    lost: Annotated[bool | None, doc("True when the GPU did not answer (lost, reset needed)")
                    ] = None
    error: Annotated[Text | None, doc("Why the GPU is lost")] = None
    energy_j: Annotated[NonNegative | None, doc("Energy the GPU used since its driver loaded "
                                                "(NVML's total energy counter)", "J")] = None


class Ram(Body, kw_only=True, frozen=True):
    """RAM figures in a sample (`vlmd_agent.watch.memory`)."""

    rss_mb: Annotated[NonNegative | None, doc("Resident memory of the model process tree",
                                              "MiB")] = None
    host_used_mb: Annotated[NonNegative | None, doc("Host RAM in use (total minus available)",
                                                    "MiB")] = None
    host_available_mb: Annotated[NonNegative | None, doc("Host RAM available", "MiB")] = None
    host_total_mb: Annotated[NonNegative | None, doc("Host RAM in total", "MiB")] = None
    cgroup_usage_mb: Annotated[NonNegative | None, doc("Memory charged to the agent's cgroup",
                                                       "MiB")] = None
    cgroup_limit_mb: Annotated[NonNegative | None, doc("The cgroup's memory limit (empty when "
                                                       "unlimited)", "MiB")] = None
    oom_kills: Annotated[Count | None, doc("OOM kills the cgroup has seen (a count)")] = None


class Sample(Body, kw_only=True, frozen=True):
    """One watchdog sample: the time, every GPU (a device dict each, `vlmd_agent.watch.gpu`)
    and RAM figures."""

    t: Annotated[NonNegative, doc("Sample time (agent clock)", "s")]
    gpus: Annotated[list[dict[str, Any]], doc("One object per GPU (`Gpu`)")]
    ram: Annotated[dict[str, Any], doc("RAM figures (`Ram`)")]


class ServerScrape(Body, kw_only=True, frozen=True):
    """One read of the serving engine's Prometheus /metrics (`vlmd_agent.watch.server`)."""

    t: Annotated[NonNegative, doc("When it was read (agent clock)", "s")]
    engine: Annotated[Text | None, doc("vllm or sglang: whose metric families it has")] = None
    kv_cache_usage: Annotated[NonNegative | None, doc("KV-cache usage, a fraction from 0 to 1 "
                                                      "(the largest over the engine's ranks)")
                              ] = None
    running: Annotated[NonNegative | None, doc("Requests the engine is running")] = None
    waiting: Annotated[NonNegative | None, doc("Requests waiting in its queue")] = None
    error: Annotated[Text | None, doc("Why the read failed")] = None


class WatchdogSample(Body, kw_only=True, frozen=True):
    """``watchdog.sample``: one sample inline (``t``, ``gpus``, ``ram``), or a batch of them
    in ``samples``; `vlmd_agent.wire` checks that it is exactly one of the two."""

    host: Annotated[Host, doc("The agent's host")]
    samples: Annotated[list[Sample] | None, doc("A batch of samples")] = None
    server: Annotated[list[dict[str, Any]] | None, doc("The serving engine's /metrics read in "
                                                       "the same second (`ServerScrape`)")
                      ] = None
    model_gpus: Annotated[list[int] | None, doc("The indexes of the GPUs that run the model "
                                                "(its energy is the run's); absent when the "
                                                "model is not on this host")] = None
    t: Annotated[NonNegative | None, doc("Sample time (agent clock), inline form", "s")] = None
    gpus: Annotated[list[Any] | None, doc("The GPUs, inline form")] = None
    ram: Annotated[dict[str, Any] | None, doc("RAM figures, inline form")] = None


class Heartbeat(Body, kw_only=True, frozen=True):
    """``watchdog.heartbeat``: an agent is alive, and what its wrapper is doing."""

    host: Annotated[Host, doc("The agent's host")]
    pid: Annotated[Count, doc("The watchdog's process id")]
    wrapper_pid: Annotated[Integer | None, doc("The wrapper's process id (null while none "
                                               "runs)")]
    wrapper_state: Annotated[Annotated[str, Meta(max_length=64)],
                             doc("loading, ready, running, ...")]
    shard: Annotated[Shard | None, doc("The agent's shard, i/n")] = None
    heartbeat_s: Annotated[NonNegative | None, doc("Seconds between this agent's heartbeats "
                                                   "(vlmd's default when absent)", "s")] = None


class RunPhase(Body, kw_only=True, frozen=True):
    """``run.phase``: what an agent is doing before (and around) its items, so a long wait says
    why: resolving (reading the dataset), preflight (asking the model server), building (a demo
    model), loading (the model), warmup (the first items), evaluating."""

    phase: Annotated[Annotated[str, Meta(max_length=32)], doc("resolving, preflight, building, "
                                                              "loading, warmup, evaluating")]
    message: Annotated[Annotated[str, Meta(max_length=1024)] | None,
                       doc("What exactly, for a person")] = None
    step: Annotated[Count | None, doc("Steps of the phase done, when it counts them")] = None
    steps: Annotated[Count | None, doc("Steps of the phase in all, when known")] = None
    size_mb: Annotated[NonNegative | None, doc("Size of the model being loaded", "MiB")] = None
    items_per_s: Annotated[NonNegative | None, doc("Items per second so far (warmup)")] = None
    shard: Annotated[Shard | None, doc("The agent's shard, i/n")] = None


class RunFinished(Body, kw_only=True, frozen=True):
    """``run.finished``: a shard (with ``shard``) or the whole run ended well."""

    shard: Annotated[Shard | None, doc("The shard that finished; none: the run")] = None


class RunFailed(Body, kw_only=True, frozen=True):
    """``run.failed``: a shard (with ``shard``) or the whole run failed."""

    reason: Annotated[Text, doc("Why, for a person")]
    shard: Annotated[Shard | None, doc("The shard that failed; none: the run")] = None


class RunCancelled(Body, kw_only=True, frozen=True):
    """``run.cancelled``: the run was stopped by a person."""

    reason: Annotated[Text | None, doc("Why, when given")] = None


class RunScheduled(Body, kw_only=True, frozen=True):
    """``run.scheduled``: a scheduler (Slurm) accepted the run's shards as a job (first
    submission, or `vlmd resume`)."""

    scheduler: Annotated[Annotated[str, Meta(max_length=32)], doc("slurm, ...")]
    job: Annotated[Annotated[str, Meta(max_length=64)], doc("The scheduler's job id")]
    shards: Annotated[list[Any], doc("The shard indices the job runs")]
    of: Annotated[Annotated[int, Meta(ge=1)], doc("Shards in the run")]
    script: Annotated[Text | None, doc("The job script")] = None
    resume: Annotated[bool | None, doc("True when this resubmits unfinished shards")] = None


class SchedulerTask(Body, kw_only=True, frozen=True):
    """``scheduler.task``: what the scheduler says about one shard's task (PENDING with its
    reason, RUNNING on a node, COMPLETED, FAILED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, ...)."""

    scheduler: Annotated[Annotated[str, Meta(max_length=32)], doc("slurm, ...")]
    job: Annotated[Annotated[str, Meta(max_length=64)], doc("The scheduler's job id")]
    shard: Annotated[Shard, doc("The shard, i/n")]
    state: Annotated[Annotated[str, Meta(max_length=64)], doc("The scheduler's state name")]
    reason: Annotated[Text | None, doc("The scheduler's reason")] = None
    node: Annotated[Annotated[str, Meta(max_length=1024)] | None, doc("Where it runs")] = None
    exit_code: Annotated[Integer | None, doc("The task's exit status")] = None
    signal: Annotated[Integer | None, doc("The signal that ended it")] = None
    restarts: Annotated[Count | None, doc("How often the scheduler restarted the task")] = None


class Alert(Body, kw_only=True, frozen=True):
    """``alert.<name>``: something a person should look at, with the evidence."""

    message: Annotated[Text, doc("What happened, for a person")]
    samples: Annotated[list[Any] | None, doc("The watchdog samples around it")] = None
    stacks: Annotated[Texts | None, doc("The wrapper's Python stacks (hangs)")] = None
    signal: Annotated[Integer | None, doc("The signal that ended the process")] = None
    exit_code: Annotated[Integer | None, doc("The process's exit status")] = None
    shard: Annotated[Shard | None, doc("The agent's shard, i/n")] = None
    host: Annotated[Host | None, doc("The agent's host, when the alert is about one agent")
                    ] = None
    pid: Annotated[Count | None, doc("The agent's process id, when the alert is about one")
                   ] = None


KINDS: dict[str, type[Body]] = {
    "run.submitted": RunSubmitted,
    "run.started": RunStarted,
    "item.completed": ItemCompleted,
    "item.failed": ItemFailed,
    "item.judged": ItemJudged,
    "watchdog.sample": WatchdogSample,
    "watchdog.heartbeat": Heartbeat,
    "run.phase": RunPhase,
    "run.finished": RunFinished,
    "run.failed": RunFailed,
    "run.cancelled": RunCancelled,
    "run.scheduled": RunScheduled,
    "scheduler.task": SchedulerTask,
}
"""Every kind by name, besides ``alert.<name>`` (whose body is `Alert`)."""

ALERT_PATTERN = r"alert\.[a-z][a-z0-9_]{0,63}"


def body_type(kind: str) -> type[Body] | None:
    """The body type of `kind` (`Alert` for any ``alert.<name>``); None for an unknown kind."""
    return KINDS.get(kind) or (Alert if kind.startswith("alert.") else None)


# -- answers.csv ---------------------------------------------------------------------------------
ANSWER_COLUMNS: tuple[str, ...] = (
    "run", "item", "question", "answer", "expected", "score", "ttft_ms", "tpot_ms", "e2e_ms",
    "input_tokens", "output_tokens", "vram_before_mb", "vram_peak_delta_mb", "error",
    "request_start", "energy_j", "kv_cache_peak", "server_running", "server_waiting",
    "category", "l2_category", "split", "circular_group", "scorer", "choice", "unparsed",
    "options",
)
"""The columns of answers.csv, in order: the run, then item fields (of `ItemCompleted`, or
`ItemOutcome` for a failed item), then `error`. New columns go after ``error``: readers go by
header name, but old readers go by position."""

ROW_FIELDS: dict[str, tuple[str, str | None]] = {
    "run": ("Run id", None),
    "error": ("reason: message, when the item failed (a later success clears it)", None),
}
"""The answers.csv columns that are not item body fields: meaning and unit."""


# -- what the declarations say, for the code derived from them ----------------------------------
class FieldInfo(msgspec.Struct, frozen=True):
    """One declared field: its name, whether it is required, its meaning and unit, its type
    in words (``text``, ``integer``, ``number``, ``boolean``, ``list``, ``object``, or a
    union such as ``integer or text``), and its msgspec type (bounds included)."""

    name: str
    required: bool
    meaning: str
    unit: str | None
    type_name: str
    type: msgspec.inspect.Type


_TYPE_NAMES = {msgspec.inspect.StrType: "text", msgspec.inspect.IntType: "integer",
               msgspec.inspect.FloatType: "number", msgspec.inspect.BoolType: "boolean",
               msgspec.inspect.ListType: "list", msgspec.inspect.DictType: "object",
               msgspec.inspect.LiteralType: "text", msgspec.inspect.AnyType: "any",
               msgspec.inspect.StructType: "object"}


def type_name(t: msgspec.inspect.Type) -> str:
    """`t` in words; None is left out of a union (an optional field may be null)."""
    if isinstance(t, msgspec.inspect.Metadata):
        return type_name(t.type)
    if isinstance(t, msgspec.inspect.UnionType):
        names = [type_name(m) for m in t.types if not isinstance(m, msgspec.inspect.NoneType)]
        return " or ".join(dict.fromkeys(names))
    return _TYPE_NAMES.get(type(t), "any")


def fields(body: type[Body]) -> list[FieldInfo]:
    """The declared fields of `body`, in declaration order (a base class's first)."""
    info = msgspec.inspect.type_info(body)
    assert isinstance(info, msgspec.inspect.StructType)
    found = []
    for f in info.fields:
        t, meaning, unit = f.type, "", None
        if isinstance(t, msgspec.inspect.Metadata):
            meaning = (t.extra_json_schema or {}).get("description", "")
            unit = (t.extra or {}).get("unit")
            t = t.type
        found.append(FieldInfo(f.name, f.required, meaning, unit, type_name(t), t))
    return found


def answer_columns() -> list[FieldInfo]:
    """Every answers.csv column as a field: the item fields of `ItemCompleted`, and `ROW_FIELDS`
    (as optional text)."""
    item = {f.name: f for f in fields(ItemCompleted)}
    text = msgspec.inspect.StrType(None, None, None)
    return [item[name] if name in item else FieldInfo(name, False, *ROW_FIELDS[name], "text", text)
            for name in ANSWER_COLUMNS]
