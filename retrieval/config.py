"""The one configuration model of an llmrec application.

`ray_config.yaml` passes a dict of these fields as the application's `args`;
`build_app` validates it once with `AppConfig.model_validate`. Every field has
a default, bounds where bounds make sense, and a one-line docstring. Relative
paths are resolved against the project root (the folder holding
`ray_config.yaml`), so `serve deploy` works from any working directory.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

PROJECT_ROOT = Path(__file__).resolve().parents[1]

IndexType = Literal["flat", "hnsw", "ivfsq", "ivfpq"]
INDEX_TYPES: tuple[str, ...] = get_args(IndexType)
"""The shard index types (retrieval/index_types.py says how each is made and searched)."""
Precision = Literal["auto", "fp32", "fp16", "bf16", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
Engine = Literal["auto", "torch", "onnx"]
ENGINES: tuple[str, ...] = get_args(Engine)
SEARCH_KNOBS = frozenset({"nprobe", "ef_search", "refine_k_factor", "exact_filter_fraction"})
"""The `RetrieverConfig` fields a shard's search reads (the rest is how the replica runs)."""

__all__ = [
    "ENGINES",
    "INDEX_TYPES",
    "PRECISIONS",
    "PROJECT_ROOT",
    "SEARCH_KNOBS",
    "IndexType",
    "AppConfig",
    "EncoderAutoscalingConfig",
    "EncoderConfig",
    "Engine",
    "IndexBuildConfig",
    "Precision",
    "RerankerConfig",
    "RetrieverConfig",
    "RouterConfig",
    "is_uri",
    "resolve_path",
]


def resolve_path(path: str | Path) -> Path:
    """An absolute path: relative ones are taken from the project root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (PROJECT_ROOT / p).resolve()


_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(location: str | Path) -> bool:
    """Whether a `data_dir` is a storage URI (`s3://…`, `file:///…`) rather than a local path."""
    return isinstance(location, str) and _URI.match(location) is not None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class _Placed(_Section):
    """A deployment's Ray placement: logical CPUs (each section's `num_cpus`) and custom
    resources."""

    num_cpus: float
    """Logical Ray CPUs per replica (each section sets its default)."""
    resources: dict[str, float] = {}
    """Custom Ray resources each replica asks for, e.g. `{llmrec_shard: 0.01}`: a replica then
    runs only on nodes that declare them (`ray start --resources`, a KubeRay worker group's
    `rayStartParams`); see `cluster/placement.py`. Empty: any node with the CPUs/GPUs."""

    def actor_options(self, **extra: Any) -> dict[str, Any]:
        """`ray_actor_options` of this deployment: its CPUs, GPUs and custom resources."""
        options: dict[str, Any] = {"num_cpus": self.num_cpus}
        gpus = getattr(self, "num_gpus", None)  # the encoder and the reranker have GPUs
        if gpus is not None:
            options["num_gpus"] = gpus
        if self.resources:
            options["resources"] = dict(self.resources)
        return {**options, **extra}


class EncoderAutoscalingConfig(_Section):
    """Serve autoscaling of the encoder pool (`serve.config.AutoscalingConfig` fields)."""

    min_replicas: int = Field(1, ge=0, le=64)
    """Replicas kept when idle (0 scales to zero: the next request waits for a model load)."""
    max_replicas: int = Field(4, ge=1, le=64)
    """Most replicas; on GPU machines at most the GPUs you give the pool."""
    target_ongoing_requests: float = Field(32, gt=0)
    """Queued + running requests per replica the autoscaler aims for: about two batches' worth
    (one running, one assembling), i.e. 2 x max_batch_tokens / tokens of a typical text. Lower
    adds replicas that run half-empty batches; higher lets queues (and p99) grow first."""
    upscale_delay_s: float = Field(10.0, ge=0)
    """Load must stay above target this long before replicas are added."""
    downscale_delay_s: float = Field(300.0, ge=0)
    """Load must stay below target this long before replicas are removed (model loads are slow)."""

    @model_validator(mode="after")
    def _range(self) -> EncoderAutoscalingConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                "encoder.autoscaling.max_replicas must be >= encoder.autoscaling.min_replicas"
            )
        return self


class EncoderConfig(_Placed):
    model: str = "all-MiniLM-L6-v2"
    """Sentence-transformers model: the offline name above, a local folder or a Hugging Face id."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the forward pass runs; `auto` picks CUDA when the replica sees a GPU."""
    precision: Precision = "auto"
    """`auto`: fp16 on CUDA; on CPU, int8 where the CPU has VNNI int8 dot products or AVX2
    (`retrieval.hardware.select_encoder_precision`), fp32 elsewhere. `int8` runs in ONNX Runtime
    with per-channel int8 weights in the matrix products (7-bit without VNNI, whose kernels
    would overflow full-range ones) and is kept only when its vectors stay within cosine 0.98
    of fp32 on probe texts (fp32 otherwise). `bf16` is bf16 autocast in PyTorch; fp16 is
    GPU-only. `llmrec bench encoder` reports each CPU path's cosine to fp32. The catalog is
    always encoded exactly (fp32 on CPU) by `llmrec build`: only queries use the reduced
    precision."""
    engine: Engine = "auto"
    """Forward-pass runtime. `auto`: ONNX Runtime for fp32 and int8 on CPU (the model is exported
    at start and checked against PyTorch, fp32 to 1e-5; ~2x less CPU per text here than PyTorch
    fp32), PyTorch otherwise."""
    num_replicas: int = Field(1, ge=1, le=64)
    """Fixed replica count (the load tester's sweeps vary it); ignored when `autoscaling` is set."""
    autoscaling: EncoderAutoscalingConfig | None = None
    """When set, Serve autoscales the pool between its min and max replicas instead."""
    num_cpus: float = Field(0.5, gt=0)
    """Logical Ray CPUs each replica asks for (fractional so small machines can place the app)."""
    num_gpus: float = Field(0.0, ge=0)
    """GPUs per replica: 1 on GPU machines (the replica then runs on CUDA), 0 on CPU."""
    torch_threads: int = Field(2, ge=1)
    """Intra-op threads of the forward pass on CPU (ONNX Runtime's or PyTorch's): the cores a
    replica may use. On 2 cores, 2 threads served 190 rps at concurrency 64 against 156 with 1
    (`llmrec bench encoder --set torch_threads=1`, ONNX Runtime, whose threads sleep rather than
    spin between ops). Use 1 when other busy processes share the cores: there, PyTorch's
    spinning threads cost ~2.7x CPU per request with 2 threads."""
    max_batch_tokens: int | None = Field(None, ge=8)
    """Token budget of one batch: requests x longest request (padded tokens), summed over its
    forward passes; `null` picks 512 on CPU replicas and 16384 on GPU replicas. A batch's forward
    time is about budget / (tokens/s of the device), and requests queued behind it wait that
    long, so keep it at the smallest batch that reaches the device's best tokens/s: on CPU
    that is ~16 short texts (bigger batches were no cheaper per text and doubled p99), on a GPU
    thousands of tokens. Tune with `llmrec bench encoder`; must be >= max_seq_length."""
    max_batch_size: int = Field(64, ge=1, le=1024)
    """Request cap of one batch (short texts stop here before the token budget does)."""
    batch_wait_timeout_s: float | None = Field(None, ge=0, le=1)
    """Longest a request waits for its batch to fill while the model is idle; requests queued
    behind a running batch never wait longer than it. `null` picks 0 on CPU replicas (an idle
    replica encodes a lone query at once, and what arrives meanwhile batches behind it: on 2
    cores the demo's `query` p50 fell from 11.1 to 7.5 ms above the one-hop floor at one
    client, with no loss at 16, `llmrec bench pipeline`) and 0.002 on GPU replicas, where a
    pass of one text costs about as much as a pass of many."""
    pass_cost_tokens: int = Field(64, ge=0)
    """Fixed cost of one forward pass, in tokens, used to split a batch by length: a group of
    long texts gets its own pass when that saves more padded tokens than this. Measure it as
    (time of a 1-text pass) x (tokens/s at a full batch); 0 splits at every length."""
    cache_size: int = Field(10_000, ge=0)
    """Entries of the LRU cache of query vectors, keyed by normalised text (0 disables it;
    ~1.5 KB each for a 384-dim model)."""
    max_ongoing_requests: int = Field(256, ge=1)
    """Requests a replica accepts at once: >= max_batch_size so batches can fill, ~2x so the
    next batch assembles while one runs; beyond that requests only queue."""
    max_queued_requests: int = Field(256, ge=-1)
    """Requests Serve holds for the pool beyond what its replicas accept (-1: unbounded). Past
    it a caller is refused at once: the router answers 503 with Retry-After."""
    max_seq_length: int = Field(256, ge=8, le=8192)
    """Tokens kept per text; longer texts are truncated."""
    build_batch_size: int = Field(64, ge=1)
    """Texts per forward pass in `llmrec build`."""

    @model_validator(mode="after")
    def _batches_can_fill(self) -> EncoderConfig:
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                "encoder.max_ongoing_requests must be >= encoder.max_batch_size, "
                "or batches can never fill"
            )
        if self.max_batch_tokens is None:
            self.max_batch_tokens = 16384 if self.num_gpus > 0 else 512
        if self.batch_wait_timeout_s is None:
            self.batch_wait_timeout_s = 0.002 if self.num_gpus > 0 else 0.0
        if self.max_batch_tokens < self.max_seq_length:
            raise ValueError(
                "encoder.max_batch_tokens must be >= encoder.max_seq_length, "
                "or the longest text cannot fit in a batch"
            )
        if self.device == "cuda" and self.num_gpus == 0:
            raise ValueError("encoder.device cuda needs encoder.num_gpus >= 1 (or device: auto)")
        if self.device == "cpu" and self.num_gpus > 0:
            raise ValueError("encoder.device cpu would leave encoder.num_gpus unused; set it to 0")
        if self.precision == "fp16" and (self.device == "cpu" or self.num_gpus == 0):
            raise ValueError("encoder.precision fp16 needs a GPU (num_gpus: 1); on CPU use bf16")
        if self.engine == "onnx" and (self.num_gpus > 0 or self.precision in ("fp16", "bf16")):
            raise ValueError("encoder.engine onnx runs fp32 or int8 on CPU; use engine: torch here")
        if self.precision == "int8" and (
            self.num_gpus > 0 or self.device == "cuda" or self.engine == "torch"
        ):
            raise ValueError(
                "encoder.precision int8 runs in ONNX Runtime on CPU (engine auto or onnx, "
                "num_gpus 0)"
            )
        scaling = self.autoscaling
        if scaling is not None and scaling.target_ongoing_requests > self.max_ongoing_requests:
            raise ValueError(
                "encoder.autoscaling.target_ongoing_requests must be <= "
                "encoder.max_ongoing_requests, or the target is never reached"
            )
        return self

    def deployment_options(self) -> dict[str, Any]:
        """The Serve `.options(...)` of the encoder pool from this config."""
        options: dict[str, Any] = {
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "ray_actor_options": self.actor_options(),
        }
        if self.autoscaling is not None:
            options["autoscaling_config"] = self.autoscaling.model_dump()
        else:
            options["num_replicas"] = self.num_replicas
        return options


class IndexBuildConfig(_Section):
    """What `llmrec build` writes per shard; recorded in the manifest (`index_type`, params)."""

    type: Literal["auto", IndexType] = "auto"
    """Index per shard; `auto` is exact (flat) up to 100k items per shard, else ivfsq."""
    hnsw_m: int = Field(32, ge=4, le=128)
    """HNSW links per node: ~8*M bytes of graph per vector; more recalls better, builds slower."""
    hnsw_ef_construction: int = Field(80, ge=8, le=1024)
    """HNSW build beam width; higher builds slower and gives a better graph."""
    ivf_nlist: int = Field(0, ge=0, le=262_144)
    """IVF lists per shard; 0 picks ~2*sqrt(items per shard), rounded to a power of two."""
    sq_bits: Literal[4, 6, 8] = 8
    """ivfsq: bits per dimension (8 keeps ~1/4 of float32 memory)."""
    pq_m: int = Field(48, ge=1, le=1024)
    """ivfpq: code bytes per vector (sub-quantizers); must divide the encoder dimension."""
    pq_nbits: int = Field(8, ge=4, le=12)
    """ivfpq: bits per sub-quantizer code."""
    pq_refine: bool = False
    """ivfpq: keep full vectors on disk (memory-mapped) and re-rank candidates exactly."""
    train_size: int = Field(131_072, ge=256, le=10_000_000)
    """Vectors sampled from the catalog to train IVF centroids and codebooks."""


class RetrieverConfig(_Placed):
    num_cpus: float = Field(0.1, gt=0)
    """Logical Ray CPUs per retriever replica."""
    max_ongoing_requests: int = Field(128, ge=1)
    """Concurrent searches a shard replica accepts."""
    max_queued_requests: int = Field(128, ge=-1)
    """Searches Serve holds for a shard beyond `max_ongoing_requests` (-1: unbounded); past it
    the shard is refused at once and named in `degraded`."""
    shards_per_replica: int = Field(4, ge=1, le=4096)
    """Shards one retriever replica serves (`ShardLayout`): the router makes one call per
    replica and the replica searches its shards and merges them, so fewer replicas cost
    fewer Serve hops (the demo's 4 shards: one call). More replicas spread the shards over
    nodes and fail apart; a replica that fails names each of its shards in `degraded`."""
    candidates: int = Field(50, ge=1, le=1000)
    """ANN candidates asked of every shard before fusion."""
    faiss_threads: int = Field(1, ge=1)
    """OpenMP threads of a shard's searches and writes, on the replica's event loop and in its
    worker threads; 1 keeps concurrent shards from oversubscribing cores."""
    inline_search_ms: float = Field(5.0, ge=0, le=1000)
    """Searches that have recently taken less than this run on the replica's event loop; slower
    ones run in a worker thread (FAISS releases the GIL) so the loop keeps taking requests. A
    thread hop costs milliseconds on busy cores (waiting for the GIL), more than an HNSW or IVF
    search over 250k items, and a search of a few small shards is mostly Python, which holds
    the GIL in a thread too (the demo's four shards: about 1.1 ms on an AVX2-only EPYC, where
    a 1 ms threshold sent every search to a thread); 0 sends every search to a thread.
    Lookups (rows and vectors by id) follow the same rule, timed apart from the searches."""
    index: IndexBuildConfig = IndexBuildConfig()
    """Build-time index choice (search-time knobs below apply without a rebuild)."""
    nprobe: int = Field(16, ge=1, le=65_536)
    """IVF lists probed per search (ivfsq, ivfpq); more recalls better, searches slower."""
    ef_search: int = Field(64, ge=1, le=4096)
    """HNSW search beam width; more recalls better, searches slower."""
    refine_k_factor: float = Field(16.0, ge=1, le=256)
    """ivfpq with refinement: compressed candidates per result re-ranked on full vectors."""
    exact_filter_fraction: float = Field(0.02, ge=0, le=1)
    """Filtered searches letting through less than this share of a shard's items scan exactly."""
    snapshot_every: int = Field(1000, ge=1, le=10_000_000)
    """Changes a shard takes (logged and replayed at load) before it writes a new snapshot."""
    use_gpu: bool = True
    """Search unfiltered flat/IVF queries on a GPU copy when faiss-gpu sees a GPU."""
    upsert_max_items: int = Field(256, ge=1, le=10_000)
    """Most items in one `POST /v1/items`."""
    upsert_max_bytes: int = Field(1 << 20, ge=1024, le=64 << 20)
    """Larger `POST /v1/items` bodies are refused with 413."""


class RerankerConfig(_Placed):
    enabled: bool = True
    """Deploy the vLLM reranker; when off, `rerank`/`explain` requests are answered degraded."""
    model: str = "SmolLM2-135M-Instruct"
    """LLM: the offline name (see `llmrec models prepare`), a local folder or a Hugging Face id."""
    num_replicas: int = Field(1, ge=1, le=64)
    """Reranker replicas, each with its own vLLM engine."""
    num_cpus: float = Field(0.5, gt=0)
    """Logical Ray CPUs per replica (Ray's bookkeeping; the engine's threads: `cpu_cores`)."""
    num_gpus: float = Field(0.0, ge=0)
    """GPUs per replica: 1 on GPU machines, 0 on CPU."""
    cpu_cores: str = "all"
    """CPU cores the engine's worker threads are bound to (vLLM's `VLLM_CPU_OMP_THREADS_BIND`):
    `all` = every core this replica may run on, `vllm` = vLLM's own choice (one thread per
    physical core, less one reserved for its scheduler: 1 of 2 cores), or a list such as
    `"2-5"`. Requests wait on the LLM more than on anything else, so on small machines it gets
    every core; the other deployments share them while it runs."""
    max_ongoing_requests: int = Field(32, ge=1)
    """Concurrent requests per replica; the engine batches them itself."""
    max_queued_requests: int = Field(16, ge=-1)
    """Requests Serve holds for a replica beyond `max_ongoing_requests` (-1: unbounded); past
    it the router is refused at once and answers without the LLM stages."""
    max_pending: int = Field(8, ge=1, le=1024)
    """LLM calls (a rerank or one request's explanations) a replica runs at once; more are
    refused at once (`QueueFull`) and the router degrades the stage. On a CPU each call takes
    ~1 s of both cores, so a deep queue only makes every waiting call miss its deadline."""
    health_probe_s: float = Field(300.0, ge=0, le=86_400)
    """Serve's health check (every 30 s) passes without a probe while the engine has
    answered within this many seconds and has not died; otherwise it scores a real prompt,
    so an idle engine is probed about this often. A probe costs an idle CPU engine over a
    second of a core (the forward pass, then its workers polling for the next request).
    0 probes at every check."""
    max_model_len: int = Field(2048, ge=256)
    """Context length the engine reserves per sequence."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """Weights and activations dtype. `auto`: bfloat16 on CPUs with native bf16 (avx512_bf16 or
    amx_bf16) and on GPUs that support it, float16 on other GPUs, float32 on other CPUs (where
    bf16 is emulated and several times slower than float32). The
    replica logs its choice and `/v1/health` shows it (`retrieval.hardware.select_llm_dtype`)."""
    block_size: int = Field(32, ge=16, le=256)
    """Tokens per KV-cache block: the prefix cache reuses whole blocks, so smaller blocks let
    an explanation reuse more of its rerank prompt (vLLM's CPU attention needs multiples of
    32)."""
    kv_cache_gib: int = Field(2, ge=1)
    """CPU KV-cache size in GiB (VLLM_CPU_KVCACHE_SPACE); ignored on GPU."""
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1)
    """Share of GPU memory vLLM may take on GPU machines."""
    max_candidates: int = Field(20, ge=2, le=20)
    """Most candidates lettered in the rerank prompt (A..T); fewer when the deadline is near."""
    rerank_weight: float = Field(0.5, ge=0, le=1)
    """Weight of the LLM score in the blend with the retrieval score (0 keeps retrieval order)."""
    injection_guard: bool = True
    """Neutralise catalog text that talks to the LLM (`retrieval.injection`): special tokens
    and role labels are removed, and an item whose text is instruction-like is shown without
    it and cannot be moved up by the LLM. `llmrec eval --attack` measures it on and off."""
    prompt_tokens: int = Field(1024, ge=128)
    """Token budget of the rerank prompt: item texts are cut (to a quarter, then dropped) until
    the prompt fits. The explanations repeat this prompt, so it also bounds theirs."""
    explain_max_tokens: int = Field(32, ge=8, le=256)
    """Most tokens of one generated explanation (one short sentence needs ~20)."""
    explain_min_tokens: int = Field(12, ge=1, le=256)
    """Fewest tokens worth generating: only as many items as fit at this many are explained
    (the others get template reasons); when not even one fits, `explain` is skipped (named
    in `degraded`). The rerank leaves time for it."""
    explain_attempts: int = Field(2, ge=1, le=10)
    """Rounds of generation per answer: reasons that fail their checks are sampled again in
    the next round while the deadline allows; what still fails gets the template reason."""
    item_text_chars: int = Field(160, ge=16, le=2000)
    """Catalog text is truncated to this many characters before it enters a prompt."""
    explain_text_chars: int = Field(80, ge=0, le=2000)
    """Text of the item an explanation is about, repeated next to the question (the model
    draws its reason from it). Every explain prompt computes these tokens anew, so they
    cost prefill time per item: ~1 ms each on a 2-core CPU."""

    @model_validator(mode="after")
    def _token_bounds(self) -> RerankerConfig:
        if self.explain_min_tokens > self.explain_max_tokens:
            raise ValueError("reranker.explain_min_tokens must be <= reranker.explain_max_tokens")
        if self.prompt_tokens >= self.max_model_len:
            raise ValueError("reranker.prompt_tokens must be < reranker.max_model_len")
        if self.block_size % 16:
            raise ValueError("reranker.block_size must be a multiple of 16 (32 on CPU)")
        return self


class RouterConfig(_Placed):
    num_replicas: int = Field(1, ge=1, le=64)
    """HTTP ingress replicas. With `user_store: local` each holds user histories in its own
    memory, so feedback taken by one replica reaches the others when they restart (they replay
    `feedback.jsonl`); with `redis` every replica reads the same histories per request."""
    user_store: Literal["local", "redis"] = "local"
    """Where user histories and feedback live (`deployments/router/store.py`): `local`, this
    replica's memory over the log and `feedback.jsonl` (one node); `redis`, one Redis server
    every replica reads per request (several replicas or nodes)."""
    redis_url: str = "redis://127.0.0.1:6380/0"
    """The Redis server of `user_store: redis`; run it with `appendonly yes` and
    `appendfsync always` so an acknowledged event survives the server's death. Not 6379 by
    default: Ray's GCS listens there on the head node."""
    redis_prefix: str = Field("llmrec:", max_length=64)
    """Prefix of every key the app writes, so apps can share one server."""
    history_cap: int = Field(5000, ge=1, le=1_000_000)
    """Items kept per user (the oldest dropped); also what `exclude_seen` can exclude."""
    model_reload_s: float = Field(10.0, ge=0)
    """How often a router replica looks for collaborative models written since it loaded its
    own (`llmrec build --incremental`) and swaps them in, without a restart; 0: never."""
    event_id_ttl_s: int = Field(86_400, ge=1)
    """How long a feedback `event_id` is remembered: a retry within it is recorded once."""
    num_cpus: float = Field(0.2, gt=0)
    """Logical Ray CPUs per router replica."""
    max_ongoing_requests: int = Field(256, ge=1)
    """Concurrent requests per router replica (the default 5 throttles a fan-in router)."""
    max_queued_requests: int = Field(64, ge=-1)
    """Requests Serve holds for the router replicas beyond `max_ongoing_requests` (-1:
    unbounded); past it Serve answers 503 with Retry-After at once (as `QueueFull`) instead
    of letting clients wait."""
    max_in_flight: int = Field(16, ge=1, le=10_000)
    """Recommendations one router replica works on at once; more are answered 503 with
    Retry-After at once rather than sharing a saturated replica until their deadlines pass.
    About the replica's throughput times the share of a deadline a request may spend
    waiting (on 2 cores ~30 rps x 0.5 s); keep it below `max_ongoing_requests`."""
    default_deadline_ms: int = Field(5000, ge=10, le=120_000)
    """Deadline of a request that names none."""
    shard_timeout_ms: int = Field(1000, ge=1, le=120_000)
    """Longest one shard call of a recommendation (search or history lookup) waits; a shard
    later than that is named in `degraded` and the answer goes on without it. Serve holds
    calls to a deployment whose only replica died until a new one runs (seconds), so this
    bounds what a crash costs a request; keep it well above the shards' p99 under load."""
    shard_retry_s: float = Field(2.0, ge=0, le=600)
    """After a retriever replica was late or failed, recommendations skip it for this long
    (its shards named in `degraded` at once, not after `shard_timeout_ms`), then try it
    again; a lost node then costs each request its shards, not a second. 0: always wait."""
    encode_timeout_ms: int = Field(1000, ge=1, le=120_000)
    """Longest the query encoding waits. Later, or when the encoder fails, the request goes on
    without the query (`degraded: ["encoder"]`): from its history, or popular items when it
    has none."""
    backend_timeout_s: float = Field(10.0, gt=0, le=600)
    """Longest an item lookup, delete or feedback check waits for its shard before a 502."""
    max_body_bytes: int = Field(64 * 1024, ge=1024)
    """Larger request bodies are refused with 413."""
    item_cache_size: int = Field(20_000, ge=0, le=10_000_000)
    """Catalog rows (metadata and vector, ~2 KB each at 384 dims) a router replica keeps from
    its history lookups, so a returning user's history costs no shard call; 0: always ask."""
    item_cache_ttl_s: float = Field(600.0, gt=0, le=86_400)
    """How long a cached row is used at most. Changes reach the cache sooner: an upsert or
    delete through this replica drops its rows at once, and every search answer carries its
    shards' versions, so a change through any replica retires that shard's rows from the
    next answer on (`deployments/router/rows.py`)."""
    history_half_life: float = Field(10.0, gt=0)
    """Recency weighting of the profile: an interaction this many steps back counts half. A
    tuned `fusion.json` (`llmrec eval --tune`) replaces it with its `profile_half_life`."""
    query_weight: float = Field(0.5, ge=0, le=1)
    """Weight of the encoded query against the history profile when both are given."""
    cf_candidates: int = Field(50, ge=0, le=1000)
    """Collaborative (item-item) candidates per request."""
    als_candidates: int = Field(50, ge=0, le=1000)
    """ALS candidates per request (when the index has `als.npz`)."""
    ease_candidates: int = Field(50, ge=0, le=1000)
    """EASE candidates per request (when the index has `ease.npz`)."""
    sequential_candidates: int = Field(50, ge=0, le=1000)
    """Sequential-model candidates per request (when the index has `sequential.npz`)."""
    sequential_budget_s: float = Field(60.0, ge=0)
    """Training time `llmrec build` gives the sequential model (self-attention over the
    recent history, `retrieval.sequential`); 0 fits none."""
    sequential_threads: int = Field(1, ge=1, le=256)
    """PyTorch intra-op threads of a router replica (the sequential model's forward pass).
    One user's pass is too small to split: with 2 threads it took the same time as with 1 and
    twice the CPU (1.85 against 0.9 ms a request on the demo), CPU the rest of the app needs."""
    sequential_engine: Engine = "auto"
    """What the router scores the sequential model in. `auto`: ONNX Runtime when the exported
    network agrees with PyTorch on probe histories (`SequentialModel.use_onnx`), else PyTorch;
    `onnx`: ONNX Runtime or the replica fails to start; `torch`: PyTorch eager. A one-user
    pass took 0.24 ms in ONNX Runtime against 0.59 in PyTorch on the demo (2-core AMD EPYC)."""
    als_exact_max_items: int = Field(200_000, ge=0)
    """Up to this many items with a nonzero ALS factor, the ALS candidates are the exact
    best (a flat inner-product search); above it, an HNSW graph built when the router loads
    the model proposes them, approximately (`retrieval.collab.FactorIndex`)."""
    als_ef_search: int = Field(128, ge=1, le=10_000)
    """Breadth of the HNSW search for ALS candidates (at least the results it asks for):
    higher finds more of the exact best, slower; unused by the exact search."""
    ease_half_life: float = Field(5.0, gt=0)
    """Recency weighting of the EASE score: an interaction this many steps back counts half."""
    ann_weight: float = Field(0.5, ge=0, le=10)
    """Fusion weight of the profile-item cosine (only ratios between fusion weights matter)."""
    cf_weight: float = Field(0.25, ge=0, le=10)
    """Fusion weight of the item-kNN score, normalised to the user's best (0..1)."""
    als_weight: float = Field(1.0, ge=0, le=10)
    """Fusion weight of the ALS score, clipped at 0 and normalised to the user's best (0..1)."""
    popularity_weight: float = Field(0.1, ge=0, le=10)
    """Fusion weight of log-popularity, normalised to the most popular item (0..1)."""
    ease_weight: float = Field(1.0, ge=0, le=10)
    """Fusion weight of the EASE score, clipped at 0 and normalised to the user's best (0..1)."""
    sequential_weight: float = Field(0.5, ge=0, le=10)
    """Fusion weight of the sequential model's next-item probability relative to its
    favourite unseen item (0..1)."""
    use_tuned_fusion: bool = True
    """Use `index/fusion.json` (written by `llmrec eval --tune`) instead of the six weights
    above and `reranker.rerank_weight`, when the file exists."""
    max_history: int = Field(50, ge=1, le=1000)
    """Most recent history items used to build the profile."""
    explain_top: int = Field(10, ge=1, le=20)
    """Only the first this-many final items get a generated explanation (at most 20: one
    letter each in the explain prompt)."""
    api_keys_file: str | None = None
    """A file of API keys, one per line: `read <key>` (recommend, get an item) or `write
    <key>` (also upsert, delete, feedback); blank lines and `#` comments are skipped (so a key
holds no space, `#` or comma). Read
    when a router replica starts, so keys never appear in the Serve config. With keys (from
    here or `api_keys_env`) every API call needs `Authorization: Bearer <key>`."""
    api_keys_env: str | None = None
    """The name of an environment variable of the router replicas that holds keys in the
    same form, entries separated by newlines or commas (e.g. set through a runtime_env)."""
    docs: bool | None = None
    """Serve `/docs` and `/openapi.json`; by default only when no API keys are set."""


class AppConfig(_Section):
    """Everything an llmrec application needs; `build_app(args)` validates it."""

    data_dir: str = "data/demo"
    """Dataset folder with catalog.parquet, interactions.parquet and index/ (`llmrec build`):
    a local path, or a URI `pyarrow.fs` opens (`s3://bucket/prefix`, `gs://…`, `file:///…`)
    that each node mirrors into `cache_dir` before reading (retrieval/artifacts.py)."""
    cache_dir: str = "~/.cache/llmrec/data"
    """Where each node keeps its copy of a URI `data_dir`, one folder per URI; unused for a
    local `data_dir`."""
    models_dir: str = "~/.cache/llmrec/models"
    """Where `llmrec models prepare` caches converted models."""
    internal_access_log: bool = False
    """Serve's access log (a line per call) on the deployments the router calls: encoder,
    retrievers, reranker. Off: each request is logged once, by the router (the ingress, whose
    access log stays on); a log line per internal call was about a quarter of a retriever
    replica's CPU per call (py-spy, `llmrec bench pipeline`)."""
    encoder: EncoderConfig = EncoderConfig()
    retriever: RetrieverConfig = RetrieverConfig()
    reranker: RerankerConfig = RerankerConfig()
    router: RouterConfig = RouterConfig()

    @property
    def data_source(self) -> str:
        """`data_dir` as any process can name it: a URI as given, a local path made absolute."""
        return self.data_dir if is_uri(self.data_dir) else str(resolve_path(self.data_dir))

    @property
    def data_path(self) -> Path:
        """The dataset folder on this node: `data_dir`, or for a URI its mirror under
        `cache_dir`, fetched and verified the first time this process asks."""
        if not is_uri(self.data_dir):
            return resolve_path(self.data_dir)
        from retrieval.artifacts import mirrored_data_dir  # pyarrow.fs, faiss: only for URIs

        return mirrored_data_dir(self.data_dir, resolve_path(self.cache_dir))

    @property
    def index_path(self) -> Path:
        return self.data_path / "index"
