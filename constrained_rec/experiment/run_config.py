"""The options of the main job (:class:`RunConfig`: each field is a flag of ``experiments/run.py``, with its default
and help text), the run identity and its check that a resumed folder belongs to a run with the same options.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from constrained_rec.collaborative.registry import ASSISTANTS
from constrained_rec.evaluation.evaluate import DECODERS
from constrained_rec.experiment.search_options import PRIOR_LOOKAHEAD_CHOICES, check_search_options, lookahead
from constrained_rec.options import check_least, flag_of, option, option_fields, option_of
from constrained_rec.prompts import ITEM_NOUNS, TEMPLATES
from constrained_rec.training.config import TrainConfig
from constrained_rec.validation import check_int, check_number, is_int

if TYPE_CHECKING:
    import torch

RUN_IDENTITY = "run.json"
DEFAULT_MODEL = "smollm2-135m"
DEFAULT_KS = (1, 5, 10, 20)


@dataclass(frozen=True)
class RunSize:
    """How much a run trains and evaluates."""

    train_samples: int | str  # "all": every training window
    epochs: int
    eval_users: int
    validation_samples: int


# Measured on the project's 2-core CPU machine (see the README): the defaults finish in <= 20 minutes,
# --quick in <= 3 minutes.
DEFAULTS = RunSize(train_samples=128, epochs=1, eval_users=100, validation_samples=32)
QUICK = RunSize(train_samples=16, epochs=1, eval_users=10, validation_samples=8)
QUICK_KS = (1, 5, 10)
# The collaborative assistant and the user-signal control. SASRec is the default: the
# strongest assistant measured on ml-100k (NDCG@10 .101 vs EASE .071, README); --quick uses popularity (fit in
# no time). With an assistant the defaults decode twice (LM alone and LM + prior), so K stops at 10 (10 beams)
# to keep the main job within 20 minutes on the 2-core CPU.
ASSISTANT_CHOICES = ("none", *ASSISTANTS)  # the registered assistants (collaborative.registry), or none
DEFAULT_ASSISTANT, QUICK_ASSISTANT = "sasrec", "popularity"
ASSISTANT_KS = (1, 5, 10)
DEFAULT_SEARCH_ERROR_USERS = 2
# --collab-tokens (issue 23): "items" puts the assistant's item embedding after each history title
# (constrained_rec.training.collab_tokens); only an assistant that learns item embeddings has them.
COLLAB_TOKEN_CHOICES = ("none", "items")
COLLAB_ASSISTANTS = ("sasrec",)


def parse_prior_weight(text) -> float | str:
    """``--prior-weight``: ``"auto"`` or a finite number >= 0; a ``ValueError`` naming anything else."""
    if text == "auto":
        return "auto"
    try:
        value = float(text) if not isinstance(text, bool) else math.nan
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"--prior-weight takes a number >= 0 or 'auto', got {text!r}")
    return value


def parse_ks(text: str) -> tuple[int, ...]:
    """``"1,5,10"`` -> ``(1, 5, 10)``; a ``ValueError`` naming the text unless all are positive integers."""
    try:
        ks = tuple(int(part) for part in text.split(","))
    except ValueError:
        ks = ()
    if not ks or min(ks) < 1:
        raise ValueError(f"--k takes comma-separated positive integers like 1,5,10,20, got {text!r}")
    return ks


def parse_train_samples(value) -> int | str:
    """``--train-samples`` of run.py: an integer >= 0 (0 trains nothing: zero-shot) or ``"all"`` (every training
    window, as in train.py); a ``ValueError`` naming anything else."""
    if value == "all":
        return "all"
    number = value
    if isinstance(value, str):
        try:
            number = int(value)
        except ValueError:
            pass
    if not (is_int(number) and number >= 0):
        raise ValueError(f"RunConfig.train_samples (--train-samples) must be an integer >= 0 (0: zero-shot) or all "
                         f"(every training window), got {value!r}")
    return number


def separator(text: str) -> str:
    """``--sep``: the text itself, with ``\\t`` or ``tab`` meaning a tab (what a shell passes most easily)."""
    if not text:
        raise ValueError(f"--sep needs a field separator such as , or tab, got {text!r}")
    return "\t" if text in ("\\t", "tab") else text


# The data flags: the generic interactions file's items file, columns and separator (passed to
# load_interactions as they are), and how its samples are made (SplitConfig). "auto" is the layout's own
# split where it has one (D3 / MiniOneRec folders), else leave-one-out.
DATA_FILE_OPTIONS = ("items", "user_column", "item_column", "time_column", "title_column", "items_item_column", "sep")
DATA_OPTIONS = (*DATA_FILE_OPTIONS, "split", "max_history", "item_noun")
SPLIT_CHOICES = ("auto", "leave-one-out", "temporal", "given")
# The training options run.py shares with train.py beyond --epochs, --batch-size, --learning-rate,
# --history-loss-weight and --seed (defaults and help on TrainConfig's fields); run_identity records those that
# change the adapter where they differ from the default.
TRAINING_OPTIONS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "train_on_inputs",
                    "gradient_accumulation_steps", "lr_schedule", "warmup_steps", "max_steps", "eval_every",
                    "early_stopping_patience", "checkpoint_every")
# the int options and their least values are on the fields (option(least=...)); seed has its own message
_INT_OPTIONS = ("max_history", "eval_samples", "epochs", "batch_size", "eval_users", "num_beams", "eval_batch_size",
                "threads", "search_error_users", "signal_candidates")


def assistant_options() -> tuple[str, ...]:
    """The options of the collaborative assistant, LM + prior and the controls: the fields from ``assistant`` on."""
    names = [spec.name for spec in option_fields(RunConfig)]
    return tuple(names[names.index("assistant"):])


def _column(default: str, what: str):
    return option(None, f"column of the {what} [default {default}]")


@dataclass
class RunConfig:
    """Every option of ``experiments/run.py``: each field is its flag (``lora_r`` -> ``--lora-r``), with the flag's
    default and help text (:func:`constrained_rec.options.option`); see ``--help``.

    ``None`` means "the default for this size": :attr:`size`, :attr:`ks` and :func:`~constrained_rec.experiment.run_checks.resolve_device`
    resolve them.
    ``command`` is the command line recorded in ``metrics.json`` (by default rebuilt from the options).
    """

    constrained: bool = option(False, "decode with the title trie; without it, the BIGRec baseline (free decoding "
                                      "+ grounding)")
    dataset: str = option("ml-100k", "data set name (ml-100k, ml-latest-small, ml-1m, ...) or path (see 'data set' "
                                     "below and constrained_rec.data); --data is train.py's spelling",
                          aliases=("--data",))
    data_dir: str | None = option(None, "folder of GroupLens data sets (default $CONSTRAINED_REC_DATA)")
    # The data set's files, columns and split (see DATA_OPTIONS and constrained_rec.data.load_interactions).
    items: str | None = option(None, "items file (item id, title) of an interactions CSV/TSV, or the metadata file "
                                     "of an Amazon reviews file")
    user_column: str | None = _column("user_id", "interactions file's user id")
    item_column: str | None = _column("item_id", "interactions file's item id")
    time_column: str | None = _column("timestamp", "interactions file's time (Unix seconds or ISO 8601)")
    title_column: str | None = _column("title", "items file's title")
    items_item_column: str | None = _column("--item-column", "items file's item id")
    sep: str | None = option(None, "field separator of the CSV/TSV files; \\t or tab for a tab [default: tab for "
                                   ".tsv, comma otherwise]", parse=separator)
    split: str = option("auto", "leave-one-out (last item per user), temporal (D3's global time 8:1:1), given (the "
                                "data set's own train/valid/test files), auto: given where the data set has its own "
                                "split, else leave-one-out", choices=SPLIT_CHOICES)
    max_history: int = option(10, "at most this many previous items in a prompt (BIGRec's and D3's 10)", least=1)
    item_noun: str | None = option(None, "the prompt's noun for the items [default the data set's: movies for "
                                         "MovieLens, products for Amazon, items otherwise]", choices=sorted(ITEM_NOUNS))
    template: str = option("alpaca", "the prompts' template: alpaca (BIGRec's) or chat (the model's own chat "
                                     "template, from its tokenizer)", choices=TEMPLATES)
    model: str | None = option(None, "smollm2-135m (embedded), a local model folder, or a Hugging Face id in the "
                                     "local cache [default: the base model of --adapter, else smollm2-135m]")
    train_samples: int | str | None = option(None, f"training windows drawn (seeded); all keeps every window, 0 "
                                                   f"evaluates the base model zero-shot [default "
                                                   f"{DEFAULTS.train_samples}, --quick {QUICK.train_samples}]",
                                             parse=parse_train_samples, metavar="N|all")
    eval_samples: int | None = option(None, f"validation samples for the training loss: the first of the run's "
                                            f"validation users (as many as --eval-users) [default "
                                            f"{DEFAULTS.validation_samples}, --quick {QUICK.validation_samples}]",
                                      least=1)
    epochs: int | None = option(None, f"training epochs [default {DEFAULTS.epochs}]", least=1)
    batch_size: int = option_of(TrainConfig, "batch_size", help="training batch size")
    learning_rate: float = option_of(TrainConfig, "learning_rate", default=1e-3, help=(
        "LoRA learning rate (high: the CPU default trains for only 16 steps; train.py's default is "
        f"{TrainConfig.learning_rate})"))
    history_loss_weight: float = option_of(TrainConfig, "history_loss_weight")
    # the rest of train.py's training options (TRAINING_OPTIONS), same names and defaults
    lora_r: int = option_of(TrainConfig, "lora_r")
    lora_alpha: int = option_of(TrainConfig, "lora_alpha")
    lora_dropout: float = option_of(TrainConfig, "lora_dropout")
    lora_target_modules: tuple[str, ...] = option_of(TrainConfig, "lora_target_modules")
    train_on_inputs: bool = option_of(TrainConfig, "train_on_inputs")
    gradient_accumulation_steps: int = option_of(TrainConfig, "gradient_accumulation_steps")
    lr_schedule: str = option_of(TrainConfig, "lr_schedule")
    warmup_steps: int | None = option_of(TrainConfig, "warmup_steps", default=None, help=(
        "optimizer steps of linear learning-rate warm-up [default: a tenth of the steps of an epoch, between 1 and "
        f"20; train.py's default is {TrainConfig.warmup_steps}]"))
    max_steps: int | None = option_of(TrainConfig, "max_steps")
    eval_every: int | None = option_of(TrainConfig, "eval_every")
    early_stopping_patience: int | None = option_of(TrainConfig, "early_stopping_patience")
    checkpoint_every: int = option_of(TrainConfig, "checkpoint_every")
    adapter: str | None = option(None, "evaluate this trained LoRA adapter folder instead of training")
    eval_users: int | None = option(None, f"test users, a seeded sample [default {DEFAULTS.eval_users}, --quick "
                                          f"{QUICK.eval_users}]", least=1)
    all_users: bool = option(False, "evaluate every test user")
    k: tuple[int, ...] | None = option(None, f"cut-offs K [default 1,5,10,20, --quick {','.join(map(str, QUICK_KS))}]",
                                       parse=parse_ks)
    num_beams: int | None = option(None, "beam width (>= max K) [default max K]", least=1)
    length_penalty: float = option(0.0, "beams ranked by log_prob / length**length_penalty; 0 = total "
                                        "log-probability")
    exclude_history: bool = option(True, "keep items the user already consumed out of the ranking")
    baselines: bool = option(False, "also most-popular, the other decoding mode on the same adapter, and zero-shot "
                                    "constrained")
    eval_batch_size: int | None = option(None, "prompts decoded together [default 8 on a GPU, 4 on a CPU]", least=1)
    decoder: str = option("beam", "constrained decoding: beam (constrained_rec.decoding.recommend, fast), generate "
                                  "(transformers generate() with TitleTrieProcessor) or exact (exact top-K under the "
                                  "fused score, at most 2,000 prefixes per user)", choices=DECODERS)
    threads: int | None = option(None, "torch CPU threads [default half the cores: on a shared 2-core machine two "
                                       "threads run up to 4x slower than one while another process computes]", least=1)
    quick: bool = option(False, "a smoke run: few samples and users (<= 3 min here)")
    seed: int = option(0, "seeds sampling, training and the bootstrap", least=0)
    device: str = option("auto", "auto (CUDA when available), cpu, cuda, cuda:1, ...")
    output_dir: str | None = option(None, "where results go [default runs/<timestamp>]; pass an interrupted run's "
                                          "folder to resume it")
    command: str | None = None
    # The collaborative assistant, LM + prior and the controls, all the fields from here on (assistant_options();
    # validated in _check_assistant_options).
    assistant: str | None = option(None, f"the assistant; none: no prior (no assistant methods) [default "
                                         f"{DEFAULT_ASSISTANT}, --quick {QUICK_ASSISTANT}; with an assistant the "
                                         f"default K is {','.join(map(str, ASSISTANT_KS))}]", choices=ASSISTANT_CHOICES)
    prior_weight: float | str = option("auto", "the prior's weight w >= 0, or auto: chosen on up to 100 validation "
                                               "users by the NDCG@10 of LM + prior at w = 1, 4, 16 against the "
                                               "assistant alone (when that wins, LM + prior falls back to it)", parse=parse_prior_weight)
    lm_alone: bool = option(True, "also decode with the LM alone; --no-lm-alone lists only most-popular, the "
                                  "assistant and LM + prior (a long all-users run)")
    search_error_users: int | None = option(None, f"test users on which LM + prior's beam top-K is compared with "
                                                  f"exact search (0: off) [default {DEFAULT_SEARCH_ERROR_USERS} with an "
                                                  "assistant]", least=0)
    user_signal: bool = option(True, "the user-signal control: targets scored under the user's own, another user's "
                                     "and a generic prompt (constrained_rec.evaluation.user_signal)")
    signal_candidates: int = option(5, "candidates besides the target in the user-signal control (5: ~185 CPU s "
                                       "per 100 users)", least=1)
    # collaborative tokens (issue 23): constrained_rec.training.collab_tokens, constrained_rec.experiment.collab_run
    collab_tokens: str = option("none", "items: after each history title, a soft token projector(assistant item "
                                        "embedding), trained with the adapter; the assistant (sasrec, the default "
                                        "then) is fit first", choices=COLLAB_TOKEN_CHOICES)
    prior_lookahead: str | None = option(None, "what a partial title's prior increments look ahead to in LM + "
                                               "prior decoding: sum (the mass of every title under it), max (its "
                                               "best title), auto (both decoded on the sweep's validation "
                                               "users, the better (w, lookahead) kept) [default: sum; max with "
                                               "--decoder exact]", choices=PRIOR_LOOKAHEAD_CHOICES)

    def __post_init__(self):
        for name in ("constrained", "all_users", "exclude_history", "baselines", "quick"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"RunConfig.{name} must be True or False, got {getattr(self, name)!r}")
        check_least(self, _INT_OPTIONS)
        check_int(self.seed, "RunConfig.seed (--seed)", least=0, note=" (numpy takes no negative seed)")
        if self.k is not None:
            self.k = tuple(self.k)
            if not self.k or not all(is_int(k) and k >= 1 for k in self.k):
                raise ValueError(f"RunConfig.k (--k) must be positive integers like (1, 5, 10, 20), got {self.k!r}")
        check_number(self.learning_rate, "RunConfig.learning_rate (--learning-rate)", positive=True)
        check_number(self.length_penalty, "RunConfig.length_penalty (--length-penalty)")
        if self.decoder not in DECODERS:
            raise ValueError(f"RunConfig.decoder (--decoder) must be one of {list(DECODERS)}, got {self.decoder!r}")
        for name in ("dataset", "data_dir", "model", "adapter", "output_dir", "command"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and value):
                raise ValueError(f"RunConfig.{name} must be a non-empty string or None, got {value!r}")
        parse_device(self.device)
        self._check_data_options()
        self._check_training()
        self._check_assistant_options()
        self._check_collab_tokens()
        check_search_options(self)
        if self.num_beams is not None and self.num_beams < max(self.ks):
            raise ValueError(f"--num-beams {self.num_beams} is smaller than the largest K = {max(self.ks)}: beam "
                             "search returns at most num_beams titles")

    def _check_training(self) -> None:
        """The training options: checked as :class:`TrainConfig` checks them; a run that trains nothing
        (``--adapter``, ``--train-samples 0``) refuses any of them given."""
        if self.train_samples is not None:
            self.train_samples = parse_train_samples(self.train_samples)
        self.lora_target_modules = tuple(self.lora_target_modules)
        check_number(self.history_loss_weight, "RunConfig.history_loss_weight (--history-loss-weight)", least=0)
        self.train_config()  # TrainConfig's own checks, naming the flags
        if self.adapter is None and self.train_samples != 0:
            return
        reason = f"--adapter {self.adapter}" if self.adapter is not None else "--train-samples 0"
        defaults = {spec.name: spec.default for spec in fields(self)}
        for name in ("history_loss_weight", "eval_samples", *TRAINING_OPTIONS):
            value = getattr(self, name)
            if value != defaults[name]:
                shown = " ".join(value) if isinstance(value, tuple) else value
                raise ValueError(f"--{name.replace('_', '-')} {shown} is a training option, but {reason} trains "
                                 "nothing")

    def train_config(self, catalog_fingerprint: str | None = None, windows: int | None = None) -> TrainConfig:
        """The :class:`TrainConfig` this run trains with: its training options; the warm-up a tenth of an epoch's
        steps (1 to 20) unless ``--warmup-steps`` is given. An epoch is ``windows`` training samples where given
        (the training split's), else ``--train-samples`` (``all``, before the data is loaded: 0)."""
        size = self.size
        warmup = self.warmup_steps
        if warmup is None:
            if windows is None:
                windows = 0 if size.train_samples == "all" else size.train_samples
            warmup = min(20, max(1, windows // self.batch_size // 10))
        return TrainConfig(epochs=size.epochs, batch_size=self.batch_size, learning_rate=self.learning_rate,
                           history_loss_weight=self.history_loss_weight, seed=self.seed,
                           catalog_fingerprint=catalog_fingerprint, warmup_steps=warmup,
                           **{name: getattr(self, name) for name in TRAINING_OPTIONS if name != "warmup_steps"})

    def _check_data_options(self) -> None:
        """The data flags: non-empty strings, a known split and noun, a history of at least one item."""
        from constrained_rec.data import PROTOCOL_ALIASES

        for name in DATA_FILE_OPTIONS:
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and value):
                raise ValueError(f"RunConfig.{name} (--{name.replace('_', '-')}) must be a non-empty string or "
                                 f"None, got {value!r}")
        if self.split not in SPLIT_CHOICES and self.split not in PROTOCOL_ALIASES:
            raise ValueError(f"RunConfig.split (--split) must be one of {list(SPLIT_CHOICES)}, got {self.split!r}")
        if self.item_noun is not None and self.item_noun not in ITEM_NOUNS:
            raise ValueError(f"RunConfig.item_noun (--item-noun) must be one of {sorted(ITEM_NOUNS)}, "
                             f"got {self.item_noun!r}")

    def _check_assistant_options(self) -> None:
        """The assistant flags: a known assistant, a weight >= 0 or "auto", sizes, LM alone only with a prior."""
        if self.assistant is not None and self.assistant not in ASSISTANT_CHOICES:
            raise ValueError(f"RunConfig.assistant (--assistant) must be one of {list(ASSISTANT_CHOICES)}, "
                             f"got {self.assistant!r}")
        self.prior_weight = parse_prior_weight(self.prior_weight)
        for name in ("lm_alone", "user_signal"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"RunConfig.{name} must be True or False, got {getattr(self, name)!r}")
        if not self.lm_alone and self.assistant_name == "none":
            raise ValueError("--no-lm-alone skips the LM-alone decoding, which leaves nothing of the LM to evaluate "
                             "without an assistant; pass --assistant popularity, ease or sasrec")
        if self.assistant_name == "none":
            # these act on the assistant's prior only: ignoring them without a word would hide a mistaken command
            for flag, given in (("--prior-weight", self.prior_weight != "auto"),
                                ("--search-error-users", bool(self.search_error_users))):
                if given:
                    raise ValueError(f"{flag} applies to the collaborative prior, but --assistant none turns it off "
                                     f"(nothing of it would run); drop {flag}, or pass --assistant popularity, ease "
                                     "or sasrec")

    def _check_collab_tokens(self) -> None:
        """``--collab-tokens``: a known choice; ``items`` needs an assistant with item embeddings (SASRec)."""
        if self.collab_tokens not in COLLAB_TOKEN_CHOICES:
            raise ValueError(f"RunConfig.collab_tokens (--collab-tokens) must be one of {list(COLLAB_TOKEN_CHOICES)}, "
                             f"got {self.collab_tokens!r}")
        if self.collab_tokens != "none" and self.assistant_name not in COLLAB_ASSISTANTS:
            raise ValueError(f"--collab-tokens {self.collab_tokens} reads the assistant's item embeddings, but "
                             f"--assistant {self.assistant_name} has none; pass --assistant "
                             f"{' or '.join(COLLAB_ASSISTANTS)} (the default with --collab-tokens items)")
        if self.collab_tokens != "none" and self.train_samples == 0 and self.adapter is None:
            raise ValueError(f"--collab-tokens {self.collab_tokens} feeds the prompt through a projector trained with the "
                             "adapter, but --train-samples 0 trains none (zero-shot); train one, or pass --adapter DIR")

    @property
    def search_error_count(self) -> int:
        """``--search-error-users``: the given number, else ``DEFAULT_SEARCH_ERROR_USERS`` (0 without an assistant)."""
        if self.search_error_users is not None:
            return self.search_error_users
        return 0 if self.assistant_name == "none" else DEFAULT_SEARCH_ERROR_USERS

    @property
    def assistant_name(self) -> str:
        """``--assistant``, else ``QUICK_ASSISTANT`` with ``--quick`` (unless ``--collab-tokens items``, whose
        tokens need SASRec) and ``DEFAULT_ASSISTANT`` otherwise."""
        quick = self.quick and self.collab_tokens == "none"
        return self.assistant or (QUICK_ASSISTANT if quick else DEFAULT_ASSISTANT)

    @property
    def size(self) -> RunSize:
        """Training and evaluation sizes: the flags where given, else ``QUICK`` or ``DEFAULTS``."""
        base = QUICK if self.quick else DEFAULTS
        return RunSize(
            train_samples=base.train_samples if self.train_samples is None else self.train_samples,
            epochs=base.epochs if self.epochs is None else self.epochs,
            eval_users=base.eval_users if self.eval_users is None else self.eval_users,
            validation_samples=base.validation_samples if self.eval_samples is None else self.eval_samples,
        )

    @property
    def ks(self) -> tuple[int, ...]:
        if self.k:
            return self.k
        return QUICK_KS if self.quick else (DEFAULT_KS if self.assistant_name == "none" else ASSISTANT_KS)

    def command_line(self) -> str:
        """``command``, or the ``experiments/run.py`` command line that gives this config."""
        if self.command is not None:
            return self.command
        words = ["python", "experiments/run.py"]
        for spec in option_fields(RunConfig):
            value, default, flag = getattr(self, spec.name), spec.default, flag_of(spec)
            if value == default:
                continue
            if isinstance(value, bool):
                words.append(flag if value else f"--no-{flag[2:]}")
            elif spec.name == "k":
                words += [flag, ",".join(map(str, value))]
            else:
                words += [flag, *map(str, value)] if isinstance(value, tuple) else [flag, str(value)]
        return " ".join(words)


# ------------------------------------------------------------------------------------- validation first
def parse_device(text: str) -> torch.device | None:
    """The device ``text`` names (``None`` for ``"auto"``); a ``ValueError`` naming it if it is not a device."""
    import torch  # here, not at the top: reading the options must not import torch

    if text == "auto":
        return None
    try:
        return torch.device(text)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {text!r} is not a device; accepted: auto, cpu, cuda, cuda:N (N a GPU index), "
                         "mps") from None


def model_name(config: RunConfig) -> str:
    """``--model``, else the base model the adapter was trained on, else the embedded model."""
    from constrained_rec.model import adapter_train_config

    if config.model is not None:
        return config.model
    return adapter_train_config(config.adapter)["base_model"] if config.adapter else DEFAULT_MODEL


def run_identity(config: RunConfig, name: str | None = None, extra: dict | None = None) -> dict:
    """Every option that changes a run's results: data, split, model, adapter, training, decoding, seed; the one
    record of a run's options (``run.json``), for every entry point.

    ``name`` is the resolved base model (:func:`model_name`, read here where not given); ``extra`` holds an entry
    point's own options that change results (the scale run's training budget, bf16, ...), recorded beside them
    and replacing entries of the same name. Left out are options that change only speed or which methods are
    listed (``--constrained``, ``--baselines``, batch size of decoding, threads, device, output folder,
    ``--checkpoint-every``).
    """
    size = config.size
    return {
        "dataset": config.dataset, "data_dir": config.data_dir, "model": name or model_name(config),
        **{name: getattr(config, name) for name in DATA_OPTIONS},
        "adapter": str(Path(config.adapter).resolve()) if config.adapter else None,
        "train_samples": size.train_samples, "epochs": size.epochs, "validation_samples": size.validation_samples,
        "batch_size": config.batch_size, "learning_rate": config.learning_rate,
        # only when set, so that folders written before the option existed still resume
        **({"history_loss_weight": config.history_loss_weight} if config.history_loss_weight else {}),
        **({"collab_tokens": config.collab_tokens} if config.collab_tokens != "none" else {}),
        **({"template": config.template} if config.template != "alpaca" else {}),
        **_training_identity(config),
        **({"prior_lookahead": lookahead(config)} if lookahead(config) != "sum" else {}),
        "eval_users": None if config.all_users else size.eval_users, "ks": list(config.ks),
        "num_beams": config.num_beams or max(config.ks), "length_penalty": config.length_penalty,
        "exclude_history": config.exclude_history, "decoder": config.decoder, "seed": config.seed,
        "assistant": config.assistant_name, "prior_weight": config.prior_weight,
        **(extra or {}),
    }


def _training_identity(config: RunConfig) -> dict:
    """The ``TRAINING_OPTIONS`` that differ from their defaults (only those, so that folders written before the
    options existed still resume), less ``checkpoint_every`` (a resumed training ends with the same weights)."""
    defaults = {spec.name: spec.default for spec in fields(config)}
    return {name: list(value) if isinstance(value, tuple) else value for name in TRAINING_OPTIONS
            if name != "checkpoint_every" and (value := getattr(config, name)) != defaults[name]}


def check_run_identity(output_dir: Path, config: RunConfig, state, extra: dict | None = None,
                       name: str | None = None, predictions: str = "", results: tuple[str, ...] | None = None) -> None:
    """Refuse to resume a folder written by a run with other options, naming them (old -> new).

    The main process writes ``run.json`` (:func:`run_identity` of ``config``, ``name`` and ``extra``) on the first
    run; the others wait for it. A folder with results (the adapter, the assistant, or the predictions'
    ``evaluation.json`` in its ``predictions`` subfolder) but no ``run.json`` was written by an older version
    whose options are unknown: also refused. ``results`` names those files where the folder holds others (the
    adapter's own files, ``train_config.json`` and its checkpoint, where the folder is the adapter: train.py, a
    recipe); ``()``: nothing in the folder binds its options (a stale ``run.json`` is replaced).
    """
    from constrained_rec.evaluation.predictions import check_identity
    from constrained_rec.experiment.run_folder import DATA_FILES_KEY

    path = output_dir / RUN_IDENTITY
    if results is None:
        results = ("adapter", "assistant", str(Path(predictions) / "evaluation.json"))
    earlier = [result for result in results if (output_dir / result).exists()]
    if earlier and not path.is_file():
        raise ValueError(f"{output_dir} holds results ({', '.join(earlier)}) of a run whose options were not "
                         f"recorded (no {RUN_IDENTITY}); it cannot be resumed safely: choose a new --output-dir")
    if not earlier and state.is_main_process and path.is_file():
        path.unlink()  # a run that failed before producing anything: nothing to resume, its options do not bind
    try:
        check_identity(path, run_identity(config, name, extra), state, "a run", ignore=(DATA_FILES_KEY,))
    except ValueError as error:
        raise ValueError(f"{error}. A new run needs a new folder: pass another --output-dir") from None
