"""The settings of :func:`constrained_rec.training.train.train` (:class:`TrainConfig`); each field that is a flag of
``experiments/train.py`` and ``experiments/run.py`` carries its help text and bounds (:func:`constrained_rec.options.option`).
Imports no torch, so that reading options stays cheap."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from constrained_rec.options import check_least, option
from constrained_rec.validation import check_int, check_number

LR_SCHEDULES = ("cosine", "linear", "constant")
# the int options of TrainConfig and their least values are on the fields (option(least=...)); seed has its
# own message
_INT_OPTIONS = ("lora_r", "lora_alpha", "batch_size", "gradient_accumulation_steps", "epochs", "max_steps",
                "warmup_steps", "eval_every", "early_stopping_patience", "checkpoint_every")


@dataclass
class TrainConfig:
    """Settings of :func:`~constrained_rec.training.train.train`. Defaults are BIGRec's LoRA settings with a shorter
    schedule; the flags' help (``python experiments/train.py --help``) says what each option does.

    Args:
        lora_r, lora_alpha, lora_dropout, lora_target_modules:
            The LoRA adapter (BIGRec: r=8, alpha=16, dropout 0.05 on ``q_proj`` and ``v_proj``).
        train_on_inputs (`bool`, defaults to `False`):
            Also learn to predict the prompt tokens (BIGRec's option); by default only the response
            (title + EOS) is in the loss.
        history_loss_weight (`float`, defaults to 0.0):
            Adds ``history_loss_weight x`` the mean cross-entropy of the history titles' tokens in the prompt
            (titles 2..n, each predicted from the titles before it, as SASRec trains on every position; see
            :func:`constrained_rec.training.batching.history_targets`) to the response loss. Both are means over their
            target tokens of the optimizer step. 0 trains exactly as without it; the validation loss stays the
            response loss. An alternative to ``train_on_inputs``, which it refuses.
        batch_size (`int`, defaults to 8):
            Samples per forward pass on each process.
        gradient_accumulation_steps (`int`, defaults to 1):
            Forward passes per optimizer step. The loss is the mean over all target tokens of the step.
        length_group_batches (`int`, defaults to 64):
            Batches per group of similar-length samples; 1 turns length grouping off.
        share_prompt_prefix (`bool`, defaults to `True`):
            Run the token prefix that all samples of a batch share once per batch (see
            :class:`~constrained_rec.training.loss.ResponseLoss`).
        learning_rate, weight_decay, max_grad_norm:
            AdamW and gradient clipping (``max_grad_norm=None`` disables clipping).
        epochs (`int`, defaults to 1), max_steps (`int`, *optional*):
            Length of training; ``max_steps`` (optimizer steps) stops earlier when set.
        lr_schedule (`str`, defaults to `"cosine"`), warmup_steps (`int`, defaults to 20):
            ``"cosine"``, ``"linear"`` or ``"constant"`` after a linear warm-up.
        seed (`int`, defaults to 0):
            Seeds the LoRA initialisation, the sample order and dropout.
        eval_every (`int`, *optional*):
            Validation loss every this many optimizer steps; by default at the end of each epoch.
        early_stopping_patience (`int`, *optional*):
            Stop after this many validations without a new best. Whenever there is validation, the
            saved adapter is the one with the best validation loss.
        checkpoint_every (`int`, defaults to 50):
            Optimizer steps between resumable checkpoints (one is also written at the end of each epoch).
        log_every (`int`, defaults to 1):
            Optimizer steps between lines of ``train_log.jsonl``.
        catalog_fingerprint (`str`, *optional*):
            Fingerprint of the catalog/trie the model is trained for (``TitleTrie.fingerprint()``),
            stored in ``train_config.json`` so a mismatched trie can be detected later.
    """

    lora_r: int = option(8, "LoRA rank r", least=1)
    lora_alpha: int = option(16, "LoRA alpha (the update is scaled by alpha / r)", least=1)
    lora_dropout: float = option(0.05, "dropout on the LoRA layers' input, in [0, 1)")
    lora_target_modules: tuple[str, ...] = option(("q_proj", "v_proj"), "the modules that get LoRA layers (one or "
                                                  "more names, e.g. q_proj k_proj v_proj o_proj)")
    train_on_inputs: bool = option(False, "also learn to predict the prompt tokens (BIGRec's option); by default "
                                          "only the response (title + EOS) is in the loss")
    history_loss_weight: float = option(0.0, "add this weight x the mean loss of the prompt's history titles 2..n "
                                              "to the response loss (TrainConfig.history_loss_weight)")
    batch_size: int = option(8, "training samples per forward pass", least=1)
    gradient_accumulation_steps: int = option(1, "forward passes per optimizer step", least=1)
    length_group_batches: int = 64
    share_prompt_prefix: bool = True
    learning_rate: float = option(3e-4, "AdamW learning rate")
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    epochs: int = option(1, "training epochs", least=1)
    max_steps: int | None = option(None, "stop after this many optimizer steps [default: all epochs]", least=1)
    lr_schedule: str = option("cosine", "learning-rate schedule after the linear warm-up", choices=LR_SCHEDULES)
    warmup_steps: int = option(20, "optimizer steps of linear learning-rate warm-up", least=0)
    seed: int = option(0, "seeds the LoRA initialisation, the sample order and dropout", least=0)
    eval_every: int | None = option(None, "validation loss every this many optimizer steps [default: at the end "
                                          "of each epoch]", least=1)
    early_stopping_patience: int | None = option(None, "stop after this many validations without a new best "
                                                       "[default: never]", least=1)
    checkpoint_every: int = option(50, "optimizer steps between resumable checkpoints", least=1)
    log_every: int = 1
    catalog_fingerprint: str | None = None

    def __post_init__(self):
        self.lora_target_modules = tuple(self.lora_target_modules)
        check_least(self, _INT_OPTIONS)
        check_int(self.seed, "TrainConfig.seed (--seed)", least=0, note=" (numpy takes no negative seed)")
        for name in ("length_group_batches", "log_every"):
            check_int(getattr(self, name), f"TrainConfig.{name}", least=1)
        check_number(self.lora_dropout, "TrainConfig.lora_dropout (--lora-dropout)", least=0.0)
        if not self.lora_dropout < 1.0:
            raise ValueError(f"TrainConfig.lora_dropout (--lora-dropout) must be in [0, 1), got {self.lora_dropout!r}")
        check_number(self.learning_rate, "TrainConfig.learning_rate (--learning-rate)", positive=True)
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"TrainConfig.lr_schedule (--lr-schedule) must be one of {LR_SCHEDULES}, "
                             f"got {self.lr_schedule!r}")
        if not self.lora_target_modules or not all(isinstance(name, str) and name for name in self.lora_target_modules):
            raise ValueError("TrainConfig.lora_target_modules (--lora-target-modules) must name at least one module, "
                             f"e.g. 'q_proj', got {self.lora_target_modules!r}")
        weight = check_number(self.history_loss_weight, "TrainConfig.history_loss_weight", least=0)
        if weight and self.train_on_inputs:
            raise ValueError(f"TrainConfig.history_loss_weight={weight!r} with train_on_inputs=True: train_on_inputs "
                             "already puts every prompt token (history titles included) in the loss; choose one")
        check_number(self.max_grad_norm, "TrainConfig.max_grad_norm", positive=True, none=True)

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["lora_target_modules"] = list(self.lora_target_modules)
        return values
