"""What every fine-tuning intervention shares: the LoRA training loop (:mod:`.loop`) and
per-sample Fisher information (:mod:`.fisher`)."""
