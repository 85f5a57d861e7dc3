"""Cost of the prior-weight sweep (issue 20) on the embedded SmolLM2-135M (base model), popularity prior, N validation
users, one thread: the sweep (one prefill per prompt for all weights of WEIGHT_GRID, plus the assistant-alone arm)
against recommend() once per weight.

    python experiments/bench_sweep.py 4     # N = 4 validation users
"""
import sys
import time

import torch

from constrained_rec.data import SplitConfig, load_interactions, make_splits
from constrained_rec.decoding.recommend import recommend
from constrained_rec.experiment.assistant_prior import AssistantPrior
from constrained_rec.experiment.assistant_step import (
    SWEEP_BATCH,
    WEIGHT_GRID,
    fit_assistant_step,
    sweep_prior_weight,
    sweep_samples,
)
from constrained_rec.experiment.catalog import catalog_trie
from constrained_rec.experiment.steps import LoadedData
from constrained_rec.model import load_model

torch.set_num_threads(1)
users = int(sys.argv[1])
data = load_interactions("ml-100k")
cfg = SplitConfig(eval_samples=users, seed=0)
loaded = LoadedData(data, cfg, make_splits(data, cfg))
model, tok = load_model()
model.eval()
trie = catalog_trie(data, tok)
setup = fit_assistant_step("popularity", loaded, "runs/bench-sweep", seed=0)
c0, t0 = time.process_time(), time.perf_counter()
sweep = sweep_prior_weight(setup.assistant, model, tok, trie, loaded, True, 0, users=users)
c1, t1 = time.process_time(), time.perf_counter()
print(f"shared-prefill sweep: {users} users, {len(WEIGHT_GRID)} weights + assistant: CPU {c1-c0:.1f} s, wall {t1-t0:.1f} s, "
      f"{(c1-c0)/users:.2f} CPU s/user; chosen {sweep['chosen']}", flush=True)
samples, histories, k = sweep_samples(trie, loaded, True, 0, users)
prior = AssistantPrior(setup.assistant, histories, trie)(samples)
c0, t0 = time.process_time(), time.perf_counter()
for w in WEIGHT_GRID:
    recommend(model, tok, [s.prompt for s in samples], trie, k, num_beams=10, exclude=[s.exclude for s in samples],
              item_log_prior=prior, prior_weight=w, batch_size=SWEEP_BATCH)
c1, t1 = time.process_time(), time.perf_counter()
print(f"recommend() per weight: CPU {c1-c0:.1f} s, wall {t1-t0:.1f} s, {(c1-c0)/users:.2f} CPU s/user", flush=True)
