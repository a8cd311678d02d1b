"""Continual learning: forgetting measures over a lineage of fine-tunes (:mod:`.forgetting`)."""
