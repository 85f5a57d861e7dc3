"""``conf/bigrec.yaml``: one flat YAML file of every option of ``experiments/run_lightning.py``.

The keys Lightning recommender projects use (``llm_model_name``, ``lora_r``, ``lora_alpha``, ``lora_dropout``)
sit beside ours (data set, catalog, K, beams, prior). An unknown or mistyped key is an error naming it (and
the closest known key); values are checked by the library's own configs (:class:`TrainConfig`,
:class:`EvalConfig`, :class:`SplitConfig`, :class:`PromptLimits`) when the run builds them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from constrained_rec import validation
from constrained_rec.collaborative import registry

ASSISTANTS = ("none", *registry.ASSISTANTS)


@dataclass
class BigRecConfig:
    """Every key of ``conf/bigrec.yaml``; see the file for what each one means."""

    # model and LoRA
    llm_model_name: str = "smollm2-135m"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: list = field(default_factory=lambda: ["q_proj", "v_proj"])
    # data
    dataset: str = "ml-100k"
    data_dir: str | None = None
    split: str = "auto"
    max_history: int = 10
    item_noun: str | None = None
    template: str = "alpaca"
    train_samples: int | None = 256
    eval_users: int | None = 50
    max_source_length: int | None = None
    max_target_length: int | None = None
    # training
    batch_size: int = 8
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"
    warmup_steps: int = 2
    max_epochs: int = 1
    max_steps: int | None = None
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = 1.0
    train_on_inputs: bool = False
    seed: int = 0
    # catalog, ranking, prior
    catalog: str | None = None
    ks: list = field(default_factory=lambda: [1, 5, 10])
    num_beams: int | None = None
    length_penalty: float = 0.0
    exclude_history: bool = True
    eval_batch_size: int = 4
    assistant: str = "none"
    prior_weight: float = 1.0
    # teacher outputs
    teacher_export: str | None = None
    teacher_candidates: int = 0
    # where and how
    output_dir: str = "runs/lightning"
    accelerator: str = "auto"
    threads: int | None = 1

    def __post_init__(self):
        for item in dataclasses.fields(self):
            validation.check_type(item.name, str(item.type), getattr(self, item.name))
        if self.assistant not in ASSISTANTS:
            raise ValueError(f"assistant: unknown assistant {self.assistant!r}; accepted: {list(ASSISTANTS)}")
        validation.check_number(self.prior_weight, "prior_weight", least=0)
        validation.check_int(self.teacher_candidates, "teacher_candidates", least=0)
        validation.check_int(self.max_epochs, "max_epochs", least=1)

    def train_config(self, catalog_fingerprint: str | None = None):
        from constrained_rec.training.train import TrainConfig

        return TrainConfig(lora_r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                           lora_target_modules=tuple(self.lora_target_modules), train_on_inputs=self.train_on_inputs,
                           batch_size=self.batch_size, gradient_accumulation_steps=self.gradient_accumulation_steps,
                           learning_rate=self.learning_rate, weight_decay=self.weight_decay,
                           max_grad_norm=self.max_grad_norm, epochs=self.max_epochs, max_steps=self.max_steps,
                           lr_schedule=self.lr_schedule, warmup_steps=self.warmup_steps, seed=self.seed,
                           catalog_fingerprint=catalog_fingerprint)

    def eval_config(self):
        from constrained_rec.evaluation.evaluate import EvalConfig

        return EvalConfig(ks=tuple(self.ks), num_beams=self.num_beams, length_penalty=self.length_penalty,
                          exclude_history=self.exclude_history, batch_size=self.eval_batch_size, seed=self.seed)

    def split_config(self):
        from constrained_rec.data import SplitConfig

        return SplitConfig(max_history=self.max_history, protocol=self.split, template=self.template,
                           item_noun=self.item_noun, seed=self.seed)

    def prompt_limits(self):
        from constrained_rec.lightning.data import PromptLimits

        return PromptLimits(max_source_length=self.max_source_length, max_target_length=self.max_target_length)


KEYS = tuple(f.name for f in dataclasses.fields(BigRecConfig))


def check_keys(values: dict, where: str) -> None:
    """An unknown key is an error naming it, the closest known key, and where it came from."""
    validation.check_keys(values, KEYS, where)


def load_config(path: str | Path, overrides: dict | None = None) -> BigRecConfig:
    """The config of a YAML file (a mapping of the keys of :class:`BigRecConfig`), with ``overrides`` on top."""
    values = validation.read_yaml_mapping(path)
    check_keys(values, str(path))
    check_keys(overrides or {}, "--set")
    return BigRecConfig(**{**values, **(overrides or {})})


def parse_override(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` of ``--set``, the value read as YAML (``8``, ``null``, ``[1, 5]``, ``runs/x``)."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--set expects KEY=VALUE, got {text!r}")
    check_keys({key: None}, "--set")
    return key, yaml.safe_load(value)
