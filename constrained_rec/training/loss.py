"""The training loss: cross-entropy at the response positions, with the LM head applied only there."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from constrained_rec.hf import cache_keyword, causal_lm
from constrained_rec.training.batching import Batch


class ResponseLoss(torch.nn.Module):
    """Summed cross-entropy at a batch's target positions, with the LM head applied only there.

    It runs the decoder stack for the hidden states, gathers the target positions and applies the LM
    head to those rows: the same loss as the full logits (:func:`full_logits_loss`) without the
    ``(batch, length, vocab)`` tensor. It is a module so that DDP sees its forward.

    When all rows start with the same ``shared_prefix_length`` tokens (BIGRec's instruction is about 70
    of the ~190 tokens of an ml-100k prompt), the prefix runs once, with batch size 1, and the rows
    continue from its key/value cache; gradients from every row flow back into the one prefix. The
    loss is the same; the only difference in training mode is that LoRA dropout draws one mask for the
    prefix instead of one per row.

    Args:
        model (`PreTrainedModel` or `peft.PeftModel`):
            A causal LM whose logits are ``lm_head(decoder(...))``: Llama, Qwen2, Mistral, SmolLM2.
        collab (`CollabTokens`, *optional*):
            The collaborative tokens of batches with soft positions (:mod:`constrained_rec.training.collab_tokens`):
            there the decoder reads ``inputs_embeds``, the token embeddings with each soft position's row replaced by
            ``collab(item row)``, so the projector trains with the adapter.

    Example:

    ```python
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from constrained_rec.training.batching import Example, collate
    >>> from constrained_rec.training.loss import ResponseLoss, full_logits_loss
    >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=32,
    ...                                      num_hidden_layers=1, num_attention_heads=2))
    >>> batch = collate([Example([1, 5, 6, 7, 2], 3), Example([1, 8, 9, 2], 2)], pad_token_id=0)
    >>> batch.targets.tolist()
    [7, 2, 9, 2]
    >>> mean = ResponseLoss(model)(*batch.tensors()) / len(batch.targets)  # (ids, mask, positions, targets, prefix)
    >>> bool(torch.isclose(mean, full_logits_loss(model, batch)))
    True

    ```
    """

    def __init__(self, model, collab=None):
        super().__init__()
        self.collab = collab
        config = causal_lm(model).config
        for name in ("final_logit_softcapping", "logit_scale"):
            if getattr(config, name, None) not in (None, 1.0):
                raise ValueError(
                    f"{type(causal_lm(model)).__name__} transforms its logits ({name}={getattr(config, name)}), "
                    "so the LM head alone does not give them; models with a plain LM head are supported"
                )
        self.model = model

    def forward(self, input_ids, attention_mask, positions, targets, shared_prefix_length: int = 0,
                history_positions=None, history_targets=None, soft_positions=None, soft_items=None) -> torch.Tensor:
        """The summed cross-entropy at ``positions``; with ``history_positions`` (the history-title targets of
        :func:`constrained_rec.training.batching.collate`) the pair ``[response sum, history sum]``, one LM-head call for both.
        ``soft_positions`` (flat) and ``soft_items`` are the batch's collaborative tokens, read through ``collab``."""
        lm = causal_lm(self.model)
        decoder = lm.get_decoder()
        embeds = None if soft_positions is None else self._soft_embeds(lm, input_ids, soft_positions, soft_items)
        hidden = _decoder_hidden(decoder, input_ids, attention_mask, shared_prefix_length, embeds)
        hidden = hidden.reshape(-1, hidden.shape[-1])
        if history_positions is None:
            logits = lm.get_output_embeddings()(hidden.index_select(0, positions))
            return F.cross_entropy(logits.float(), targets, reduction="sum")
        logits = lm.get_output_embeddings()(hidden.index_select(0, torch.cat([positions, history_positions])))
        losses = F.cross_entropy(logits.float(), torch.cat([targets, history_targets]), reduction="none")
        return torch.stack([losses[: len(targets)].sum(), losses[len(targets) :].sum()])

    def _soft_embeds(self, lm, input_ids, soft_positions, soft_items) -> torch.Tensor:
        """The batch's input embeddings with the soft rows put in (``collab`` of their items)."""
        if self.collab is None:
            raise ValueError("the batch has soft positions (collaborative tokens) but the loss was built without "
                             "their CollabTokens: ResponseLoss(model, collab=...)")
        embeds = lm.get_input_embeddings()(input_ids)
        flat = embeds.reshape(-1, embeds.shape[-1])
        return flat.index_copy(0, soft_positions, self.collab(soft_items).to(flat.dtype)).reshape(embeds.shape)


def _decoder_hidden(decoder, input_ids, attention_mask, shared: int, embeds=None) -> torch.Tensor:
    """The decoder's last hidden states of the batch; the ``shared`` prefix run once, by ids (it ends before any
    soft position), the rest by ids or, given ``embeds``, by ``inputs_embeds``."""
    rest = {"input_ids": input_ids[:, shared:]} if embeds is None else {"inputs_embeds": embeds[:, shared:]}
    if not shared:
        return decoder(attention_mask=attention_mask, **rest).last_hidden_state
    prefix = decoder(input_ids=input_ids[:1, :shared], use_cache=True)
    keyword = cache_keyword(decoder)
    cache = getattr(prefix, keyword)
    cache.batch_repeat_interleave(input_ids.shape[0])
    hidden = decoder(attention_mask=attention_mask, use_cache=True, **rest, **{keyword: cache}).last_hidden_state
    return torch.cat([prefix.last_hidden_state.expand(input_ids.shape[0], -1, -1), hidden], dim=1)


def full_logits_loss(model, batch: Batch) -> torch.Tensor:
    """The naive reference: transformers' own mean loss from the full logits at every position."""
    return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels()).loss
