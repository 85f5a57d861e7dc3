"""--collab-tokens in the main job (issue 23): the option's checks, the run identity, and the adapter checks."""

from __future__ import annotations

import pytest
from test_collab_tokens import sasrec

from conftest import make_tiny_llama
from constrained_rec.experiment.collab_run import adapter_tokens
from constrained_rec.experiment.run_config import RunConfig, run_identity
from constrained_rec.training.collab_tokens import CollabTokens


def test_collab_tokens_need_an_assistant_with_item_embeddings():
    for assistant in ("popularity", "ease", "none"):
        with pytest.raises(ValueError, match=f"--collab-tokens items reads the assistant's item embeddings, but "
                                             f"--assistant {assistant} has none; pass --assistant sasrec"):
            RunConfig(collab_tokens="items", assistant=assistant)
    with pytest.raises(ValueError, match=r"--collab-tokens\) must be one of \['none', 'items'\], got 'users'"):
        RunConfig(collab_tokens="users")
    with pytest.raises(ValueError, match="--train-samples 0 trains none"):
        RunConfig(collab_tokens="items", train_samples=0)
    quick = RunConfig(collab_tokens="items", quick=True)
    assert quick.assistant_name == "sasrec" and RunConfig(quick=True).assistant_name == "popularity"
    assert run_identity(quick)["collab_tokens"] == "items"
    assert "collab_tokens" not in run_identity(RunConfig(quick=True))  # folders of before the option still resume
    assert "--collab-tokens items" in quick.command_line()


def test_an_adapter_is_checked_against_the_runs_tokens(tmp_path):
    model = make_tiny_llama()
    trained = CollabTokens.from_assistant(sasrec(seed=0), model, seed=3)
    trained.save(tmp_path)
    fresh = CollabTokens.from_assistant(sasrec(seed=0), model, seed=4)
    loaded = adapter_tokens(tmp_path, fresh)
    assert loaded is fresh and (fresh.projector.weight == trained.projector.weight).all()
    with pytest.raises(ValueError, match="trained with collaborative tokens of the 'sasrec' assistant .* evaluate it "
                                         "with --collab-tokens items --assistant sasrec"):
        adapter_tokens(tmp_path, None)
    with pytest.raises(ValueError, match="fingerprint"):
        adapter_tokens(tmp_path, CollabTokens.from_assistant(sasrec(seed=1), model))
    with pytest.raises(ValueError, match="trained without collaborative tokens"):
        adapter_tokens(tmp_path / "plain", fresh)
    assert adapter_tokens(tmp_path / "plain", None) is None
