"""BIGRec as a LightningModule: our trainer's loss, our constrained top-K and metrics, a run.py-ready adapter."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import lightning.pytorch as pl
import numpy as np
import torch

from constrained_rec.evaluation.evaluate import EvalConfig, EvalSample
from constrained_rec.evaluation.metrics import hit_rate, ndcg, target_rank
from constrained_rec.evaluation.recommenders import ConstrainedRecommender
from constrained_rec.training.batching import Batch, Example, collate
from constrained_rec.training.loss import ResponseLoss
from constrained_rec.training.train import TrainConfig, lr_scheduler, with_lora, write_train_config
from constrained_rec.trie.tokenization import example_token_ids


def _config(value, cls, name: str):
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):  # as saved in a checkpoint's hyper-parameters
        return cls(**value)
    raise ValueError(f"{name} must be a {cls.__name__} (or its dict), got {type(value).__name__}")


class BigRecModule(pl.LightningModule):
    """A causal LM with a LoRA adapter that learns to write the next item's title (BIGRec), for ``pl.Trainer``.

    - ``training_step``: the response-only cross-entropy of :func:`constrained_rec.training.train.train`
      (:class:`~constrained_rec.training.loss.ResponseLoss` on :func:`~constrained_rec.training.batching.collate` batches), the
      mean over the batch's target tokens; logged as ``train/loss``.
    - ``validation_step`` / ``test_step`` (batches of :class:`EvalSample`): the loss of the target titles
      (``val/loss``, ``test/loss``, weighted by target tokens) and trie-constrained top-``max(ks)``
      (:class:`~constrained_rec.evaluation.recommenders.ConstrainedRecommender`, consumed items excluded) scored as
      ``{stage}/hr@K`` and ``{stage}/ndcg@K``: per user as :func:`constrained_rec.evaluation.evaluate.method_metrics`
      does, averaged over users, so a single-process ``trainer.test`` gives the numbers ``evaluate`` gives.
      ``test_step`` decodes with the ``prior`` when one is given (LM + prior); the records of the last test
      are kept in ``test_records``.
    - ``configure_optimizers``: AdamW on the LoRA weights with the trainer's schedule
      (:func:`constrained_rec.training.train.lr_scheduler`) over ``trainer.estimated_stepping_batches``, stepped
      every optimizer step. Gradient clipping and accumulation are ``pl.Trainer`` options
      (``gradient_clip_val``, ``accumulate_grad_batches``); with accumulation Lightning averages the
      batches' means, where our trainer takes the mean over all target tokens of the step.
    - Checkpoints hold the LoRA weights only (and the catalog fingerprint, checked on load): build the
      module on the same base model, then ``BigRecModule.load_from_checkpoint(path, model=, tokenizer=, trie=)``.
    - :meth:`save_adapter` writes a folder ``experiments/run.py --adapter`` accepts; :meth:`recommend` decodes.

    Args:
        model (`PreTrainedModel` or `peft.PeftModel`): the base causal LM (LoRA layers are inserted as
            :func:`train` does, seeded by ``train_config.seed``), or a PEFT model trained as it is.
        tokenizer: its tokenizer (:func:`constrained_rec.model.load_model`).
        trie (`TitleTrie`): the catalog (:func:`constrained_rec.experiment.catalog.catalog_trie`).
        train_config (`TrainConfig`, *optional*): LoRA, optimizer and schedule settings, and the loss options.
        eval_config (`EvalConfig`, *optional*): ``ks``, ``num_beams``, ``length_penalty``, ``exclude_history``,
            ``decoder`` of the rankings.
        prior (*optional*), prior_weight (`float`): a log-prior per test sample
            (e.g. :class:`constrained_rec.experiment.assistant_prior.AssistantPrior`) fused into test decoding.
    """

    def __init__(self, model, tokenizer, trie, train_config: TrainConfig | dict | None = None,
                 eval_config: EvalConfig | dict | None = None, prior=None, prior_weight: float = 1.0):
        super().__init__()
        self.train_config = _config(train_config, TrainConfig, "train_config")
        self.eval_config = _config(eval_config, EvalConfig, "eval_config")
        self.save_hyperparameters({"train_config": self.train_config.to_dict(),
                                   "eval_config": {**vars(self.eval_config), "ks": list(self.eval_config.ks)},
                                   "prior_weight": prior_weight})
        self.model = with_lora(model, self.train_config)
        self.tokenizer, self.trie, self.prior, self.prior_weight = tokenizer, trie, prior, prior_weight
        self.strict_loading = False  # checkpoints hold the LoRA weights only
        self.test_records: list[dict] = []

    # ------------------------------------------------------------------------------------------- training
    def _loss(self, batch: Batch) -> torch.Tensor:
        return ResponseLoss(self.model)(*batch.tensors()) / len(batch.targets)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch.targets))
        return loss

    def on_fit_start(self) -> None:
        self.model.train()  # load_model hands the model over in eval mode; train() trains with dropout

    def configure_optimizers(self):
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=self.train_config.learning_rate,
                                      weight_decay=self.train_config.weight_decay)
        scheduler = lr_scheduler(optimizer, self.train_config, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        return batch.to(device) if isinstance(batch, Batch) else batch  # EvalSample lists stay on the host

    # ------------------------------------------------------------------------------------------- rankings
    def _target_batch(self, samples: Sequence[EvalSample]) -> Batch:
        tokenizer = self.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        examples = [Example(*example_token_ids(tokenizer, s.prompt, s.target_title)) for s in samples]
        return collate(examples, pad, self.train_config.train_on_inputs,
                       self.train_config.share_prompt_prefix).to(self.device)

    def recommender(self, use_prior: bool = False) -> ConstrainedRecommender:
        """The "constrained" method of :func:`evaluate` on this model (LM + prior with ``use_prior``)."""
        prior = self.prior if use_prior else None
        return ConstrainedRecommender(self.model, self.tokenizer, self.trie, self.eval_config,
                                      prior=prior, prior_weight=self.prior_weight)

    def _ranking_step(self, stage: str, samples: Sequence[EvalSample]) -> list[dict]:
        batch = self._target_batch(samples)
        self.log(f"{stage}/loss", self._loss(batch), batch_size=len(batch.targets))
        records = self.recommender(use_prior=stage == "test")(samples)
        records = next(iter(records.values()))
        ranks = [target_rank(r["item_ids"], r["target_item_id"]) for r in records]
        for k in self.eval_config.ks:
            self.log(f"{stage}/hr@{k}", float(np.mean(hit_rate(ranks, k))), batch_size=len(samples))
            self.log(f"{stage}/ndcg@{k}", float(np.mean(ndcg(ranks, k))), batch_size=len(samples))
        return records

    def validation_step(self, samples: Sequence[EvalSample], batch_idx: int) -> None:
        self._ranking_step("val", samples)

    def on_test_epoch_start(self) -> None:
        self.test_records = []

    def test_step(self, samples: Sequence[EvalSample], batch_idx: int) -> None:
        self.test_records += self._ranking_step("test", samples)

    def recommend(self, prompts: Sequence[str], k: int | None = None, **options):
        """:func:`constrained_rec.decoding.recommend.recommend` on this model and catalog (``k`` defaults to ``max(ks)``,
        ``num_beams`` to the eval config's); the module is put in eval mode for the call."""
        from constrained_rec.decoding.recommend import recommend

        options.setdefault("num_beams", self.eval_config.num_beams)
        training = self.training
        self.eval()
        try:
            return recommend(self.model, self.tokenizer, list(prompts), self.trie, k or self.eval_config.max_k,
                             **options)
        finally:
            self.train(training)

    # ------------------------------------------------------------------------------- checkpoint and adapter
    def _trainable_names(self) -> set[str]:
        return {name for name, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        from constrained_rec.hf import base_model_name

        names = self._trainable_names()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in names}
        checkpoint["bigrec"] = {"base_model": base_model_name(self.model),
                                "catalog_fingerprint": self.trie.fingerprint()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        stored = checkpoint.get("bigrec", {}).get("catalog_fingerprint")
        if stored != self.trie.fingerprint():
            raise ValueError(f"the checkpoint was trained for the catalog {stored}, this module's trie is "
                             f"{self.trie.fingerprint()}; load it with the catalog and tokenizer it was trained with")
        missing = sorted(self._trainable_names() - set(checkpoint["state_dict"]))
        if missing:
            raise ValueError(f"the checkpoint lacks {len(missing)} LoRA weights of this module, e.g. {missing[0]}; "
                             "it was saved with other LoRA settings (lora_r, lora_target_modules)")

    def save_adapter(self, folder: str | Path, **progress) -> dict:
        """Save the LoRA adapter, the tokenizer and ``train_config.json`` (base model, catalog fingerprint) into
        ``folder``: what ``experiments/run.py --adapter FOLDER`` and :func:`constrained_rec.model.load_adapter`
        read. ``progress`` (e.g. ``global_step``) is recorded too. Returns the ``train_config.json`` contents."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        config = dataclasses.replace(self.train_config, catalog_fingerprint=self.trie.fingerprint())
        global_step = self.trainer.global_step if self._trainer is not None else None
        return write_train_config(folder, config, self.model, trainer="lightning",
                                  **{"global_step": global_step, **progress})
