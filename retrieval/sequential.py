"""SASRec: self-attention over the recent history, trained to predict the next item.

After Kang & McAuley 2018, "Self-Attentive Sequential Recommendation". A user's
latest `max_len` items, oldest first, are embedded (item embedding plus a learned
position embedding) and passed through `blocks` causal self-attention blocks
(pre-norm Transformer encoder layers: a position attends only to itself and the
items before it, never to padding), then a final LayerNorm. The score of item j
after the history is the dot product of the last position's output with item j's
embedding: input and output embeddings are shared. Positions count back from the
latest item, so a history scores the same however much left padding it is given.

Training is next-item prediction at every position of windows of each user's last
`max_len + 1` items (a heavy user also gives earlier windows, at most
`_MAX_WINDOWS_PER_USER` in all): cross-entropy over the whole catalog up to
`_FULL_SOFTMAX_MAX_ITEMS` items, otherwise sampled softmax against `_NEGATIVES`
uniform negatives shared by a batch. Adam, dropout 0.2.

Cost: (items + 1) × dim + max_len × dim + blocks × (6·dim² + 10·dim) + 2·dim
float32 parameters, 246k for 3,000 items at the defaults; the item embeddings
dominate. An epoch costs about windows × max_len × (max_len + items) × dim
multiply-adds, three times over with the backward pass; the catalog softmax
dominates. Training stops after `epochs`, or after the batch during which the
wall-clock `time_budget_s` (default 60 s) ran out, whichever comes first.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import nn
from tqdm import tqdm

from retrieval.hardware import onnx_cpu_session

__all__ = ["SequentialModel", "choose_engine"]

logger = logging.getLogger(__name__)

_DROPOUT = 0.2
_MAX_WINDOWS_PER_USER = 8
"""Windows a user's sequence gives at most: heavy users count more, but capped."""
_FULL_SOFTMAX_MAX_ITEMS = 20_000
"""Up to this many catalog items training scores every item; above it, sampled softmax."""
_NEGATIVES = 256
"""Uniform negatives per batch for sampled softmax, shared by every position in it."""
ONNX_MAX_GAP = 1e-3
"""How far ONNX Runtime's scores may be from PyTorch's on the probe histories (absolute)."""


class _SelfAttentiveNetwork(nn.Module):
    """Item ids (batch, width ≤ max_len; 0 = padding, left-padded) → hidden states (…, dim)."""

    def __init__(self, n_items: int, *, max_len: int, dim: int, heads: int, blocks: int) -> None:
        super().__init__()
        self.heads = heads
        self.item = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.position = nn.Embedding(max_len, dim)
        self.dropout = nn.Dropout(_DROPOUT)
        layer = nn.TransformerEncoderLayer(
            dim,
            heads,
            dim_feedforward=dim,
            dropout=_DROPOUT,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        nn.init.normal_(self.item.weight, std=dim**-0.5)
        nn.init.normal_(self.position.weight, std=0.5)
        with torch.no_grad():
            self.item.weight[0] = 0.0

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        width = seq.shape[1]
        back = torch.arange(width, device=seq.device).flip(0)  # 0 = the latest item
        x = self.item(seq) * math.sqrt(self.item.embedding_dim) + self.position(back)
        x = self.encoder(self.dropout(x), mask=self._mask(seq))
        return self.norm(x)

    def _mask(self, seq: torch.Tensor) -> torch.Tensor:
        """(batch·heads, width, width), True = may not attend: later positions and padding.

        Every position may attend to itself, so a padding position (whose output is never
        used) still has one key: a row with none would give NaN that spreads to the rest.
        """
        position = torch.arange(seq.shape[1], device=seq.device)
        later = position[None, :] > position[:, None]  # (query, key): the key comes later
        itself = position[None, :] == position[:, None]
        blocked = (later[None] | (seq == 0)[:, None, :]) & ~itself[None]
        return blocked.repeat_interleave(self.heads, dim=0)

    def scores(self, seq: torch.Tensor) -> torch.Tensor:
        """(batch, items): the last position's output against every item (column 0 = id 1)."""
        return self.forward(seq)[:, -1] @ self.item.weight[1:].T


class SequentialModel:
    """A self-attentive next-item model over the catalog, saved as one `.npz`.

    `item_ids` is the whole catalog (the order of `scores`); `network` is the torch
    module (item indices are catalog position + 1, 0 is padding), kept in eval mode.
    `epochs_run` counts the epochs training got to (the last may have been cut short
    by the time budget).
    """

    def __init__(
        self,
        item_ids: Sequence[str],
        network: _SelfAttentiveNetwork,
        *,
        max_len: int,
        dim: int,
        heads: int,
        blocks: int,
        epochs_run: int = 0,
    ) -> None:
        self.item_ids = list(item_ids)
        self.index = {item_id: i for i, item_id in enumerate(self.item_ids)}
        """Catalog position of every item: where it is in `scores`."""
        if network.item.num_embeddings != len(self.item_ids) + 1:
            raise ValueError(
                f"{network.item.num_embeddings - 1} item embeddings for {len(self.item_ids)} items"
            )
        self.network = network.eval()
        self.max_len = max_len
        self.dim = dim
        self.heads = heads
        self.blocks = blocks
        self.epochs_run = epochs_run
        self._session = None  # ONNX Runtime's, once `use_onnx` succeeded
        self.engine = "torch"
        """What `scores` runs in: `torch`, or `onnx` after `use_onnx`."""

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.network.parameters())

    @classmethod
    def fit(
        cls,
        interactions: pa.Table,
        item_ids: Sequence[str],
        *,
        max_len: int = 50,
        dim: int = 64,
        heads: int = 2,
        blocks: int = 2,
        epochs: int = 60,
        time_budget_s: float = 60.0,
        batch_size: int = 128,
        lr: float = 2e-3,
        seed: int = 0,
        progress: bool = True,
    ) -> SequentialModel:
        """Train on an interactions table (user_id, item_id, optional ts) over `item_ids`.

        A user's sequence is their rows by `ts` (ties, or no `ts` column: row order);
        items outside `item_ids` are dropped and users left with fewer than 2 items are
        skipped. With no such user every score is 0. `heads` must divide `dim`. Fitting
        is seeded (`seed`) without changing torch's global random state.
        """
        for name, value in (("max_len", max_len), ("dim", dim), ("heads", heads)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if blocks < 1 or epochs < 1 or batch_size < 1:
            raise ValueError(
                f"blocks, epochs and batch_size must be >= 1, got {blocks}, {epochs}, {batch_size}"
            )
        if dim % heads:
            raise ValueError(f"heads ({heads}) must divide dim ({dim})")
        if time_budget_s < 0 or lr <= 0:
            raise ValueError(f"time_budget_s must be >= 0 and lr > 0, got {time_budget_s}, {lr}")
        start = time.perf_counter()
        sequences = _user_sequences(interactions, item_ids)
        windows = _windows(sequences, max_len)
        settings = {"max_len": max_len, "dim": dim, "heads": heads, "blocks": blocks}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network = _SelfAttentiveNetwork(len(item_ids), **settings)
            if len(windows):
                epochs_run, loss = _train(
                    network,
                    windows,
                    epochs=epochs,
                    deadline=start + time_budget_s,
                    batch_size=batch_size,
                    lr=lr,
                    rng=np.random.default_rng(seed),
                    progress=progress,
                )
            else:
                epochs_run, loss = 0, float("nan")
                with torch.no_grad():
                    network.item.weight.zero_()  # nothing learnt: every score is 0
        model = cls(item_ids, network, **settings, epochs_run=epochs_run)
        logger.info(
            "Sequential fit: %d windows from %d users, %d of %d epochs (time budget %g s) "
            "in %.1f s, loss %.3f, %d parameters",
            len(windows),
            len(sequences),
            epochs_run,
            epochs,
            time_budget_s,
            time.perf_counter() - start,
            loss,
            model.n_parameters,
        )
        return model

    def save(self, path: Path) -> None:
        config = {
            "max_len": self.max_len,
            "dim": self.dim,
            "heads": self.heads,
            "blocks": self.blocks,
            "epochs_run": self.epochs_run,
        }
        state = {f"state.{k}": v.detach().numpy() for k, v in self.network.state_dict().items()}
        np.savez(
            path,
            item_ids=np.asarray(self.item_ids, dtype=object).astype(str),
            config=np.asarray(json.dumps(config)),
            **state,
        )

    @classmethod
    def load(cls, path: Path) -> SequentialModel:
        z = np.load(path, allow_pickle=False)
        config = json.loads(str(z["config"]))
        epochs_run = config.pop("epochs_run")
        item_ids = z["item_ids"].tolist()
        network = _SelfAttentiveNetwork(len(item_ids), **config)
        prefix = "state."
        state = {k[len(prefix) :]: torch.from_numpy(z[k]) for k in z.files if k.startswith(prefix)}
        network.load_state_dict(state)
        return cls(item_ids, network, **config, epochs_run=epochs_run)

    def scores(self, history: Sequence[str]) -> np.ndarray:
        """Next-item score of every catalog item (`item_ids` order) after `history`.

        `history` is oldest first; only its last `max_len` known items count
        (unknown ids are ignored). No known item: all zeros.
        """
        return self.scores_batch([history])[0]

    def scores_batch(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        """(len(histories), items) float32: `scores` of each history, in one forward pass."""
        rows = [
            [self.index[i] + 1 for i in h if i in self.index][-self.max_len :] for h in histories
        ]
        out = np.zeros((len(rows), len(self.item_ids)), dtype=np.float32)
        used = [r for r, row in enumerate(rows) if row]
        if not used or not self.item_ids:
            return out
        # ONNX Runtime's graph has the fixed width max_len; left padding changes no score.
        width = self.max_len if self._session else max(len(rows[r]) for r in used)
        seq = np.zeros((len(used), width), dtype=np.int64)
        for n, r in enumerate(used):
            seq[n, width - len(rows[r]) :] = rows[r]
        out[used] = self._network_scores(seq)
        return out

    def _network_scores(self, seq: np.ndarray) -> np.ndarray:
        if self._session is not None:
            return self._session.run(None, {"seq": seq})[0]
        with torch.inference_mode():
            return self.network.scores(torch.from_numpy(seq)).numpy()

    def use_onnx(self, threads: int = 1) -> None:
        """Score in ONNX Runtime from now on (the network is unchanged; training stays torch).

        A one-user forward pass is a few dozen small operators, where PyTorch eager's cost per
        operator dominates. The network is exported in memory at the fixed width `max_len`
        (histories are left-padded to it) and kept only when its scores on probe histories are
        within `ONNX_MAX_GAP` of PyTorch's. Raises RuntimeError, still scoring in PyTorch,
        when ONNX Runtime is missing, the export fails or the scores disagree.
        """
        try:
            import onnxruntime  # noqa: F401  (the session below needs it)
        except ImportError as exc:
            raise RuntimeError(f"onnxruntime is not installed: {exc}") from exc
        probes = self._probe_histories()
        expected = self.scores_batch(probes)
        buffer = io.BytesIO()
        example = torch.zeros((2, self.max_len), dtype=torch.int64)
        example[:, -1] = 1
        try:
            # With gradients on, the encoder layers take their exportable (non-fused) path.
            with warnings.catch_warnings(), torch.inference_mode(False), torch.enable_grad():
                warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notes
                torch.onnx.export(
                    _Scores(self.network).eval(),
                    (example,),
                    buffer,
                    input_names=["seq"],
                    output_names=["scores"],
                    dynamic_axes={"seq": {0: "batch"}, "scores": {0: "batch"}},
                    opset_version=17,
                    dynamo=False,
                )
            session = onnx_cpu_session(buffer.getvalue(), threads)
        except Exception as exc:  # the exporter and ORT raise many kinds
            raise RuntimeError(f"could not export the sequential model to ONNX: {exc}") from exc
        self._session = session
        got = self.scores_batch(probes)
        gap = float(np.abs(got - expected).max()) if expected.size else 0.0
        if not gap <= ONNX_MAX_GAP:
            self._session = None
            raise RuntimeError(
                f"ONNX Runtime's sequential scores differ from PyTorch's by {gap:.2g} "
                f"(more than {ONNX_MAX_GAP})"
            )
        self.engine = "onnx"

    def _probe_histories(self) -> list[list[str]]:
        """Seeded histories of one item, half the window and more than the window."""
        rng = np.random.default_rng(0)
        return [
            [self.item_ids[i] for i in rng.integers(0, len(self.item_ids), size=n)]
            for n in (1, max(1, self.max_len // 2), self.max_len + 3)
        ]


def choose_engine(model: SequentialModel, engine: str, threads: int = 1) -> str:
    """Make `model` score in `engine` (`router.sequential_engine`) and return what it scores in.

    `auto`: ONNX Runtime when `use_onnx` succeeds, else PyTorch (with a warning); `onnx`:
    ONNX Runtime or RuntimeError; `torch`: PyTorch eager.
    """
    if engine != "torch":
        try:
            model.use_onnx(threads)
        except RuntimeError as exc:
            if engine == "onnx":
                raise
            logger.warning("the sequential model scores in PyTorch: %s", exc)
    return model.engine


class _Scores(nn.Module):
    """`scores` as a module's forward, for the exporter."""

    def __init__(self, network: _SelfAttentiveNetwork) -> None:
        super().__init__()
        self.network = network

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        return self.network.scores(seq)


def _user_sequences(interactions: pa.Table, item_ids: Sequence[str]) -> list[np.ndarray]:
    """Each user with at least 2 catalog items: their item indices (catalog position + 1)."""
    if not len(interactions) or not item_ids:
        return []
    keys = [("user_id", "ascending")]
    if "ts" in interactions.column_names:
        keys.append(("ts", "ascending"))
    order = pc.sort_indices(interactions, sort_keys=keys)  # stable: ties keep row order
    items = pc.index_in(pc.take(interactions["item_id"], order), value_set=pa.array(item_ids))
    known = pc.is_valid(items)
    users = pc.take(interactions["user_id"], order).filter(known)
    idx = items.filter(known).to_numpy().astype(np.int64) + 1
    if not len(idx):
        return []
    codes = users.combine_chunks().dictionary_encode().indices.to_numpy()
    bounds = np.flatnonzero(np.diff(codes)) + 1
    return [s for s in np.split(idx, bounds) if len(s) >= 2]


def _windows(sequences: list[np.ndarray], max_len: int) -> np.ndarray:
    """(windows, max_len + 1) left-padded: each sequence's last max_len + 1 items, then the
    ones before, stepping back max_len so every next-item target is in exactly one window."""
    out = []
    for s in sequences:
        end = len(s)
        for _ in range(_MAX_WINDOWS_PER_USER):
            begin = max(0, end - max_len - 1)
            if end - begin < 2:
                break
            row = np.zeros(max_len + 1, dtype=np.int64)
            row[max_len + 1 - (end - begin) :] = s[begin:end]
            out.append(row)
            if begin == 0:
                break
            end -= max_len
    return np.stack(out) if out else np.zeros((0, max_len + 1), dtype=np.int64)


def _train(
    network: _SelfAttentiveNetwork,
    windows: np.ndarray,
    *,
    epochs: int,
    deadline: float,
    batch_size: int,
    lr: float,
    rng: np.random.Generator,
    progress: bool,
) -> tuple[int, float]:
    """Adam on next-item cross-entropy; returns (epochs run, the last epoch's mean loss)."""
    n_items = network.item.num_embeddings - 1
    sampled = n_items > _FULL_SOFTMAX_MAX_ITEMS
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    network.train()
    epochs_run, loss_mean, out_of_time = 0, float("nan"), False
    bar = tqdm(range(epochs), desc="sequential", unit="epoch", disable=not progress)
    for _ in bar:
        epochs_run += 1
        total, count = 0.0, 0
        order = rng.permutation(len(windows))
        for begin in range(0, len(windows), batch_size):
            batch = torch.from_numpy(windows[order[begin : begin + batch_size]])
            inputs, targets = batch[:, :-1], batch[:, 1:]
            real = inputs > 0  # a padding position predicts nothing
            hidden = network(inputs)[real]
            target = targets[real]
            if sampled:
                negatives = torch.from_numpy(rng.integers(1, n_items + 1, _NEGATIVES))
                positive = (hidden * network.item(target)).sum(-1, keepdim=True)
                negative = hidden @ network.item(negatives).T
                negative = negative.masked_fill(negatives[None] == target[:, None], -torch.inf)
                logits = torch.cat([positive, negative], dim=1)
                loss = nn.functional.cross_entropy(logits, torch.zeros_like(target))
            else:
                logits = hidden @ network.item.weight[1:].T
                loss = nn.functional.cross_entropy(logits, target - 1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(target)
            count += len(target)
            if time.perf_counter() >= deadline:
                out_of_time = True
                break
        loss_mean = total / count
        bar.set_postfix(loss=f"{loss_mean:.3f}")
        if out_of_time:
            break
    bar.close()
    network.eval()
    return epochs_run, loss_mean
