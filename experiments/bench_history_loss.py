"""CPU seconds per optimizer step of the recipe all-r16-lr1e-3 (LoRA r=16 on every linear layer) on real ml-100k
prompts, history-title loss weight 0 vs 1 (issue 20): 48 seeded training windows, 4 steps of batch 8 each, one thread.

    python experiments/bench_history_loss.py
"""
import tempfile
import time

import torch

from constrained_rec.data import SplitConfig, load_interactions, make_splits
from constrained_rec.experiment.recipes import ALL_LINEAR
from constrained_rec.model import load_model
from constrained_rec.training.train import TrainConfig, train

torch.set_num_threads(1)
data = load_interactions("ml-100k")
splits = make_splits(data, SplitConfig(train_samples=48, eval_samples=8, seed=0))
for weight in (0.0, 1.0):
    model, tok = load_model()
    cfg = TrainConfig(lora_r=16, lora_alpha=32, lora_target_modules=ALL_LINEAR, learning_rate=1e-3, warmup_steps=1,
                      checkpoint_every=10**6, history_loss_weight=weight, max_steps=4)
    with tempfile.TemporaryDirectory() as d:
        c0 = time.process_time()
        r = train(model, tok, splits["train"], cfg, output_dir=d)
        cpu = time.process_time() - c0
    steps = [x for x in r.log if "loss" in x]
    extra = f", history targets/step {sum(x['history_targets'] for x in steps) / len(steps):.0f}" if weight else ""
    print(f"weight {weight}: {cpu / len(steps):.2f} CPU s/step over {len(steps)} steps of batch 8{extra}", flush=True)
