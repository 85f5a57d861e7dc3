"""Benchmark: users/s of constrained top-k decoding on the embedded model and real ml-100k prompts (not a test).

    python experiments/bench_decode.py                      # 8 users (exact mode: 2), top-10, all methods
    python experiments/bench_decode.py --users 4 --skip-dict-trie --exact-users 0
    python experiments/bench_decode.py --prior-search --users 10 --exact-users 2 --prior-weights 4 16

Methods, all with 10 beams (`--beams`) and length_penalty 0:

* ``generate+TitleTrieProcessor``: transformers ``generate(num_beams=10, num_return_sequences=10)`` with our
  processor, the drop-in path.
* ``generate+PrefixConstrained``: the same with transformers' ``PrefixConstrainedLogitsProcessor`` over a
  nested-dict trie, what D3 / BIGRec-style code does.
* ``recommend beam, no jump``, ``recommend beam, jump``, ``recommend exact``: ``constrained_rec.decoding.recommend``
  (exact mode on the first `--exact-users` users only: an untrained model spreads its probability thinly,
  so proving its top-10 means scoring most of the catalog).

With ``--prior-weight W`` (default 1.0; 0 skips them), the same methods again with an item prior in the
mask (``item_log_prior``: ml-100k popularity, log of (interactions + 1), the same for every user; the LM
score plus ``W * log M(title)``), in a second table: users/s, the CPU time relative to the same method
without the prior (goal: fused beam decoding at most 1.1x), how many users get the same top-k as
``generate+TitleTrieProcessor`` with the prior, and the overlap with exact search under the fused score.

With ``--prior-search`` it measures instead how the searches fare under a collaborative prior (issue 21): on
the first `--users` test users of ``experiments/run.py``'s seeded sample (ml-100k, the defaults' split, history
excluded), the embedded model (or ``--adapter DIR``) fused with an assistant fitted on the training split
(``--assistant``, default ease) at each ``--prior-weights``: NDCG@10, users/s and forwards of beam search with
``prior_lookahead="sum"`` and ``"max"``, and of exact search under each bound (on the first `--exact-users`),
with the prefixes (trie nodes) exact search expanded per user (mean, median and max: ``DecodeStats.expanded``)
and how many users it proved.

The prefill floor: the same prompts' prefill alone, batched as ``recommend`` batches them (`--batch-size`),
timed as decoding runs it (the head the prompts share prefilled once, ``constrained_rec.decoding.runner.PromptBatch``)
and without that sharing; no search can cost less than the first. It is printed beside each table.

Per method: users/s (wall clock, and by the process's CPU time, steadier on a shared machine), model
forwards per user, how many users get the same top-10 (same titles, same order) as
``generate+TitleTrieProcessor``, the mean total log-probability of the returned titles (higher is better;
exact search is the ceiling), and the overlap with the exact top-10. Forwards are counted per batch of
`--batch-size` users and divided by the users. Prompts: BIGRec's Alpaca prompt
(``constrained_rec.prompts.build_prompt``) over each ml-100k user's last `--history` movies before the
held-out last one (``constrained_rec.data.load_interactions``).
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch
from transformers import LogitsProcessorList, PrefixConstrainedLogitsProcessor

from constrained_rec import TitleTrie, TitleTrieProcessor
from constrained_rec.data import load_interactions
from constrained_rec.decoding.recommend import DecodeStats, recommend
from constrained_rec.decoding.runner import ModelRunner, PromptBatch
from constrained_rec.model import load_model
from constrained_rec.prompts import build_prompt
from constrained_rec.trie.tokenization import prompt_token_ids


def ml100k_prompts(num_users: int, history: int) -> tuple[dict[int, str], list[str], dict[int, int]]:
    """The ml-100k catalog, for the first `num_users` users BIGRec's prompt over their last `history` items
    before the held-out last one (the leave-one-out test prompt), and every item's interaction count."""
    data = load_interactions("ml-100k")
    prompts = []
    for _, items in itertools.islice(data.interactions.groupby("user_id", sort=True)["item_id"], num_users):
        history_items = items.tolist()[:-1][-history:]
        prompts.append(build_prompt([data.titles[i] for i in history_items], item_noun=data.item_noun))
    return data.titles, prompts, data.interactions["item_id"].value_counts().to_dict()


def nested_dict_trie(seqs: list[list[int]], eos: int) -> dict:
    root: dict = {}
    for seq in seqs:
        node = root
        for token in seq + [eos]:
            node = node.setdefault(token, {})
    return root


class ForwardCounter:
    """Counts model calls (a forward hook), so generate() and recommend() are counted alike."""

    def __init__(self, model):
        self.calls = 0
        model.register_forward_hook(self._hook)

    def _hook(self, *args):
        self.calls += 1


def run_generate(model, tokenizer, prompts, trie, beams, k, batch_size, processor_kind, dict_trie=None, prior=None,
                 prior_weight=1.0):
    """Top-k token lists per prompt from generate(num_beams=beams) under one of the two processors."""
    eos = trie.eos_token_id
    out_lists = []
    for start in range(0, len(prompts), batch_size):
        chunk = [prompt_token_ids(tokenizer, p) for p in prompts[start : start + batch_size]]
        width = max(len(ids) for ids in chunk)
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(c)) + c for c in chunk], device=model.device)
        mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in chunk], device=model.device)
        if processor_kind == "trie":
            chunk_prior = None if prior is None else prior[start : start + len(chunk)]
            processor = TitleTrieProcessor(trie, prompt_length=width, pad_token_id=tokenizer.pad_token_id,
                                           item_log_prior=chunk_prior, prior_weight=prior_weight)
        else:

            def allowed(batch_id, sent, width=width):
                node = dict_trie
                for token in sent[width:].tolist():
                    if token == eos:
                        return [eos]
                    node = node[token]
                return list(node)

            processor = PrefixConstrainedLogitsProcessor(allowed, num_beams=beams)
        out = model.generate(
            input_ids=ids, attention_mask=mask, logits_processor=LogitsProcessorList([processor]), num_beams=beams,
            num_return_sequences=k, max_new_tokens=trie.max_length, do_sample=False, length_penalty=0.0,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=eos,
        )
        rows = out[:, width:].tolist()
        for p in range(len(chunk)):
            out_lists.append([tuple(r[: r.index(eos) + 1]) if eos in r else tuple(r) for r in rows[p * k : (p + 1) * k]])
    return out_lists


def prefill_floor(model, tokenizer, prompts, trie, batch_size: int, share_prefix: bool, repeats: int = 3) -> dict:
    """Process CPU and wall seconds (best of `repeats`) of the prompts' prefill alone, in batches of `batch_size`,
    and the tokens it fed."""
    ids = [prompt_token_ids(tokenizer, p) for p in prompts]
    best = {"cpu": float("inf"), "wall": float("inf")}
    for _ in range(repeats):
        stats = DecodeStats()
        runner = ModelRunner(model, trie, stats)
        wall, cpu = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            for start in range(0, len(ids), batch_size):
                PromptBatch(ids[start : start + batch_size], runner, share_prefix=share_prefix)
        best = {"cpu": min(best["cpu"], time.process_time() - cpu), "wall": min(best["wall"], time.perf_counter() - wall)}
    return {**best, "tokens": stats.forward_tokens, "users": len(ids)}


def nodes_expanded(stats: DecodeStats) -> str:
    """Exact search's prefixes (trie nodes) expanded per user: mean, median (max)."""
    return f"{np.mean(stats.expanded):.0f}, {np.median(stats.expanded):.0f} (max {max(stats.expanded)})"


def floor_lines(floors: dict) -> str:
    return "\n".join(
        f"| prefill floor ({name}) | {f['users']} | {f['users'] / f['wall']:.3f} | {f['users'] / f['cpu']:.3f} | "
        f"{f['tokens'] / f['users']:.0f} tokens/user |" for name, f in floors.items())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--beams", type=int, default=10)
    parser.add_argument("--history", type=int, default=10, help="history items in each prompt")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per batch, for every method")
    parser.add_argument("--exact-users", type=int, default=2,
                        help="users for the exact mode (the first ones): an untrained model spreads its probability "
                             "thinly, so proving the top-k takes most of the catalog")
    parser.add_argument("--exact-per-forward", type=int, default=32, help="exact mode's prefixes per user and forward")
    parser.add_argument("--node-budget", type=int, default=5000, help="exact mode's budget per user")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: the 2 shared cores of the dev machine thrash with more)")
    parser.add_argument("--skip-dict-trie", action="store_true", help="skip the nested-dict-trie baseline")
    parser.add_argument("--skip-generate", action="store_true",
                        help="skip generate() (both processors, with and without the prior): the reference of the "
                             "'same top-k' and speed-up columns becomes `recommend beam, no jump`, which returns "
                             "generate()'s lists")
    parser.add_argument("--prior-weight", type=float, default=1.0, help="weight of the popularity prior rows (0: none)")
    parser.add_argument("--prior-search", action="store_true", help="beam (sum/max) and exact under an assistant prior")
    parser.add_argument("--assistant", default="ease", choices=("popularity", "ease", "sasrec"))
    parser.add_argument("--prior-weights", type=float, nargs="+", default=[4.0, 16.0])
    parser.add_argument("--adapter", default=None, help="a LoRA adapter folder (default: the model zero-shot)")
    parser.add_argument("--sum-bound-users", type=int, default=None,
                        help="users for exact search under the looser sum bound (default: --exact-users)")
    args = parser.parse_args(argv)
    if args.prior_search:
        torch.set_num_threads(args.threads)
        prior_search(args)
        return

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, tokenizer = load_model()
    model.to(args.device)
    titles, prompts, counts = ml100k_prompts(args.users, args.history)
    item_ids = sorted(titles)
    trie = TitleTrie.from_titles([titles[i] for i in item_ids], tokenizer, item_ids=item_ids)
    prompt_lengths = [len(prompt_token_ids(tokenizer, p)) for p in prompts]
    print(f"setup {time.perf_counter() - start:.1f} s: {trie}; {len(prompts)} users, prompts of "
          f"{min(prompt_lengths)}-{max(prompt_lengths)} tokens; device {args.device}, torch threads "
          f"{torch.get_num_threads()}")
    counter = ForwardCounter(model)

    def timed(name, users, fn):
        """Runs fn; records wall and process CPU seconds (the dev machine's cores are shared) and forwards."""
        counter.calls = 0
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        lists = result if isinstance(result, list) else [[tuple(r.token_ids) for r in recs]
                                                         for recs in result.recommendations]
        rows.append({"name": name, "users": users, "wall": wall, "cpu": cpu, "forwards": counter.calls,
                     "lists": lists, "result": result})
        return result

    rows: list[dict] = []
    batch = args.batch_size
    floors = {name: prefill_floor(model, tokenizer, prompts, trie, batch, share)
              for name, share in (("shared head once, as decoding runs it", True), ("every prompt whole", False))}
    if not args.skip_generate:
        timed("generate+TitleTrieProcessor", len(prompts),
              lambda: run_generate(model, tokenizer, prompts, trie, args.beams, args.k, batch, "trie"))
    if not args.skip_dict_trie and not args.skip_generate:
        dict_trie = nested_dict_trie([s[:-1] for s in trie.sequences()], trie.eos_token_id)
        timed("generate+PrefixConstrained", len(prompts),
              lambda: run_generate(model, tokenizer, prompts, trie, args.beams, args.k, batch, "dict", dict_trie))
    for name, jump in (("recommend beam, no jump", False), ("recommend beam, jump", True)):
        timed(name, len(prompts), lambda: recommend(model, tokenizer, prompts, trie, args.k, num_beams=args.beams,
                                                    jump=jump, batch_size=batch))
    exact_users = min(args.exact_users, len(prompts))
    if exact_users:
        timed("recommend exact", exact_users, lambda: recommend(
            model, tokenizer, prompts[:exact_users], trie, args.k, mode="exact", num_beams=args.exact_per_forward,
            batch_size=batch, node_budget=args.node_budget))

    base = rows[0]
    reference = base["lists"]
    exact = rows[-1] if rows[-1]["name"] == "recommend exact" else None
    # Total log-probability of every title any method returned, from the recommend() results (beam without the
    # jump returns generate()'s lists, so every list is covered).
    log_prob = {}
    for row in rows:
        if not isinstance(row["result"], list):
            for recs in row["result"].recommendations:
                log_prob.update({tuple(r.token_ids): r.log_prob for r in recs})

    on_exact_users = f" (first {exact['users']} users)" if exact is not None else ""
    print(f"\n| method | users | users/s (wall) | users/s (CPU time) | speed-up (CPU time) | forwards/user | "
          f"same top-{args.k} as {base['name']} | mean log-prob of top-{args.k}{on_exact_users} | "
          f"overlap with exact top-{args.k} |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        users, lists = row["users"], row["lists"]
        same = sum(a == b for a, b in zip(lists, reference))
        compared = lists[: exact["users"]] if exact is not None else lists
        known = [log_prob.get(t) for recs in compared for t in recs]
        mean_lp = f"{np.mean(known):.2f}" if None not in known else "-"
        overlap = "-"
        if exact is not None:
            pairs = list(zip(lists, exact["lists"]))
            overlap = f"{np.mean([len(set(a) & set(b)) for a, b in pairs]):.1f}/{args.k} over {len(pairs)} users"
        print(f"| {row['name']} | {users} | {users / row['wall']:.3f} | {users / row['cpu']:.3f} | "
              f"{(base['cpu'] / base['users']) / (row['cpu'] / users):.1f}x | {row['forwards'] / users:.1f} | "
              f"{same}/{users} | {mean_lp} | {overlap} |")
    print(f"\n| prefill alone (best of 3) | users | users/s (wall) | users/s (CPU time) | fed |\n|---|---|---|---|---|\n"
          f"{floor_lines(floors)}")
    if exact is not None:
        stats = exact["result"].stats
        print(f"\nexact: {sum(stats.budget_exhausted)} of {exact_users} users hit node_budget={args.node_budget}; "
              f"nodes expanded per user: {nodes_expanded(stats)} of {trie.num_nodes + len(trie)} trie nodes and "
              "titles")
    no_jump, with_jump = (next(r["lists"] for r in rows if r["name"] == n)
                          for n in ("recommend beam, no jump", "recommend beam, jump"))
    changed = sum(a != b for a, b in zip(no_jump, with_jump))
    changed_set = sum(set(a) != set(b) for a, b in zip(no_jump, with_jump))
    print(f"the jump changes the beam top-{args.k} for {changed}/{len(prompts)} users "
          f"(its set for {changed_set}/{len(prompts)})")
    if args.prior_weight > 0:
        log_prior = np.log(np.array([counts.get(i, 0) + 1.0 for i in item_ids]))
        prior_rows(args, model, tokenizer, prompts, trie, np.tile(log_prior, (len(prompts), 1)), rows, timed, floors)


def prior_rows(args, model, tokenizer, prompts, trie, prior, rows, timed, floors) -> None:
    """The methods again with the item prior in the mask, and their table."""
    unfused = {row["name"]: row for row in rows}
    first = len(rows)
    weight, batch = args.prior_weight, args.batch_size
    if not args.skip_generate:
        timed("generate+TitleTrieProcessor", len(prompts), lambda: run_generate(
            model, tokenizer, prompts, trie, args.beams, args.k, batch, "trie", prior=prior, prior_weight=weight))
    for name, jump in (("recommend beam, no jump", False), ("recommend beam, jump", True)):
        timed(name, len(prompts), lambda: recommend(model, tokenizer, prompts, trie, args.k, num_beams=args.beams,
                                                    jump=jump, batch_size=batch, item_log_prior=prior,
                                                    prior_weight=weight))
    exact_users = min(args.exact_users, len(prompts))
    if exact_users:
        timed("recommend exact", exact_users, lambda: recommend(
            model, tokenizer, prompts[:exact_users], trie, args.k, mode="exact", num_beams=args.exact_per_forward,
            batch_size=batch, node_budget=args.node_budget, item_log_prior=prior[:exact_users], prior_weight=weight))
    fused = rows[first:]
    exact = fused[-1] if exact_users else None
    print(f"\nLM + prior (popularity, weight {weight}):\n")
    print(f"| method + prior | users | users/s (wall) | users/s (CPU time) | CPU time / without prior | forwards/user | "
          f"same top-{args.k} as {fused[0]['name']}+prior | overlap with exact top-{args.k} |")
    print("|---|---|---|---|---|---|---|---|")
    for row in fused:
        users, lists = row["users"], row["lists"]
        plain = unfused[row["name"]]
        ratio = (row["cpu"] / users) / (plain["cpu"] / plain["users"])
        same = sum(a == b for a, b in zip(lists, fused[0]["lists"]))
        overlap = "-"
        if exact is not None:
            pairs = list(zip(lists, exact["lists"]))
            overlap = f"{np.mean([len(set(a) & set(b)) for a, b in pairs]):.1f}/{args.k} over {len(pairs)} users"
        print(f"| {row['name']} | {users} | {users / row['wall']:.3f} | {users / row['cpu']:.3f} | {ratio:.2f}x | "
              f"{row['forwards'] / users:.1f} | {same}/{users} | {overlap} |")
    print(f"\nThe prefill floor (the prior does not touch it):\n\n| prefill alone (best of 3) | users | users/s (wall) | "
          f"users/s (CPU time) | fed |\n|---|---|---|---|---|\n{floor_lines(floors)}")


def prior_search(args) -> None:
    """NDCG@10, speed and exact search's work of beam (sum, max) and exact (max, sum) under an assistant prior."""
    from constrained_rec.collaborative import fit_assistant
    from constrained_rec.evaluation.metrics import ndcg, target_rank
    from constrained_rec.experiment.assistant_prior import AssistantPrior
    from constrained_rec.experiment.assistant_step import full_histories
    from constrained_rec.experiment.catalog import catalog_trie
    from constrained_rec.experiment.run_config import RunConfig
    from constrained_rec.experiment.steps import evaluation_samples, load_data
    from constrained_rec.model import load_adapter

    config = RunConfig(eval_users=args.users)
    loaded = load_data(config)
    samples = evaluation_samples(config, loaded).samples
    model, tokenizer = load_model()
    if args.adapter:
        model, tokenizer = load_adapter(args.adapter, base_model=model)
    model.to(args.device).eval()
    trie = catalog_trie(loaded.data, tokenizer)
    assistant = fit_assistant(args.assistant, loaded.data, loaded.split_config, seed=config.seed)
    prior = AssistantPrior(assistant, full_histories(loaded.data, loaded.splits["test"]), trie)(samples)
    print(f"{len(samples)} users (run.py's seeded sample, first {args.users}), {args.assistant} prior, "
          f"{'adapter ' + args.adapter if args.adapter else 'zero-shot'}; {trie}")
    print(f"\n| w | method | users | users/s (wall) | users/s (CPU time) | forwards/user | NDCG@{args.k} | "
          f"nodes expanded/user (exact): mean, median (max) | proven | overlap with exact(max) top-{args.k} |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    methods = (("beam, sum", "beam", "sum", len(samples)), ("beam, max", "beam", "max", len(samples)),
               ("exact, max bound", "exact", "max", args.exact_users), ("exact, sum bound", "exact", "sum",
                args.exact_users if args.sum_bound_users is None else args.sum_bound_users))
    for w in args.prior_weights:
        found = {}
        for name, mode, lookahead, users in methods:
            users = min(users, len(samples))
            if users == 0:
                continue
            picked = samples[:users]
            wall, cpu = time.perf_counter(), time.process_time()
            result = recommend(model, tokenizer, [s.prompt for s in picked], trie, args.k, mode=mode,
                               num_beams=args.beams if mode == "beam" else args.exact_per_forward,
                               exclude=[s.exclude for s in picked], item_log_prior=prior[:users], prior_weight=w,
                               prior_lookahead=lookahead, batch_size=args.batch_size, node_budget=args.node_budget)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            found[name] = [[tuple(r.token_ids) for r in recs] for recs in result.recommendations]
            ranks = [target_rank([i for r in recs for i in r.item_ids], s.target_item_id)
                     for s, recs in zip(picked, result.recommendations)]
            stats = result.stats
            expanded = nodes_expanded(stats) if mode == "exact" else "-"
            proven = f"{sum(p >= args.k for p in stats.proven)}/{users}" if mode == "exact" else "-"
            reference = found.get("exact, max bound")
            overlap = "-" if reference is None else (
                f"{np.mean([len(set(a) & set(b)) for a, b in zip(found[name], reference)]):.1f} "
                f"over {len(reference)} users")
            print(f"| {w:g} | {name} | {users} | {users / wall:.3f} | {users / cpu:.3f} | "
                  f"{stats.model_forwards / users:.1f} | {float(ndcg(ranks, args.k).mean()):.3f} | {expanded} | "
                  f"{proven} | {overlap} |", flush=True)
        reference = found.get("exact, max bound")
        if reference is not None:
            for name in ("beam, sum", "beam, max"):
                shared = np.mean([len(set(a) & set(b)) for a, b in zip(found[name], reference)])
                print(f"|  | ({name}: overlap with exact(max) on its {len(reference)} users) | | | | | | | | "
                      f"{shared:.1f} |")


if __name__ == "__main__":
    main()
