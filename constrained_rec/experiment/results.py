"""The typed result of a run (:class:`RunResults`), built once by :func:`build_results` from the finished run and
rendered by :mod:`constrained_rec.experiment.report` (``metrics.json``, ``report.md``, the plots)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class RunResults(Mapping):
    """Everything a run reports; its fields are the keys of ``metrics.json``, in this order (``user_signal`` only
    where the control ran). It reads as that mapping too (``results["methods"]``).

    ``dataset``: name, users, items, interactions, evaluated users, split (and the scale run's training windows);
    ``config``: the evaluation settings and the options that shaped the run; ``train``: the adapter's training
    summary (``None`` zero-shot); ``methods``: figures per method in the recommenders' order; ``assistant``: the
    collaborative prior (weight, sweep, search error) or ``None``; ``user_signal``: one control, or several keyed
    by candidate kind; ``paired``: the paired comparisons.
    """

    command: str
    dataset: dict
    model: str
    adapter: str | None
    train: dict | None
    config: dict
    seed: int
    versions: dict
    machine: str
    timings: dict
    notes: list
    methods: dict
    assistant: dict | None
    user_signal: dict | None
    paired: list

    def to_dict(self) -> dict:
        """The ``metrics.json`` object (``user_signal`` left out where it is ``None``; ``paired`` last)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("user_signal", "paired")}
        if self.user_signal is not None:
            out["user_signal"] = self.user_signal
        out["paired"] = self.paired
        return out

    def __getitem__(self, key):
        return self.to_dict()[key]

    def __iter__(self):
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


def build_results(run) -> RunResults:
    """The :class:`RunResults` of a finished :class:`~constrained_rec.experiment.skeleton.Run` (main process):
    the methods' figures from its prediction records, the paired comparisons, the assistant and the controls,
    plus what its policy adds (``Policy.describe``: the scale run's training windows and options)."""
    import torch

    from constrained_rec.evaluation.evaluate import config_dict, method_metrics
    from constrained_rec.evaluation.paired import paired_comparisons, run_pairs
    from constrained_rec.experiment.report import library_versions, machine_description

    config, loaded, evaluation, assisted = run.config, run.loaded, run.evaluation, run.assisted
    data, split_config = loaded.data, loaded.split_config
    resolved = split_config.resolve(data) if hasattr(split_config, "resolve") else split_config
    methods = method_metrics(run.records, evaluation, catalog_size=len(data.titles), popularity=run.inputs.popularity)
    method_order = [n for r in run.recommenders for n in r.names]
    order = [m for m in method_order if m in methods] + [m for m in methods if m not in method_order]
    described = run.policy.describe(run)
    pairs = run_pairs(order, assisted and assisted.name, assisted and assisted.fused_name)
    return RunResults(
        command=config.command_line(),
        dataset={"name": data.name, "users": data.num_users, "items": len(data.titles),
                 "interactions": len(data.interactions), "eval_users": len(run.inputs.samples),
                 "split": {"protocol": resolved.protocol, "max_history": split_config.max_history,
                           "item_noun": resolved.item_noun}, **described.get("dataset", {})},
        model=run.model_name,
        adapter=str(run.adapter.folder) if run.adapter.folder else None,
        train=run.adapter.train_summary,
        config={**config_dict(evaluation), "constrained": config.constrained, "baselines": config.baselines,
                "assistant": config.assistant_name, "lm_alone": config.lm_alone,
                "train_samples": config.size.train_samples, "epochs": config.size.epochs, "device": str(run.device),
                "processes": run.state.num_processes, "threads": torch.get_num_threads(),
                **described.get("config", {})},
        seed=config.seed, versions=library_versions(), machine=machine_description(), timings=run.timings,
        notes=run.inputs.notes, methods={m: methods[m] for m in order},
        assistant=None if assisted is None else {
            "name": assisted.name, "method": assisted.fused_name, "prior_weight": assisted.prior_weight,
            "prior_lookahead": None if assisted.fallback else assisted.prior_lookahead, "falls_back": assisted.fallback,
            "prior_weight_option": config.prior_weight, "prior_lookahead_option": config.prior_lookahead,
            "prior_weight_sweep": assisted.sweep, "fit_seconds": assisted.fit_seconds,
            "fit_info": getattr(assisted.assistant, "fit_info", None),
            "search_error": run.controls.get("search_error")},
        user_signal=run.controls.get("user_signal"),
        paired=paired_comparisons(run.records, pairs, evaluation.confidence, evaluation.bootstrap_resamples,
                                  evaluation.seed))
