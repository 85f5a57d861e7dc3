"""SASRec (Kang & McAuley, ICDM 2018): a causal Transformer over item ids, trained with a full softmax.

Training: every user's training sequence is cut, from its end, into windows of at most ``max_length``
inputs; every position predicts the next item with cross-entropy over the whole catalog (no negative
sampling), so each training interaction is a target exactly once per epoch. Windows are right-padded, so
the causal mask alone keeps real positions from attending to padding. After each epoch the model ranks the
validation targets (history excluded) and training stops when validation NDCG@10 has not improved for
``patience`` epochs; the best epoch's weights are kept. Seeded: the same seed and thread count give the same
weights (deterministic algorithms are switched on while fitting, the caller's RNG state is left untouched).
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from constrained_rec.collaborative.base import (
    Assistant,
    AssistantData,
    columns_of,
    exclusion_mask,
    read_config,
    target_ranks,
    write_config,
)
from constrained_rec.evaluation import metrics
from constrained_rec.validation import check_int

WEIGHTS_FILE = "model.pt"


@dataclass
class SASRecConfig:
    """Architecture and training settings (the published SASRec ones, full softmax).

    Args:
        dim: Embedding and hidden size. blocks: Transformer blocks. heads: Attention heads.
        max_length: Longest input (older history is dropped at prediction time).
        dropout: Dropout on embeddings, attention and feed-forward layers.
        lr: Adam learning rate. batch_size: Windows per step.
        max_epochs: Upper bound on epochs. patience: Epochs without a better validation NDCG@10 before stopping.
        max_minutes: Optional wall-clock budget for training; where it is what stops training, the result
            depends on the machine's speed (use ``max_epochs`` for reproducible runs).
    """

    dim: int = 64
    blocks: int = 2
    heads: int = 1
    max_length: int = 50
    dropout: float = 0.2
    lr: float = 1e-3
    batch_size: int = 128
    max_epochs: int = 200
    patience: int = 5
    max_minutes: float | None = None

    def __post_init__(self):
        for name in ("dim", "blocks", "heads", "max_length", "batch_size", "max_epochs", "patience"):
            check_int(getattr(self, name), name, least=1)
        if self.dim % self.heads:
            raise ValueError(f"dim = {self.dim} must be divisible by heads = {self.heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be None or > 0, got {self.max_minutes!r}")


class SASRecNetwork(nn.Module):
    """Item + position embeddings, pre-norm causal Transformer blocks; logits tie to the item embeddings.

    Input ids are catalog columns + 1 (0 is padding).
    """

    def __init__(self, num_items: int, config: SASRecConfig):
        super().__init__()
        self.items = nn.Embedding(num_items + 1, config.dim, padding_idx=0)
        self.positions = nn.Embedding(config.max_length, config.dim)
        self.dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(config.dim, config.heads, dim_feedforward=config.dim,
                                           dropout=config.dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.dim)
        for module in (self.items, self.positions):
            nn.init.normal_(module.weight, std=0.02)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def hidden(self, inputs: torch.Tensor) -> torch.Tensor:
        length = inputs.shape[1]
        x = self.items(inputs) + self.positions(torch.arange(length))[None]
        causal = nn.Transformer.generate_square_subsequent_mask(length)
        return self.norm(self.encoder(self.dropout(x), mask=causal, is_causal=True))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.items.weight[1:].T


def training_windows(sequences: list[np.ndarray], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded ``(inputs, targets)`` windows (ids = column + 1, 0 = padding) covering every next-item pair."""
    inputs, targets = [], []
    for sequence in sequences:
        ids = sequence + 1
        for end in range(len(ids) - 1, 0, -max_length):
            start = max(0, end - max_length)
            window = np.zeros((2, max_length), dtype=np.int64)
            window[0, : end - start] = ids[start:end]
            window[1, : end - start] = ids[start + 1 : end + 1]
            inputs.append(window[0])
            targets.append(window[1])
    if not inputs:
        raise ValueError("no user has two training interactions: SASRec has nothing to learn from")
    return np.stack(inputs), np.stack(targets)


def _last_window(columns: list[np.ndarray], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The last ``max_length`` items of each history, right-padded, and the index of each last real position."""
    lengths = np.array([min(len(c), max_length) for c in columns])
    if (lengths == 0).any():
        raise ValueError(f"history {int(np.argmin(lengths))} is empty: SASRec needs at least one item")
    inputs = np.zeros((len(columns), int(lengths.max())), dtype=np.int64)
    for row, (history, length) in enumerate(zip(columns, lengths)):
        inputs[row, :length] = history[len(history) - length :] + 1
    return torch.from_numpy(inputs), torch.from_numpy(lengths - 1)


class SASRec(Assistant):
    """SASRec as an assistant: ``item_log_probs`` is the log-softmax of its next-item logits.

    Example (a tiny fit; see :meth:`fit`):

    ```python
    >>> import numpy as np
    >>> from constrained_rec.collaborative import AssistantData, SASRec, SASRecConfig
    >>> rng = np.random.default_rng(0)
    >>> sequences = [rng.choice(np.arange(1, 21), size=8, replace=False) for _ in range(20)]
    >>> view = AssistantData(np.arange(1, 21), sequences, [s[:4] for s in sequences[:5]],
    ...                      np.array([s[4] for s in sequences[:5]]))
    >>> model = SASRec.fit(view, SASRecConfig(dim=8, max_epochs=2), seed=0)
    >>> model.item_log_probs([[3, 5]]).shape, model.fit_info["epochs"]
    ((1, 20), 2)

    ```
    """

    name = "sasrec"

    def __init__(self, item_ids: np.ndarray, config: SASRecConfig, network: SASRecNetwork,
                 fit_info: dict | None = None):
        self.item_ids = np.asarray(item_ids, dtype=np.int64)
        self.config, self.network, self.fit_info = config, network.eval(), dict(fit_info or {})

    @torch.no_grad()
    def logits(self, columns: list[np.ndarray], batch_size: int = 256) -> np.ndarray:
        """Next-item logits ``(users, items)`` float32, in batches of ``batch_size`` users."""
        self.network.eval()
        out = np.empty((len(columns), len(self.item_ids)), dtype=np.float32)
        for start in range(0, len(columns), batch_size):
            inputs, last = _last_window(columns[start : start + batch_size], self.config.max_length)
            hidden = self.network.hidden(inputs)[torch.arange(len(last)), last]
            out[start : start + len(last)] = self.network.logits(hidden).numpy()
        return out

    def _log_probs(self, columns: list[np.ndarray]) -> np.ndarray:
        return torch.log_softmax(torch.from_numpy(self.logits(columns)), dim=1).numpy()

    def item_embeddings(self) -> np.ndarray:
        """float32 ``(items, dim)``: the item embedding table (the one its logits tie to), row ``j`` for
        ``item_ids[j]`` (the padding row left out)."""
        return self.network.items.weight[1:].detach().float().numpy().copy()

    @classmethod
    def fit(cls, data: AssistantData, config: SASRecConfig | None = None, seed: int = 0,
            log=None) -> "SASRec":
        """Train on ``data.train_sequences``, stop early on validation NDCG@10, keep the best epoch.

        Args:
            data ([`AssistantData`]): Training sequences and validation samples.
            config ([`SASRecConfig`], *optional*): Architecture and training settings.
            seed (`int`, defaults to 0): Seeds initialisation, dropout and the window order.
            log (`callable`, *optional*): Called with one line per epoch (e.g. ``print``).
        """
        config = config or SASRecConfig()
        data.require_validation("SASRec's early stopping")
        train = [columns_of(data.item_ids, s, "training sequence") for s in data.train_sequences]
        inputs, targets = (torch.from_numpy(a) for a in training_windows(train, config.max_length))
        histories = [columns_of(data.item_ids, h) for h in data.validation_histories]
        validation_targets = columns_of(data.item_ids, data.validation_targets, "validation target")
        excluded = exclusion_mask(histories, data.num_items)
        was_deterministic = torch.are_deterministic_algorithms_enabled()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            torch.use_deterministic_algorithms(True)
            try:
                network = SASRecNetwork(data.num_items, config)
                model = cls(data.item_ids, config, network)
                order_rng = np.random.default_rng(seed)
                optimizer = torch.optim.Adam(network.parameters(), lr=config.lr)
                started, history, best = time.perf_counter(), [], (-1.0, 0, None)
                stop = "max_epochs"
                for epoch in range(1, config.max_epochs + 1):
                    network.train()
                    loss = _train_epoch(network, optimizer, inputs, targets, config.batch_size, order_rng)
                    scores = model.logits(histories)
                    ndcg = float(metrics.ndcg(target_ranks(scores, excluded, validation_targets), 10).mean())
                    history.append({"epoch": epoch, "loss": loss, "validation_ndcg@10": ndcg})
                    if log is not None:
                        log(f"sasrec epoch {epoch}: loss {loss:.4f}, validation NDCG@10 {ndcg:.4f}")
                    if ndcg > best[0]:
                        best = (ndcg, epoch, copy.deepcopy(network.state_dict()))
                    if epoch - best[1] >= config.patience:
                        stop = "patience"
                        break
                    if config.max_minutes is not None and time.perf_counter() - started > 60 * config.max_minutes:
                        stop = "max_minutes"
                        break
            finally:
                torch.use_deterministic_algorithms(was_deterministic)
        network.load_state_dict(best[2])
        network.eval()
        model.fit_info = {"epochs": len(history), "best_epoch": best[1], "validation_ndcg@10": best[0],
                          "stopped_by": stop, "seconds": time.perf_counter() - started,
                          "training_windows": len(inputs), "seed": seed, "history": history}
        return model

    def _write(self, folder: Path) -> None:
        write_config(folder, self.name, self.item_ids, config=asdict(self.config), fit_info=self.fit_info)
        torch.save(self.network.state_dict(), folder / WEIGHTS_FILE)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "SASRec":
        saved = read_config(folder, cls.name)
        config = SASRecConfig(**saved["config"])
        network = SASRecNetwork(len(saved["item_ids"]), config)
        network.load_state_dict(torch.load(Path(folder) / WEIGHTS_FILE, weights_only=True))
        return cls(saved["item_ids"], config, network, saved.get("fit_info"))


def _train_epoch(network: SASRecNetwork, optimizer, inputs: torch.Tensor, targets: torch.Tensor,
                 batch_size: int, rng: np.random.Generator) -> float:
    """One pass over the windows in a seeded random order; returns the mean loss per target."""
    total, count = 0.0, 0
    for batch in np.array_split(rng.permutation(len(inputs)), max(1, math.ceil(len(inputs) / batch_size))):
        batch = torch.from_numpy(batch)
        batch_targets = targets[batch].reshape(-1)
        real = batch_targets > 0
        hidden = network.hidden(inputs[batch]).reshape(-1, network.items.embedding_dim)[real]
        loss = F.cross_entropy(network.logits(hidden), batch_targets[real] - 1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * int(real.sum())
        count += int(real.sum())
    return total / count
