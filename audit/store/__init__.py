"""The content-addressed store of built models and evaluation results (:mod:`.core`) and its
least-recently-used pruning (:mod:`.prune`)."""
