"""How the main job searches under the prior (issue 21): ``--prior-lookahead`` and ``--decoder exact``, checked
before anything is loaded (:func:`check_search_options`, called by
:class:`~constrained_rec.experiment.run_config.RunConfig`).

``--prior-lookahead`` is what a partial title's prior increments look ahead to in LM + prior decoding
(:mod:`constrained_rec.decoding.constraints`): ``sum``, the mass of every title under it, or ``max``, the mass of
its best title. Complete titles get the same fused score either way; beam search prunes partial titles
differently, and exact search proves the same top-K with a tighter bound under ``max``. ``auto`` decodes the
weight sweep's validation users under both and keeps the (weight, lookahead) with the best validation NDCG@10
(:func:`constrained_rec.experiment.assistant_step.sweep_prior_weight`). Left out, it is the decoder's default:
``max`` for ``--decoder exact`` (its bound), ``sum`` for the others.
"""

from __future__ import annotations

PRIOR_LOOKAHEAD_CHOICES = ("sum", "max", "auto")


def lookahead(config) -> str:
    """``--prior-lookahead`` of a :class:`~constrained_rec.experiment.run_config.RunConfig`, else the decoder's
    default (``"max"`` for ``--decoder exact``, ``"sum"`` otherwise)."""
    return config.prior_lookahead or ("max" if config.decoder == "exact" else "sum")


def check_search_options(config) -> None:
    """``--prior-lookahead`` is a known choice that the run can use, and ``--decoder exact`` has no length penalty;
    a ``ValueError`` naming the value and what to pass instead otherwise."""
    given = config.prior_lookahead
    if given is not None and given not in PRIOR_LOOKAHEAD_CHOICES:
        raise ValueError(f"RunConfig.prior_lookahead (--prior-lookahead) must be one of "
                         f"{list(PRIOR_LOOKAHEAD_CHOICES)}, got {given!r}")
    if config.decoder == "exact" and config.length_penalty != 0.0:
        raise ValueError(f"--decoder exact ranks titles by total log-probability, but --length-penalty "
                         f"{config.length_penalty} asks for a length penalty; pass --length-penalty 0 or "
                         "--decoder beam")
    if given is None:
        return
    if config.assistant_name == "none":
        raise ValueError(f"--prior-lookahead {given} applies to the collaborative prior, but --assistant none turns it "
                         "off (nothing of it would run); drop --prior-lookahead, or pass --assistant popularity, ease "
                         "or sasrec")
    if given != "sum" and config.length_penalty != 0.0:
        raise ValueError(f"--prior-lookahead {given} may decode under the max lookahead, which leaves a per-user "
                         f"constant out of every title's score that --length-penalty {config.length_penalty} would "
                         "turn into a preference for some lengths; pass --length-penalty 0 or --prior-lookahead sum")
    if given == "auto" and config.prior_weight != "auto":
        raise ValueError(f"--prior-lookahead auto is chosen by the validation sweep, which --prior-weight "
                         f"{config.prior_weight:g} skips; pass --prior-weight auto, or --prior-lookahead sum or max")
    if given == "auto" and config.decoder == "exact":
        raise ValueError("--prior-lookahead auto has nothing to choose with --decoder exact: exact search returns the "
                         "same top-K under either bound (max, its default, is the tighter); drop it, or pass "
                         "--decoder beam")
