"""The one configuration model of an llmrec application.

`ray_config.yaml` passes a dict of these fields as the application's `args`;
`build_app` validates it once with `AppConfig.model_validate`. Every field has
a default, bounds where bounds make sense, and a one-line docstring. Relative
paths are resolved against the project root (the folder holding
`ray_config.yaml`), so `serve deploy` works from any working directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PROJECT_ROOT = Path(__file__).resolve().parents[1]

__all__ = [
    "PROJECT_ROOT",
    "AppConfig",
    "EncoderConfig",
    "RerankerConfig",
    "RetrieverConfig",
    "RouterConfig",
    "resolve_path",
]


def resolve_path(path: str | Path) -> Path:
    """An absolute path: relative ones are taken from the project root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (PROJECT_ROOT / p).resolve()


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class EncoderConfig(_Section):
    model: str = "all-MiniLM-L6-v2"
    """Sentence-transformers model: the offline name above, a local folder or a Hugging Face id."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the forward pass runs; `auto` picks CUDA when the replica sees a GPU."""
    num_replicas: int = Field(1, ge=1, le=64)
    """Encoder replicas (fixed count; the load tester's sweeps vary it)."""
    num_cpus: float = Field(0.5, gt=0)
    """Logical Ray CPUs each replica asks for (fractional so small machines can place the app)."""
    num_gpus: float = Field(0.0, ge=0)
    """GPUs per replica: 1 on GPU machines, 0 on CPU."""
    torch_threads: int = Field(2, ge=1)
    """Intra-op threads of the forward pass on CPU; set to the physical cores a replica may use."""
    max_batch_size: int = Field(64, ge=1, le=1024)
    """Most requests in one forward pass. Raise it while throughput grows and p99 holds."""
    batch_wait_timeout_s: float = Field(0.005, ge=0, le=1)
    """How long a partial batch waits for more requests; ~ one forward pass of a small batch."""
    max_ongoing_requests: int = Field(256, ge=1)
    """Requests a replica accepts at once; must be >= max_batch_size so batches can fill."""
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
        return self


class RetrieverConfig(_Section):
    num_cpus: float = Field(0.1, gt=0)
    """Logical Ray CPUs per shard replica."""
    max_ongoing_requests: int = Field(128, ge=1)
    """Concurrent searches a shard replica accepts."""
    candidates: int = Field(50, ge=1, le=1000)
    """ANN candidates asked of every shard before fusion."""
    faiss_threads: int = Field(1, ge=1)
    """OpenMP threads per shard search; 1 keeps concurrent shards from oversubscribing cores."""


class RerankerConfig(_Section):
    enabled: bool = True
    """Deploy the vLLM reranker; when off, `rerank`/`explain` requests are answered degraded."""
    model: str = "SmolLM2-135M-Instruct"
    """LLM: the offline name (see `llmrec models prepare`), a local folder or a Hugging Face id."""
    num_replicas: int = Field(1, ge=1, le=64)
    """Reranker replicas, each with its own vLLM engine."""
    num_cpus: float = Field(0.5, gt=0)
    """Logical Ray CPUs per replica."""
    num_gpus: float = Field(0.0, ge=0)
    """GPUs per replica: 1 on GPU machines, 0 on CPU."""
    max_ongoing_requests: int = Field(32, ge=1)
    """Concurrent requests per replica; the engine batches them itself."""
    max_model_len: int = Field(2048, ge=256)
    """Context length the engine reserves per sequence."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "bfloat16"
    """Weights and activations dtype."""
    kv_cache_gib: int = Field(2, ge=1)
    """CPU KV-cache size in GiB (VLLM_CPU_KVCACHE_SPACE); ignored on GPU."""
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1)
    """Share of GPU memory vLLM may take on GPU machines."""
    max_candidates: int = Field(20, ge=2, le=20)
    """Candidates lettered in the rerank prompt (A..T); limited by the logprobs vLLM returns."""
    rerank_weight: float = Field(0.5, ge=0, le=1)
    """Weight of the LLM score in the blend with the retrieval score (0 keeps retrieval order)."""
    explain_max_tokens: int = Field(40, ge=8, le=256)
    """Most tokens of one generated explanation."""
    item_text_chars: int = Field(160, ge=16, le=2000)
    """Catalog text is truncated to this many characters before it enters a prompt."""


class RouterConfig(_Section):
    num_replicas: int = Field(1, ge=1, le=64)
    """HTTP ingress replicas."""
    num_cpus: float = Field(0.2, gt=0)
    """Logical Ray CPUs per router replica."""
    max_ongoing_requests: int = Field(256, ge=1)
    """Concurrent requests per router replica (the default 5 throttles a fan-in router)."""
    default_deadline_ms: int = Field(5000, ge=10, le=120_000)
    """Deadline of a request that names none."""
    max_body_bytes: int = Field(64 * 1024, ge=1024)
    """Larger request bodies are refused with 413."""
    history_half_life: float = Field(10.0, gt=0)
    """Recency weighting of the profile: an interaction this many steps back counts half."""
    query_weight: float = Field(0.5, ge=0, le=1)
    """Weight of the encoded query against the history profile when both are given."""
    cf_candidates: int = Field(50, ge=0, le=1000)
    """Collaborative (item-item) candidates per request."""
    cf_weight: float = Field(0.3, ge=0, le=1)
    """Weight of the normalised collaborative score in fusion (ANN gets 1 - cf_weight)."""
    max_history: int = Field(50, ge=1, le=1000)
    """Most recent history items used to build the profile."""
    explain_top: int = Field(10, ge=1, le=100)
    """Only the first this-many final items get a generated explanation."""
    api_keys: list[str] = []
    """When non-empty, requests must carry `Authorization: Bearer <key>` with one of these."""


class AppConfig(_Section):
    """Everything an llmrec application needs; `build_app(args)` validates it."""

    data_dir: str = "data/demo"
    """Dataset folder with catalog.parquet, interactions.parquet and index/ (`llmrec build`)."""
    models_dir: str = "~/.cache/llmrec/models"
    """Where `llmrec models prepare` caches converted models."""
    encoder: EncoderConfig = EncoderConfig()
    retriever: RetrieverConfig = RetrieverConfig()
    reranker: RerankerConfig = RerankerConfig()
    router: RouterConfig = RouterConfig()

    @property
    def data_path(self) -> Path:
        return resolve_path(self.data_dir)

    @property
    def index_path(self) -> Path:
        return self.data_path / "index"
