"""Measuring recommendations: `evaluate` (the loop and :class:`EvalConfig`), `metrics`, the methods compared
(`recommenders`), stored `predictions`, title `grounding` for free generation and the `user_signal` control."""
