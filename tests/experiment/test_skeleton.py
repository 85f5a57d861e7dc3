"""constrained_rec.experiment.skeleton, controls and results: a policy names only what is registered, a registered
control runs where a policy lists it, and the typed result is metrics.json's keys in their order."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from constrained_rec.experiment import controls
from constrained_rec.experiment.results import RunResults
from constrained_rec.experiment.skeleton import Policy

METRICS_KEYS = ["command", "dataset", "model", "adapter", "train", "config", "seed", "versions", "machine", "timings",
                "notes", "methods", "assistant"]


def no_adapter(run):
    return None


def test_a_policy_names_only_registered_controls_and_candidate_kinds():
    assert Policy(adapter=no_adapter).controls == tuple(controls.CONTROLS)
    with pytest.raises(ValueError, match=r"unknown control\(s\) \['typo'\]; registered: \['search_error', "
                                         r"'user_signal'\]"):
        Policy(adapter=no_adapter, controls=("user_signal", "typo"))
    for kinds in (("uniform", "hard"), ("assistant",)):
        with pytest.raises(ValueError, match=r"signal_candidates takes 'uniform' and optionally 'assistant'"):
            Policy(adapter=no_adapter, signal_candidates=kinds)


def test_a_registered_control_runs_where_a_policy_lists_it(monkeypatch):
    monkeypatch.setitem(controls.CONTROLS, "probe", lambda run: {"config": run.config})
    monkeypatch.setitem(controls.CONTROLS, "silent", lambda run: None)  # did not run: left out
    run = SimpleNamespace(config="cfg", policy=Policy(adapter=no_adapter, controls=("probe", "silent")))
    assert controls.run_controls(run) == {"probe": {"config": "cfg"}}
    run.policy = Policy(adapter=no_adapter, controls=())
    assert controls.run_controls(run) == {}


def results(**changes) -> RunResults:
    values = dict(command="python experiments/run.py", dataset={"name": "d"}, model="m", adapter=None, train=None,
                  config={}, seed=0, versions={}, machine="x", timings={"total_s": 1.0}, notes=[],
                  methods={"most-popular": {}}, assistant=None, user_signal=None, paired=[])
    return RunResults(**{**values, **changes})


def test_the_result_is_the_keys_of_metrics_json_in_order():
    plain = results()
    assert list(plain) == list(plain.to_dict()) == METRICS_KEYS + ["paired"]
    assert "user_signal" not in plain and plain["model"] == "m" and plain.methods == {"most-popular": {}}
    signal = results(user_signal={"conditions": {}})
    assert list(signal) == METRICS_KEYS + ["user_signal", "paired"]
    assert json.loads(json.dumps(signal.to_dict())) == dict(signal)
    with pytest.raises(KeyError):
        plain["user_signal"]


def test_the_report_renders_a_typed_result(tmp_path):
    from constrained_rec.experiment.report import write_report

    figures = {"users": 2, "hr@1": {"value": 0.5, "ci": [0.0, 1.0]}, "ndcg@1": {"value": 0.5, "ci": [0.0, 1.0]},
               "validity_rate": None, "outputs": 0, "coverage@1": 0.1, "popularity_percentile@1": 50.0,
               "users_per_s": 1.0}
    typed = results(methods={"most-popular": figures})
    write_report(tmp_path, typed)
    assert json.loads((tmp_path / "metrics.json").read_text()) == typed.to_dict()
    assert "| most-popular | 2 |" in (tmp_path / "report.md").read_text()


def test_the_split_positions_are_computed_once_per_run(tmp_path, monkeypatch):
    """Issue 19: loading, the evaluation samples and the assistant's fit used to compute them 4 times."""
    import constrained_rec.collaborative.base
    import constrained_rec.data
    import constrained_rec.data.splits
    from constrained_rec.experiment.assistant_step import fit_assistant_step
    from constrained_rec.experiment.run_config import RunConfig
    from constrained_rec.experiment.steps import evaluation_samples, load_data

    calls = []
    original = constrained_rec.data.splits.split_positions

    def counted(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    for module in (constrained_rec.data, constrained_rec.data.splits, constrained_rec.collaborative.base):
        monkeypatch.setattr(module, "split_positions", counted)
    config = RunConfig(quick=True, eval_users=4)
    loaded = load_data(config)
    evaluation_samples(config, loaded)
    state = SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None)
    assert fit_assistant_step("popularity", loaded, tmp_path, seed=0, state=state) is not None
    assert len(calls) == 1
