"""Text-free assistants: next-item distributions over the catalog from interactions alone (D3's assistant).

Every assistant is fitted on the *training* interactions of a split (:func:`assistant_data`; validation
targets only choose hyper-parameters, test targets are never seen), and gives

- ``item_log_probs(histories)``: float32 ``(users, items)``, each row a log-softmax over the catalog;
  **column ``j`` is ``assistant.item_ids[j]``, the catalog's item ids sorted ascending** (the order the
  pipeline builds the title trie in). Histories are lists of item ids, oldest first; an id outside the
  catalog is a ``ValueError``.
- ``save(folder)`` / ``Class.load(folder)`` (or :func:`load_assistant`), with identical outputs after loading.

Assistants: :class:`Popularity` (smoothed training counts), :class:`EASE` (closed form; lambda and a softmax
temperature chosen on validation), :class:`SASRec` (causal Transformer, full softmax, early stopping on
validation NDCG@10). :func:`fit_assistant` fits one by name; :class:`AssistantRecommender` ranks the whole
catalog with one for :func:`constrained_rec.evaluation.evaluate.evaluate`.
"""

from constrained_rec.collaborative.base import (
    Assistant,
    AssistantData,
    DamagedAssistantError,
    assistant_data,
    histories_before,
    sample_rows,
)
from constrained_rec.collaborative.closed_form import EASE, Popularity, ease_weights
from constrained_rec.collaborative.recommend import (
    ASSISTANTS,
    AssistantRecommender,
    fit_assistant,
    load_assistant,
    rank_columns,
)
from constrained_rec.collaborative.sasrec import SASRec, SASRecConfig

__all__ = [
    "ASSISTANTS",
    "Assistant",
    "AssistantData",
    "AssistantRecommender",
    "DamagedAssistantError",
    "EASE",
    "Popularity",
    "SASRec",
    "SASRecConfig",
    "assistant_data",
    "ease_weights",
    "fit_assistant",
    "histories_before",
    "load_assistant",
    "rank_columns",
    "sample_rows",
]
