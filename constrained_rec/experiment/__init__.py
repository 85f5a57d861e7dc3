"""The experiment driver behind ``experiments/*.py``: `run_config` (options), `pipeline` (data -> model -> train ->
evaluate), `report`, `recipes`, `scale_run`, the collaborative `assistant_prior` and the `catalog` trie builder."""
