"""The toolkit inside a PyTorch Lightning project (the optional extra: ``pip install constrained-rec[lightning]``).

```python
import lightning.pytorch as pl
from constrained_rec.experiment.catalog import catalog_trie
from constrained_rec.lightning import BigRecDataModule, BigRecModule
from constrained_rec.model import load_model

model, tokenizer = load_model()
data = BigRecDataModule.from_dataset("ml-100k", tokenizer, train_samples=256, eval_users=50)
module = BigRecModule(model, tokenizer, catalog_trie(data.data, tokenizer))
trainer = pl.Trainer(max_epochs=1, use_distributed_sampler=False)
trainer.fit(module, data)
trainer.test(module, data)  # test/hr@K, test/ndcg@K: the numbers constrained_rec.evaluation.evaluate gives
module.save_adapter("runs/lightning/adapter")  # python experiments/run.py --constrained --adapter ...
```

Everything is built on the library: the loss and batches of :mod:`constrained_rec.training.train`, the decoding of
:func:`constrained_rec.decoding.recommend.recommend`, the metrics of :mod:`constrained_rec.evaluation.evaluate`. Nothing outside
this package imports Lightning. ``experiments/run_lightning.py`` runs the same from ``conf/bigrec.yaml``
(:mod:`constrained_rec.lightning.config`); teacher outputs for distillation are
:mod:`constrained_rec.evaluation.teacher` (no Lightning needed).
"""

from constrained_rec.lightning.data import BigRecDataModule, EpochBatchSampler, PromptLimits, SequencePrompter
from constrained_rec.lightning.module import BigRecModule

__all__ = ["BigRecDataModule", "BigRecModule", "EpochBatchSampler", "PromptLimits", "SequencePrompter"]
