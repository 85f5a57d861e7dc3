"""BIGRec in a PyTorch Lightning project: YAML config -> DataModule -> Module -> ``pl.Trainer.fit/test``.

    pip install -e ".[lightning]"
    python experiments/run_lightning.py --config conf/bigrec.yaml
    python experiments/run_lightning.py --config conf/bigrec.yaml --set train_samples=64 --set eval_users=10

Every option is a key of ``conf/bigrec.yaml`` (:mod:`constrained_rec.lightning.config`); ``--set KEY=VALUE``
overrides one (an unknown key is an error naming it). Writes into ``output_dir``: Lightning's checkpoints
(LoRA weights only) and CSV logs, ``adapter/`` (the best checkpoint by validation loss, as a folder
``experiments/run.py --constrained --adapter OUTPUT_DIR/adapter`` accepts), ``metrics.json`` (the test
HR@K/NDCG@K) and, with ``teacher_export``, the teacher outputs (:mod:`constrained_rec.evaluation.teacher`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train and test BIGRec with pl.Trainer from a YAML config.")
    parser.add_argument("--config", default="conf/bigrec.yaml", help="the YAML config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one key of the config (the value read as YAML); repeatable")
    return parser


def _prior(config, data_module, trie):
    """The assistant's prior for the test users, or ``None`` (``assistant: none``)."""
    if config.assistant == "none":
        return None
    from constrained_rec.collaborative import fit_assistant
    from constrained_rec.experiment.assistant_prior import AssistantPrior
    from constrained_rec.experiment.assistant_step import full_histories

    assistant = fit_assistant(config.assistant, data_module.data, data_module.split_config, seed=config.seed)
    return AssistantPrior(assistant, full_histories(data_module.data, data_module.splits["test"]), trie)


def _candidates(samples, trie, count: int, seed: int) -> list[list[int]] | None:
    """Per user: the target and ``count`` items drawn (seeded) from the catalog outside the user's history."""
    if count == 0:
        return None
    catalog = np.unique(trie.item_ids_in_build_order())
    rng = np.random.default_rng([seed, 24])
    rows = []
    for sample in samples:
        pool = catalog[~np.isin(catalog, list(sample.exclude) + [sample.target_item_id])]
        if len(pool) < count:
            raise ValueError(f"teacher_candidates={count}, but user {sample.user_id} has only {len(pool)} other items")
        rows.append([sample.target_item_id] + rng.choice(pool, size=count, replace=False).tolist())
    return rows


def export_teacher(config, module, data_module, path: Path) -> Path:
    from constrained_rec.evaluation.teacher import teacher_outputs

    samples, eval_config = data_module.test, module.eval_config
    prior = module.prior(samples) if module.prior is not None else None
    module.eval()
    outputs = teacher_outputs(module.model, module.tokenizer, module.trie, samples, eval_config.max_k,
                              num_beams=eval_config.num_beams, exclude_history=eval_config.exclude_history,
                              item_log_prior=prior, prior_weight=module.prior_weight,
                              candidates=_candidates(samples, module.trie, config.teacher_candidates, config.seed),
                              metadata={"dataset": config.dataset, "assistant": config.assistant})
    return outputs.save(path)


def _trainer(config, output_dir: Path, has_validation: bool):
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    checkpoint = ModelCheckpoint(dirpath=output_dir / "checkpoints", monitor="val/loss" if has_validation else None,
                                 mode="min", save_top_k=1)
    return pl.Trainer(max_epochs=config.max_epochs, max_steps=config.max_steps or -1, accelerator=config.accelerator,
                      devices=1, accumulate_grad_batches=config.gradient_accumulation_steps,
                      gradient_clip_val=config.max_grad_norm, callbacks=[checkpoint], use_distributed_sampler=False,
                      logger=CSVLogger(output_dir, name="logs"), default_root_dir=output_dir,
                      num_sanity_val_steps=0, log_every_n_steps=1, enable_progress_bar=False,
                      limit_val_batches=None if has_validation else 0), checkpoint


def main(argv: list[str] | None = None) -> dict:
    import torch

    from constrained_rec.experiment.catalog import catalog_trie
    from constrained_rec.lightning import BigRecDataModule, BigRecModule
    from constrained_rec.lightning.config import load_config, parse_override
    from constrained_rec.model import load_model
    from constrained_rec.trie.trie import TitleTrie

    args = build_parser().parse_args(argv)
    config = load_config(args.config, dict(parse_override(text) for text in args.overrides))
    if config.threads:
        torch.set_num_threads(config.threads)
    output_dir = Path(config.output_dir)
    model, tokenizer = load_model(config.llm_model_name)
    data = BigRecDataModule.from_dataset(
        config.dataset, tokenizer, split_config=config.split_config(), train_samples=config.train_samples,
        eval_users=config.eval_users, exclude_history=config.exclude_history, limits=config.prompt_limits(),
        data_dir=config.data_dir, train_config=config.train_config(), eval_batch_size=config.eval_batch_size)
    trie = TitleTrie.load(config.catalog) if config.catalog else catalog_trie(data.data, tokenizer)
    module = BigRecModule(model, tokenizer, trie, config.train_config(trie.fingerprint()), config.eval_config(),
                          prior=_prior(config, data, trie), prior_weight=config.prior_weight)
    trainer, checkpoint = _trainer(config, output_dir, bool(data.validation))
    if data.train is not None:
        trainer.fit(module, data)
        if checkpoint.best_model_path:  # the LoRA weights of the best validation loss
            module.load_state_dict(torch.load(checkpoint.best_model_path, weights_only=False)["state_dict"],
                                   strict=False)
        module.save_adapter(output_dir / "adapter", train_samples=len(data.train["prompt"]),
                            best_checkpoint=checkpoint.best_model_path or None)
    metrics = trainer.test(module, data)[0]
    results = {"config": vars(config), "test": metrics, "catalog_fingerprint": trie.fingerprint(),
               "adapter": str(output_dir / "adapter") if data.train is not None else None}
    if config.teacher_export:
        results["teacher_export"] = str(export_teacher(config, module, data, Path(config.teacher_export)))
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.json").write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results["test"], indent=1))
    return results


if __name__ == "__main__":
    main()
