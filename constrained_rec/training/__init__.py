"""LoRA fine-tuning on (prompt, next title) examples: `train` (loop and :class:`TrainConfig`), `batching`, `loss`
and resumable `checkpoint`s."""
