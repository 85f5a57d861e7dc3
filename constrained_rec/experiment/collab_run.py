"""``--collab-tokens items`` in the main job (issue 23): the assistant's item embeddings beside each history title.

:func:`constrained_rec.experiment.pipeline.run` calls these in its one marked place:

1. :func:`collab_tokens_step`: fit the run's assistant *before* the adapter (saved in ``OUTPUT_DIR/assistant``, so the
   assistant step later reloads it instead of fitting it again) and build the tokens
   (:class:`~constrained_rec.training.collab_tokens.CollabTokens`) from its item embeddings;
2. the adapter trains with them (``train(..., collab=...)``), or a given / finished adapter is checked against them
   (:func:`adapter_tokens`: its projector is read back, another or no assistant refused);
3. :func:`soft_samples`: every test prompt becomes a :class:`~constrained_rec.trie.tokenization.SoftPrompt` with the
   user's own tokens, so LM alone, LM + prior, the search error and the user-signal control (own and other prompts
   carry their user's tokens; the generic prompt has none) all read them; the prior-weight sweep converts its
   validation prompts alike (``AssistantSetup.tokens``).
"""

from __future__ import annotations

import time
from pathlib import Path


def collab_tokens_step(config, model, loaded, output_dir: Path, state, timings: dict):
    """The tokens of ``--collab-tokens items`` (``None`` with ``none``): the run's assistant fit (or reloaded) now."""
    if config.collab_tokens == "none":
        return None
    from constrained_rec.experiment.assistant_prior import fit_assistant_step
    from constrained_rec.training.collab_tokens import CollabTokens

    tick = time.perf_counter()
    setup = fit_assistant_step(config.assistant_name, loaded, output_dir, config.seed, state)
    timings["collab_assistant_s"] = time.perf_counter() - tick
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
