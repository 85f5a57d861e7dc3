"""The options of the main job (:class:`RunConfig`, one per flag of ``experiments/run.py``) and the checks that
run before anything is loaded: the device exists, and a resumed folder belongs to a run with the same options.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from constrained_rec.collaborative.registry import ASSISTANTS
from constrained_rec.evaluation.evaluate import DECODERS
from constrained_rec.experiment.search_options import check_search_options, lookahead

if TYPE_CHECKING:
    import torch

RUN_IDENTITY = "run.json"
DEFAULT_MODEL = "smollm2-135m"
DEFAULT_KS = (1, 5, 10, 20)


@dataclass(frozen=True)
class RunSize:
    """How much a run trains and evaluates."""

    train_samples: int
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


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# The data flags: the generic interactions file's items file, columns and separator (passed to
# load_interactions as they are), and how its samples are made (SplitConfig). "auto" is the layout's own
# split where it has one (D3 / MiniOneRec folders), else leave-one-out.
DATA_FILE_OPTIONS = ("items", "user_column", "item_column", "time_column", "title_column", "items_item_column", "sep")
DATA_OPTIONS = (*DATA_FILE_OPTIONS, "split", "max_history", "item_noun")
SPLIT_CHOICES = ("auto", "leave-one-out", "temporal", "given")


def add_data_file_arguments(parser) -> None:
    """The ``DATA_FILE_OPTIONS`` flags (``--items``, the column options) on an argparse parser or group, for
    ``experiments/run.py`` and ``experiments/train.py`` alike; ``--sep`` is left to each script."""
    parser.add_argument("--items", default=None, help="items file (item id, title) of an interactions CSV/TSV, or "
                        "the metadata file of an Amazon reviews file")
    for column, default, what in (("user", "user_id", "interactions file's user id"),
                                  ("item", "item_id", "interactions file's item id"),
                                  ("time", "timestamp", "interactions file's time (Unix seconds or ISO 8601)"),
                                  ("title", "title", "items file's title"),
                                  ("items-item", "--item-column", "items file's item id")):
        parser.add_argument(f"--{column}-column", default=None, help=f"column of the {what} [default {default}]")


@dataclass
class RunConfig:
    """Every option of ``experiments/run.py`` (same names as its flags, same defaults); see ``--help``.

    ``None`` means "the default for this size": :attr:`size`, :attr:`ks` and :func:`resolve_device` resolve them.
    ``command`` is the command line recorded in ``metrics.json`` (by default rebuilt from the options).
    """

    constrained: bool = False
    dataset: str = "ml-100k"
    data_dir: str | None = None
    # The data set's files, columns and split (see DATA_OPTIONS and constrained_rec.data.load_interactions).
    items: str | None = None
    user_column: str | None = None
    item_column: str | None = None
    time_column: str | None = None
    title_column: str | None = None
    items_item_column: str | None = None
    sep: str | None = None
    split: str = "auto"
    max_history: int = 10
    item_noun: str | None = None
    model: str | None = None
    train_samples: int | None = None
    epochs: int | None = None
    batch_size: int = 8
    learning_rate: float = 1e-3
    history_loss_weight: float = 0.0
    adapter: str | None = None
    eval_users: int | None = None
    all_users: bool = False
    k: tuple[int, ...] | None = None
    num_beams: int | None = None
    length_penalty: float = 0.0
    exclude_history: bool = True
    baselines: bool = False
    eval_batch_size: int | None = None
    decoder: str = "beam"
    threads: int | None = None
    quick: bool = False
    seed: int = 0
    device: str = "auto"
    output_dir: str | None = None
    command: str | None = None
    # The collaborative assistant, LM + prior and the controls (see ASSISTANT_CHOICES; validated in
    # _check_assistant_options).
    assistant: str | None = None
    prior_weight: float | str = "auto"
    lm_alone: bool = True
    search_error_users: int | None = None  # None: DEFAULT_SEARCH_ERROR_USERS with an assistant
    user_signal: bool = True
    signal_candidates: int = 5
    collab_tokens: str = "none"  # see COLLAB_TOKEN_CHOICES; validated in _check_collab_tokens
    prior_lookahead: str | None = None  # sum, max, auto; None: the decoder's (experiment.search_options)

    def __post_init__(self):
        for name in ("constrained", "all_users", "exclude_history", "baselines", "quick"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"RunConfig.{name} must be True or False, got {getattr(self, name)!r}")
        for name, least in (("train_samples", 0), ("epochs", 1), ("batch_size", 1), ("eval_users", 1),
                            ("num_beams", 1), ("eval_batch_size", 1), ("threads", 1)):
            value = getattr(self, name)
            if value is not None and not (_is_int(value) and value >= least):
                raise ValueError(f"RunConfig.{name} (--{name.replace('_', '-')}) must be an integer >= {least}, "
                                 f"got {value!r}")
        if not (_is_int(self.seed) and self.seed >= 0):
            raise ValueError(f"RunConfig.seed (--seed) must be an integer >= 0 (numpy takes no negative seed), "
                             f"got {self.seed!r}")
        if self.k is not None:
            self.k = tuple(self.k)
            if not self.k or not all(_is_int(k) and k >= 1 for k in self.k):
                raise ValueError(f"RunConfig.k (--k) must be positive integers like (1, 5, 10, 20), got {self.k!r}")
        for name in ("learning_rate", "length_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"RunConfig.{name} must be a finite number, got {value!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"RunConfig.learning_rate (--learning-rate) must be > 0, got {self.learning_rate!r}")
        self._check_history_loss_weight()
        if self.decoder not in DECODERS:
            raise ValueError(f"RunConfig.decoder (--decoder) must be one of {list(DECODERS)}, got {self.decoder!r}")
        for name in ("dataset", "data_dir", "model", "adapter", "output_dir", "command"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and value):
                raise ValueError(f"RunConfig.{name} must be a non-empty string or None, got {value!r}")
        parse_device(self.device)
        self._check_data_options()
        self._check_assistant_options()
        self._check_collab_tokens()
        check_search_options(self)
        if self.num_beams is not None and self.num_beams < max(self.ks):
            raise ValueError(f"--num-beams {self.num_beams} is smaller than the largest K = {max(self.ks)}: beam "
                             "search returns at most num_beams titles")

    def _check_history_loss_weight(self) -> None:
        """``--history-loss-weight``: a finite number >= 0 that only a run that trains can use."""
        weight = self.history_loss_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"RunConfig.history_loss_weight (--history-loss-weight) must be a finite number >= 0, "
                             f"got {weight!r}")
        if weight and (self.adapter is not None or self.train_samples == 0):
            reason = f"--adapter {self.adapter}" if self.adapter is not None else "--train-samples 0"
            raise ValueError(f"--history-loss-weight {weight} is a training option, but {reason} trains nothing")

    def _check_data_options(self) -> None:
        """The data flags: non-empty strings, a known split and noun, a history of at least one item."""
        from constrained_rec.data import PROTOCOL_ALIASES
        from constrained_rec.prompts import ITEM_NOUNS

        for name in DATA_FILE_OPTIONS:
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and value):
                raise ValueError(f"RunConfig.{name} (--{name.replace('_', '-')}) must be a non-empty string or "
                                 f"None, got {value!r}")
        if self.split not in SPLIT_CHOICES and self.split not in PROTOCOL_ALIASES:
            raise ValueError(f"RunConfig.split (--split) must be one of {list(SPLIT_CHOICES)}, got {self.split!r}")
        if not (_is_int(self.max_history) and self.max_history >= 1):
            raise ValueError(f"RunConfig.max_history (--max-history) must be an integer >= 1, got {self.max_history!r}")
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
        for name, least in (("search_error_users", 0), ("signal_candidates", 1)):
            value = getattr(self, name)
            if not (_is_int(value) and value >= least) and not (name == "search_error_users" and value is None):
                raise ValueError(f"RunConfig.{name} (--{name.replace('_', '-')}) must be an integer >= {least}, "
                                 f"got {value!r}")
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
            validation_samples=base.validation_samples,
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
        for spec in fields(self):
            value, default = getattr(self, spec.name), spec.default
            flag = "--" + spec.name.replace("_", "-")
            if spec.name == "command" or value == default:
                continue
            if isinstance(value, bool):
                words.append(flag if value else f"--no-{flag[2:]}")
            else:
                words += [flag, ",".join(map(str, value)) if isinstance(value, tuple) else str(value)]
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


def resolve_device(text: str, state=None) -> torch.device:
    """The device to compute on, checked to exist before anything is loaded.

    ``auto`` is CUDA when available, else the CPU; under ``torchrun`` / ``accelerate launch`` on GPUs each
    process takes its own GPU (``state.device``).
    """
    import torch
    device = parse_device(text) or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = "built without CUDA" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, no GPU visible"
            raise ValueError(f"--device {text!r} asks for a CUDA GPU, but this torch ({torch.__version__}, {built}) "
                             "sees none; use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {text!r}: there are only {torch.cuda.device_count()} CUDA GPU(s), "
                             f"indices 0 to {torch.cuda.device_count() - 1}")
        if state is not None and state.num_processes > 1:
            device = state.device
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {text!r}: MPS is not available on this machine; use --device cpu (or auto)")
    elif device.type not in ("cpu", "mps"):
        try:
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError) as error:
            raise ValueError(f"--device {text!r} is not usable here ({error}); use --device cpu (or auto)") from None
    return device


def output_folder(config: RunConfig, state) -> Path:
    """``--output-dir``, or ``runs/<timestamp>`` in a single process (sharded processes must share a folder)."""
    if config.output_dir is not None:
        return Path(config.output_dir)
    if state.num_processes > 1:
        raise ValueError("a sharded run (torchrun / accelerate launch with several processes) needs --output-dir: "
                         "every process must write into the same folder")
    return Path(f"runs/{datetime.now():%Y%m%d-%H%M%S}")


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
    listed (``--constrained``, ``--baselines``, batch size of decoding, threads, device, output folder).
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
        **({"prior_lookahead": lookahead(config)} if lookahead(config) != "sum" else {}),
        "eval_users": None if config.all_users else size.eval_users, "ks": list(config.ks),
        "num_beams": config.num_beams or max(config.ks), "length_penalty": config.length_penalty,
        "exclude_history": config.exclude_history, "decoder": config.decoder, "seed": config.seed,
        "assistant": config.assistant_name, "prior_weight": config.prior_weight,
        **(extra or {}),
    }


def check_splits(config: RunConfig, data, split_config, available: dict[str, int]) -> None:
    """Before the model loads: every split this run needs holds samples, or an error naming the missing or empty
    CSV (D3 / MiniOneRec layouts) or split, who needs it and what to pass instead.

    ``available`` is the number of samples of each split (``train``, ``validation``, ``test``).
    """
    training = bool(config.size.train_samples) and not config.adapter
    needs = {"test": [("the evaluation", "")]}
    if training:
        needs["train"] = [(f"training (--train-samples {config.size.train_samples} without --adapter)",
                           "--train-samples 0 to evaluate the base model zero-shot, or --adapter DIR")]
    validation = []
    if training:
        validation.append(("training (its validation loss picks the saved adapter)",
                           "--train-samples 0 or --adapter DIR"))
    if config.assistant_name in ("ease", "sasrec"):
        validation.append((f"the {config.assistant_name} assistant (it chooses its settings on validation samples)",
                           "--assistant popularity or none"))
    if config.assistant_name != "none" and config.prior_weight == "auto":
        validation.append(("--prior-weight auto (it weighs the prior on validation users)", "--prior-weight 1"))
    needs["validation"] = validation
    for split, purposes in needs.items():
        if purposes and not available[split]:
            raise _empty_split(data, split_config, split, purposes)


def check_signal_candidates(config: RunConfig, data, test_split) -> None:
    """Before the model loads: every test user has ``--signal-candidates`` items to draw for the user-signal
    control (the catalog less the user's consumed items and the items titled like the target), or an error
    naming the flag, the user and the largest value that works (it used to fail after the whole evaluation)."""
    if not config.user_signal or len(test_split) < 2:  # with fewer than 2 users the control is not run
        return
    from collections import Counter

    from constrained_rec.evaluation.evaluate import consumed_items

    same_title = Counter(data.titles.values())
    fewest = None
    for row, consumed in zip(test_split, consumed_items(data.interactions, test_split)):
        title = data.titles[int(row["target_item_id"])]
        banned = same_title[title] + sum(data.titles[i] != title for i in consumed if i in data.titles)
        left = len(data.titles) - banned
        if fewest is None or left < fewest[0]:
            fewest = (left, int(row["user_id"]))
    if fewest[0] < config.signal_candidates:
        raise ValueError(f"--signal-candidates {config.signal_candidates} is more than test user {fewest[1]} has to "
                         f"draw: {fewest[0]} items of the catalog's {len(data.titles)} remain once the user's consumed "
                         f"items and the target's title are left out; pass --signal-candidates {max(1, fewest[0])} or "
                         "less, or --no-user-signal")


def _empty_split(data, split_config, split: str, purposes: list[tuple[str, str]]) -> Exception:
    """The error for a split without samples that ``purposes`` (``(who needs it, what to pass instead)``) need."""
    from constrained_rec.data import SPLIT_FOLDERS

    who = " and ".join(purpose for purpose, _ in purposes)
    instead = "; or pass " + ", or ".join(alternative for _, alternative in purposes if alternative)
    instead = instead if any(alternative for _, alternative in purposes) else ""
    given = getattr(data, "given", None)
    if split_config.protocol == "given" and given is not None:
        if split not in given.files:
            try:
                given.require(split, who)
            except FileNotFoundError as error:
                return FileNotFoundError(f"{error}{instead}")
        return ValueError(f"{given.files[split]} holds no samples (only its header): {who} needs "
                          f"{SPLIT_FOLDERS[split]} samples; add its rows{instead}")
    return ValueError(f"{data.name}: the {split_config.protocol} split leaves no {split} samples (too few "
                      f"interactions per user or in time): {who} needs them{instead}")


def check_run_identity(output_dir: Path, config: RunConfig, state, extra: dict | None = None,
                       name: str | None = None, predictions: str = "") -> None:
    """Refuse to resume a folder written by a run with other options, naming them (old -> new).

    The main process writes ``run.json`` (:func:`run_identity` of ``config``, ``name`` and ``extra``) on the first
    run; the others wait for it. A folder with results (the adapter, the assistant, or the predictions'
    ``evaluation.json`` in its ``predictions`` subfolder) but no ``run.json`` was written by an older version
    whose options are unknown: also refused.
    """
    from constrained_rec.evaluation.predictions import check_identity
    from constrained_rec.experiment.run_folder import DATA_FILES_KEY

    path = output_dir / RUN_IDENTITY
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
