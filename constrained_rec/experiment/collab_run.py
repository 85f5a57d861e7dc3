"""``--collab-tokens items`` in a run (issue 23): the assistant's item embeddings beside each history title.

The run skeleton (:func:`constrained_rec.experiment.skeleton.run_experiment`) calls these in its marked places;
with ``--collab-tokens none`` each returns at once and the run is the text-only one:

1. :func:`collab_tokens`: once the run's assistant is fit (before the adapter, ``skeleton._fit_assistant``), the
   tokens (:class:`~constrained_rec.training.collab_tokens.CollabTokens`) from its item embeddings, kept as
   ``AssistantSetup.tokens`` (so the prior-weight sweep's validation prompts carry them too);
2. the adapter trains with them (:func:`constrained_rec.experiment.steps.prepare_adapter`, ``train(...,
   collab=...)``), or a given / finished adapter is checked against them (:func:`adapter_tokens`: its projector is
   read back, another or no assistant refused);
3. :func:`soft_samples`: every test prompt becomes a :class:`~constrained_rec.trie.tokenization.SoftPrompt` with the
   user's own tokens, so LM alone, LM + prior, the search error and the user-signal control (own and other prompts
   carry their user's tokens; the generic prompt has none) all read them.
"""

from __future__ import annotations

from pathlib import Path


def collab_tokens(config, setup, model):
    """The tokens of ``--collab-tokens items`` from the fitted assistant of ``setup`` (``None`` with ``none``)."""
    if config.collab_tokens == "none":
        return None
    from constrained_rec.training.collab_tokens import CollabTokens

    return CollabTokens.from_assistant(setup.assistant, model, seed=config.seed)


def adapter_tokens(folder: Path, tokens):
    """The tokens a given or finished adapter in ``folder`` was trained with: ``tokens`` with the adapter's projector
    read in; an adapter trained with tokens is refused without them (and one without them refused with them)."""
    from constrained_rec.training.collab_tokens import saved_collab_tokens

    if tokens is not None:
        return tokens.load_projector(folder)
    saved = saved_collab_tokens(folder)
    if saved is not None:
        raise ValueError(f"the adapter {folder} was trained with collaborative tokens of the {saved['assistant']!r} "
                         f"assistant (fingerprint {saved['fingerprint']}); evaluate it with --collab-tokens items "
                         f"--assistant {saved['assistant']}")
    return None


def soft_samples(tokens, tokenizer, inputs, loaded) -> None:
    """With tokens, the test samples' prompts made hybrid in place (``inputs.samples``), each with its own user's."""
    if tokens is not None:
        inputs.samples = tokens.soft_samples(tokenizer, inputs.samples, loaded.splits["test"])
