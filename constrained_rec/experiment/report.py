"""The files a run leaves: ``metrics.json``, ``report.md`` (a table per method) and ``metrics.png``; with
several user-signal controls keyed by candidate kind (the GPU-scale run's) also ``user_signal.png``. The
user-signal control's markdown and plot (:func:`signal_markdown`, :func:`plot_user_signal`) live here too."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
from pathlib import Path
from typing import Mapping

# The user-signal control's conditions as report.md and the plots name them.
CONDITION_LABELS = {"own": "own history", "other": "another user's history", "generic": "generic (empty history)"}
LIBRARIES = ("constrained-rec", "torch", "transformers", "peft", "accelerate", "datasets", "numpy", "numba")


def library_versions() -> dict[str, str | None]:
    """Python and the versions of the libraries a result depends on (``None`` where one is absent)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def machine_description() -> str:
    """E.g. ``"Linux x86_64, 2 CPU cores"`` plus the GPU name where torch sees one."""
    import torch

    text = f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name(0)}"
    return text


def _ks(methods: Mapping[str, dict]) -> list[int]:
    names = {name for figures in methods.values() for name in figures if name.startswith("hr@")}
    return sorted(int(name[3:]) for name in names)


def _top(figures: Mapping) -> int:
    """The cut-off of a method's coverage and popularity figures (``coverage@10``, or ``@K`` for a smaller K)."""
    return next(int(name.split("@")[1]) for name in figures if name.startswith("coverage@"))


def _number(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _interval(figure: Mapping) -> str:
    low, high = figure["ci"]
    return f"[{_number(low)}, {_number(high)}]"


def markdown_report(results: Mapping) -> str:
    """``report.md``: the run in one paragraph, a summary row per method, then a table per method."""
    methods = results["methods"]
    ks = _ks(methods)
    config = results.get("config", {})
    lines = [f"# Results: {results.get('dataset', {}).get('name', '?')} with {results.get('model', '?')}", ""]
    if results.get("command"):
        lines += [f"Command: `{results['command']}`", ""]
    facts = [f"machine: {results.get('machine', '?')}",
             f"evaluation users: {max((m['users'] for m in methods.values()), default=0)}",
             f"beams: {config.get('num_beams')}", f"length penalty: {config.get('length_penalty')}",
             f"history excluded: {config.get('exclude_history')}", f"seed: {results.get('seed')}"]
    if config.get("decoder", "beam") != "beam":
        facts.insert(2, f"decoder: {config['decoder']}")
    if results.get("train"):
        facts.append(f"training samples: {results['train'].get('train_samples')}")
    elif "train" in results:
        facts.append("zero-shot (no training)")
    lines += ["; ".join(facts) + ".", ""]
    lines += [f"Note: {note}" for note in results.get("notes", [])]
    if results.get("notes"):
        lines.append("")
    confidence = int(round(config.get("confidence", 0.95) * 100))
    header = ["method", "users"] + [f"HR@{k}" for k in ks] + [f"NDCG@{k}" for k in ks]
    speed = "users/s per process" if config.get("processes", 1) > 1 else "users/s"
    top = _top(next(iter(methods.values()))) if methods else 10
    header += ["valid", f"coverage@{top}", f"popularity pct@{top}", speed]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, figures in methods.items():
        row = [name, str(figures["users"])]
        row += [_number(figures[f"hr@{k}"]["value"]) for k in ks] + [_number(figures[f"ndcg@{k}"]["value"]) for k in ks]
        row += [_number(figures["validity_rate"]), _number(figures[f"coverage@{top}"]),
                _number(figures[f"popularity_percentile@{top}"], 1), _number(figures["users_per_s"], 3)]
        lines.append("| " + " | ".join(row) + " |")
    lines += _title_hits_table(methods, ks)
    if results.get("paired"):
        from constrained_rec.evaluation.paired import paired_markdown

        lines += ["", *paired_markdown(results["paired"])]
    for name, figures in methods.items():
        lines += ["", f"## {name}", "", f"| metric | value | {confidence}% CI |", "|---|---|---|"]
        for prefix, label in (("", ""), ("title_", "title ")):
            for k in ks:
                for metric in ("hr", "ndcg"):
                    figure = figures.get(f"{prefix}{metric}@{k}")
                    if figure is not None:
                        lines.append(f"| {label}{metric.upper()}@{k} | {_number(figure['value'])} | "
                                     f"{_interval(figure)} |")
        valid = figures["validity_rate"]
        lines.append(f"| valid outputs | {_number(valid)} ({figures['outputs']} outputs) | |" if valid is not None
                     else "| valid outputs | n/a (no model outputs) | |")
        lines.append(f"| catalog coverage of the top-{top} | {_number(figures[f'coverage@{top}'])} | |")
        lines.append(f"| mean popularity percentile of the top-{top} | "
                     f"{_number(figures[f'popularity_percentile@{top}'], 1)} | |")
        lines.append(f"| {speed} | {_number(figures['users_per_s'], 3)} | |")
        if "budget_exhausted" in figures:  # exact search (--decoder exact)
            lines.append(f"| users whose top-K exact search's node budget left unproven | "
                         f"{figures['budget_exhausted']} of {figures['users']} | |")
        for key, what in (("nodes_expanded", "prefixes (nodes) exact search expanded per user"),
                          ("search_forwards", "forwards of exact search per user")):
            if key in figures:
                cost = figures[key]
                lines.append(f"| {what}: mean, median (max) | {_number(cost['mean'], 1)}, {_number(cost['median'], 1)} "
                             f"({cost['max']}) | |")
    if results.get("assistant"):
        lines += ["", *assistant_markdown(results["assistant"])]
    if results.get("user_signal"):
        signal = results["user_signal"]
        for name, control in ({None: signal} if _single_signal(signal) else _named_signals(signal)).items():
            heading = "## User signal" if name is None else f"## User signal ({name} candidates)"
            lines += ["", signal_markdown(control).rstrip("\n").replace("## User signal", heading, 1)]
    return "\n".join(lines) + "\n"


def _single_signal(signal) -> bool:
    """Whether ``results["user_signal"]`` is one control (run.py's) and not several keyed by candidate kind."""
    return isinstance(signal, Mapping) and "conditions" in signal


def _named_signals(signal) -> dict:
    """Several controls keyed by candidate kind (:func:`constrained_rec.experiment.scale_run.run_at_scale`'s: ``"uniform"``
    and the assistant's name), or ``{}`` where ``signal`` is not such a mapping."""
    if not isinstance(signal, Mapping) or _single_signal(signal):
        return {}
    return dict(signal) if all(_single_signal(control) for control in signal.values()) else {}


def assistant_markdown(assistant: Mapping) -> list[str]:
    """The collaborative prior's section: its weight (and the validation sweep that chose it), the search error."""
    fused, name = assistant["method"], assistant["name"]
    if assistant.get("falls_back"):
        choice = (f"LM + prior falls back to the assistant: on the validation users no weight beat {name} alone, so "
                  f"{fused}'s recommendations are {name}'s.")
    else:
        choice = (f"w = {_number(assistant['prior_weight'], 3)}, prior lookahead "
                  f"{assistant.get('prior_lookahead', 'sum')} (a partial title's prior: the mass of "
                  f"{'its best title' if assistant.get('prior_lookahead') == 'max' else 'every title under it'}).")
    lines = ["## Collaborative prior", "",
             f"Assistant: {name} (fit on the training split only). {fused} ranks titles by "
             f"log p_LM(title) + w log M(title), M the assistant's mass of the title's allowed items; {choice}"]
    sweep = assistant.get("prior_weight_sweep")
    if sweep:
        lines += ["", *_sweep_markdown(sweep, name)]
    error = assistant.get("search_error")
    if error:
        k = error["k"]
        proven = "exact search proved every top-K" if error["exact_proven_all"] else (
            f"exact search did not prove every top-K within {error['node_budget']} prefixes per user")
        lines += ["", f"Search error of {fused} on {error['users']} test users: beam ({error['num_beams']} "
                      f"beams) vs exact top-{k} under the same fused score: overlap@{k} {_number(error[f'overlap@{k}'], 3)}, "
                      f"mean fused score of exact minus beam top-{k} {_number(error['score_gap'], 4)} ({proven})."]
    return lines


def _sweep_markdown(sweep: Mapping, name: str) -> list[str]:
    """The weight sweep: validation NDCG@10 per arm (a weight, and its lookahead where the sweep chose one too)
    with its interval, and each arm against the assistant alone."""
    lookaheads = sweep.get("lookahead") or ["sum"] * len(sweep["grid"])  # a sweep written before the option: "sum"
    exhausted = sweep.get("budget_exhausted")
    search = "exact search" if sweep.get("decoder") == "exact" else f"beam search ({sweep['num_beams']} beams)"
    lines = [f"w chosen on {sweep['users']} validation users (second-to-last items; test targets unseen), decoded as "
             f"the test users are: LM + prior {search} at each w"
             f"{' (w = 0: the LM alone)' if 0.0 in sweep['grid'] else ''}"
             f"{', under each prior lookahead' if len(set(lookaheads)) > 1 else ''}"
             f"{', each prompt prefilled once for all weights' if sweep.get('prefill') else ''}; "
             f"chosen: {sweep['chosen'] if sweep.get('fallback') else 'w = ' + _number(float(sweep['chosen']), 2)}"
             f"{', ' + sweep['chosen_lookahead'] if len(set(lookaheads)) > 1 and not sweep.get('fallback') else ''}.", ""]
    cis = sweep.get("validation_ndcg@10_ci")
    if not cis:  # a sweep written before the intervals and the assistant arm (issue 20)
        return lines + ["| w | " + " | ".join(_number(w, 2) for w in sweep["grid"]) + " |",
                        "|---|" + "---|" * len(sweep["grid"]),
                        "| validation NDCG@10 | " + " | ".join(_number(v) for v in sweep["validation_ndcg@10"]) + " |"]
    confidence = int(round(sweep.get("confidence", 0.95) * 100))
    extra = " | top-K unproven |" if exhausted else " |"
    lines += [f"| arm | validation NDCG@10 | {confidence}% CI | minus {name} alone | {confidence}% CI | "
              f"better / worse / tied{extra}", "|---|---|---|---|---|---|" + ("---|" if exhausted else "")]
    for arm, (w, value, ci, versus) in enumerate(zip(sweep["grid"], sweep["validation_ndcg@10"], cis,
                                                     sweep["versus_assistant"])):
        low, high = versus["ci"]
        label = f"w = {_number(w, 2)}" + (f", {lookaheads[arm]}" if len(set(lookaheads)) > 1 else "")
        lines.append(f"| {label} | {_number(value)} | [{_number(ci[0])}, {_number(ci[1])}] | "
                     f"{versus['value']:+.4f} | [{low:+.4f}, {high:+.4f}] | {versus['wins']} / {versus['losses']} / "
                     f"{versus['ties']} |" + (f" {exhausted[arm]} of {sweep['users']} |" if exhausted else ""))
    alone = sweep["assistant_ndcg@10"]
    lines.append(f"| {name} alone | {_number(alone['value'])} | [{_number(alone['ci'][0])}, {_number(alone['ci'][1])}] "
                 "| | | |" + (" |" if exhausted else ""))
    return lines


def _title_hits_table(methods: Mapping[str, dict], ks: list[int]) -> list[str]:
    """The title hits (``title_hr@K`` / ``title_ndcg@K``) of the methods that have them, as a second table."""
    titled = {name: figures for name, figures in methods.items() if f"title_hr@{ks[0]}" in figures} if ks else {}
    if not titled:
        return []
    lines = ["", "Title hits, as D3 and MiniOneRec count them (a hit when a recommended title equals the target's "
             "title, ranked among distinct titles); the item-id figures above are the headline:", ""]
    header = ["method"] + [f"title HR@{k}" for k in ks] + [f"title NDCG@{k}" for k in ks]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, figures in titled.items():
        row = [name] + [_number(figures[f"title_{metric}@{k}"]["value"]) for metric in ("hr", "ndcg") for k in ks]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def plot_metrics(methods: Mapping[str, dict], path: str | os.PathLike, user_signal: Mapping | None = None,
                 paired: list | None = None) -> None:
    """HR@K and NDCG@K per method, with their intervals as error bars, in one figure; with ``user_signal`` a
    panel shows the control (:func:`plot_user_signal`), with ``paired`` one the paired
    comparisons (:func:`constrained_rec.evaluation.paired.plot_paired`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = _ks(methods)
    panels = 2 + bool(user_signal) + bool(paired)
    figure, axes = plt.subplots(1, panels, figsize=(5 * panels, 4))
    if user_signal:
        plot_user_signal(axes[2], user_signal)
    if paired:
        from constrained_rec.evaluation.paired import plot_paired

        plot_paired(axes[-1], paired)
    for axis, metric in zip(axes, ("hr", "ndcg")):
        for name, figures in methods.items():
            values = [figures[f"{metric}@{k}"]["value"] for k in ks]
            lows = [v - figures[f"{metric}@{k}"]["ci"][0] for v, k in zip(values, ks)]
            highs = [figures[f"{metric}@{k}"]["ci"][1] - v for v, k in zip(values, ks)]
            axis.errorbar(ks, values, yerr=[lows, highs], marker="o", capsize=3, label=name)
        axis.set_xlabel("K")
        axis.set_ylabel(f"{metric.upper()}@K")
        axis.set_xticks(ks)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(output_dir: str | os.PathLike, results: Mapping) -> None:
    """Write ``metrics.json``, ``report.md`` and ``metrics.png`` for ``results``: a
    :class:`~constrained_rec.experiment.results.RunResults`, or any mapping with a ``methods`` entry."""
    results = results.to_dict() if hasattr(results, "to_dict") else results
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(results, indent=1, ensure_ascii=False, allow_nan=False) + "\n")
    (folder / "report.md").write_text(markdown_report(results))
    signal = results.get("user_signal")
    plot_metrics(results["methods"], folder / "metrics.png", signal if _single_signal(signal) else None,
                 results.get("paired"))
    if _named_signals(signal):
        plot_user_signals(_named_signals(signal), folder / "user_signal.png")


def plot_user_signals(signals: Mapping[str, Mapping], path: str | os.PathLike) -> None:
    """One panel per control of ``signals`` (keyed by candidate kind), in one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(signals), figsize=(5 * len(signals), 4), squeeze=False)
    for axis, (name, signal) in zip(axes[0], signals.items()):
        plot_user_signal(axis, signal)
        axis.set_xlabel(f"candidates: {name}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# ------------------------------------------------------------------- the user-signal control
def interval_cells(figure: Mapping, digits: int, signed: bool = False) -> tuple[str, str]:
    """A ``{value, ci}`` figure as two table cells: the value and ``[low, high]``."""
    sign = "+" if signed else ""
    low, high = figure["ci"]
    return f"{figure['value']:{sign}.{digits}f}", f"[{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"


def signal_verdict(signal: Mapping) -> str:
    """One sentence: whether the own - other AUC interval excludes zero."""
    low, high = signal["differences"]["own_minus_other"]["auc"]["ci"]
    confidence = int(round(signal.get("confidence", 0.95) * 100))
    if low > 0:
        return f"The model reads the user's history: own beats another user's prompt ({confidence}% CI above 0)."
    if high < 0:
        return f"Another user's prompt ranks targets better than the user's own ({confidence}% CI below 0)."
    return f"No user-specific signal detected: the own - other difference's {confidence}% CI includes 0."


def signal_markdown(signal: Mapping) -> str:
    """A markdown section for report.md: rank and AUC per condition, then the paired differences."""
    from constrained_rec.evaluation.user_signal import CONDITIONS, DIFFERENCES

    n = signal["num_candidates"]
    confidence = int(round(signal.get("confidence", 0.95) * 100))
    lines = ["## User signal", "",
             f"The target among {n + 1} candidates ({signal['candidates']}), {signal['users']} users; "
             f"rank 1 = best, AUC 0.5 = chance. {signal_verdict(signal)}", "",
             f"| prompt | mean rank | {confidence}% CI | AUC | {confidence}% CI |", "|---|---|---|---|---|"]
    for condition in CONDITIONS:
        figures = signal["conditions"][condition]
        lines.append("| " + " | ".join([CONDITION_LABELS[condition], *interval_cells(figures["mean_rank"], 2),
                                         *interval_cells(figures["auc"], 3)]) + " |")
    for name, (a, b) in DIFFERENCES.items():
        figures = signal["differences"][name]
        rank, rank_ci = interval_cells(figures["mean_rank"], 2, signed=True)
        auc, auc_ci = interval_cells(figures["auc"], 3, signed=True)
        lines.append(f"| difference {a} - {b} | {rank} | {rank_ci} | {auc} | {auc_ci} |")
    return "\n".join(lines) + "\n"


def plot_user_signal(axis, signal: Mapping) -> None:
    """Draws the AUC of each condition with its interval on a matplotlib ``axis`` (chance at 0.5)."""
    from constrained_rec.evaluation.user_signal import CONDITIONS

    aucs = [signal["conditions"][c]["auc"] for c in CONDITIONS]
    values = [f["value"] for f in aucs]
    errors = [[v - f["ci"][0] for v, f in zip(values, aucs)], [f["ci"][1] - v for v, f in zip(values, aucs)]]
    axis.bar(range(len(CONDITIONS)), values, yerr=errors, capsize=4, color=["tab:blue", "tab:gray", "tab:orange"])
    axis.axhline(0.5, color="black", linewidth=0.8, linestyle="--", label="chance")
    axis.set_xticks(range(len(CONDITIONS)), [CONDITION_LABELS[c].replace(" (", "\n(") for c in CONDITIONS],
                    fontsize="small")
    difference = signal["differences"]["own_minus_other"]["auc"]
    axis.set_title(f"user signal: AUC own - other {difference['value']:+.3f} "
                   f"[{difference['ci'][0]:+.3f}, {difference['ci'][1]:+.3f}]", fontsize="small")
    axis.set_ylabel(f"target AUC among {signal['num_candidates'] + 1} candidates")
    axis.set_ylim(0, 1)
    axis.legend(fontsize="small")
