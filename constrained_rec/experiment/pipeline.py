"""The main job as a library: LoRA-tune a causal LM on next-title prompts, recommend top-K items, evaluate, report.

``experiments/run.py`` is its command line (argparse -> :class:`RunConfig` -> :func:`run`); tests and other
code call :func:`run` directly. The steps are the run skeleton's
(:func:`constrained_rec.experiment.skeleton.run_experiment`: load, trie, assistant, adapter, recommenders,
evaluate, controls, results); the main job's policy (:data:`MAIN_JOB`) makes the adapter with
:func:`~constrained_rec.experiment.steps.prepare_adapter` (train one, or load ``--adapter`` or the one an
interrupted run of the folder finished; the base model with ``--train-samples 0``) and ends with the search error
of LM + prior and the user-signal control.

A run folder can be resumed (finished training and finished users are not redone) only by a run with the
same identity (:func:`~constrained_rec.experiment.run_config.run_identity`: data, split, model, adapter, training,
decoding and seed); any other run is refused with the options that differ.
"""

from __future__ import annotations

from constrained_rec.experiment.run_config import RunConfig
from constrained_rec.experiment.skeleton import Policy, run_experiment
from constrained_rec.experiment.steps import prepare_adapter


def main_job_adapter(run):
    """The main job's adapter (:func:`~constrained_rec.experiment.steps.prepare_adapter`), with the run's
    collaborative tokens where it has them (``--collab-tokens items``, :mod:`constrained_rec.experiment.collab_run`)."""
    collab = run.assisted.tokens if run.assisted is not None else None
    return prepare_adapter(run.config, run.model_name, run.model, run.tokenizer, run.trie, run.loaded,
                           run.output_dir, run.timings, collab)


MAIN_JOB = Policy(adapter=main_job_adapter)


def run(config: RunConfig):
    """Train (or load) an adapter, recommend for the test users, evaluate, write the report.

    Returns:
        The :class:`~constrained_rec.experiment.results.RunResults` written to ``metrics.json`` (it reads as that
        mapping); ``None`` on the other processes of a sharded run.

    Example:

    ```python
    >>> from constrained_rec.experiment.run_config import RunConfig
    >>> from constrained_rec.experiment.pipeline import run
    >>> results = run(RunConfig(constrained=True, quick=True, output_dir="runs/quick"))  # doctest: +SKIP
    >>> results.methods["constrained"]["ndcg@10"]["value"]  # doctest: +SKIP

    ```
    """
    return run_experiment(config, MAIN_JOB)
