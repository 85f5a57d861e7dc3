"""The search-error check of LM + prior: on a few test users, beam top-K against the exact top-K under the
same fused score (:func:`search_error`)."""

from __future__ import annotations

import time

import numpy as np

from constrained_rec.evaluation import recommenders
from constrained_rec.experiment.assistant_prior import AssistantPrior


def search_error(model, tokenizer, trie, samples, prior: AssistantPrior, prior_weight: float, k: int,
                 num_beams: int, exclude_history: bool, users: int, seed: int,
                 node_budget: int | None = None, prior_lookahead: str = "sum") -> dict:
    """Beam top-``k`` of LM + prior (partial titles looking ahead by ``prior_lookahead``) against the exact top-``k``
    (same prior, exclusions and weight; the ``"max"`` bound) on a seeded sample of ``users`` test samples:
    overlap@k of their titles and the fused-score gap. ``node_budget`` defaults to the exact decoder's
    (:data:`constrained_rec.evaluation.recommenders.EXACT_NODE_BUDGET`).

    ``score_gap`` is the mean fused log-probability (``log p_LM + w log M``) of the exact top-``k`` minus
    that of the beam top-``k`` (>= 0 where exact search proved its list; 0 means beam search lost nothing).
    """
    from constrained_rec.decoding.recommend import recommend

    started = time.perf_counter()
    node_budget = recommenders.EXACT_NODE_BUDGET if node_budget is None else node_budget
    rng = np.random.default_rng([int(seed), 4])
    picked = [samples[i] for i in sorted(rng.choice(len(samples), size=min(users, len(samples)), replace=False))]
    options = dict(exclude=[s.exclude for s in picked] if exclude_history else None,
                   item_log_prior=prior(picked), prior_weight=prior_weight, batch_size=len(picked))
    prompts = [s.prompt for s in picked]
    beam = recommend(model, tokenizer, prompts, trie, k, num_beams=num_beams, prior_lookahead=prior_lookahead, **options)
    exact = recommend(model, tokenizer, prompts, trie, k, num_beams=num_beams, mode="exact",
                      node_budget=node_budget, **options)
    per_user = []
    for sample, found, best, proven in zip(picked, beam.recommendations, exact.recommendations, exact.stats.proven):
        beam_titles = {tuple(r.token_ids) for r in found}
        # over what exists: a user whose history leaves fewer than k titles gets fewer from both searches
        overlap = len(beam_titles & {tuple(r.token_ids) for r in best}) / max(1, len(best))
        gap = (float(np.mean([r.fused_log_prob for r in best]) - np.mean([r.fused_log_prob for r in found]))
               if best and found else None)
        per_user.append({"user_id": int(sample.user_id), f"overlap@{k}": overlap, "score_gap": gap,
                         "exact_proven": int(proven)})
    gaps = [u["score_gap"] for u in per_user if u["score_gap"] is not None]
    return {"users": len(picked), "k": k, "num_beams": num_beams, "node_budget": node_budget,
            "prior_weight": prior_weight, "prior_lookahead": prior_lookahead,
            f"overlap@{k}": float(np.mean([u[f"overlap@{k}"] for u in per_user])),
            "score_gap": float(np.mean(gaps)) if gaps else None,
            "exact_proven_all": all(u["exact_proven"] >= k for u in per_user),
            "per_user": per_user, "seconds": time.perf_counter() - started}
