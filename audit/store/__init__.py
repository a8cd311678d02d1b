"""The content-addressed store of built models and evaluation results (:mod:`.core`), the keys
that address it (:mod:`.keys`) and its least-recently-used pruning (:mod:`.prune`)."""
