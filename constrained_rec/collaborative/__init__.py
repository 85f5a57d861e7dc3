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

from importlib import import_module

# name -> its module, imported on first use: reading the assistants' names (registry) imports no torch
_EXPORTS = {
    "ASSISTANTS": "constrained_rec.collaborative.registry",
    "Assistant": "constrained_rec.collaborative.base",
    "AssistantData": "constrained_rec.collaborative.base",
    "AssistantRecommender": "constrained_rec.collaborative.recommend",
    "DamagedAssistantError": "constrained_rec.collaborative.base",
    "EASE": "constrained_rec.collaborative.closed_form",
    "Popularity": "constrained_rec.collaborative.closed_form",
    "SASRec": "constrained_rec.collaborative.sasrec",
    "SASRecConfig": "constrained_rec.collaborative.sasrec",
    "assistant_data": "constrained_rec.collaborative.base",
    "ease_weights": "constrained_rec.collaborative.closed_form",
    "fit_assistant": "constrained_rec.collaborative.recommend",
    "histories_before": "constrained_rec.collaborative.base",
    "load_assistant": "constrained_rec.collaborative.recommend",
    "rank_columns": "constrained_rec.collaborative.recommend",
    "sample_rows": "constrained_rec.collaborative.base",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'constrained_rec.collaborative' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
