"""After the run: assemble the results (:mod:`.assemble`), compare each model with its baselines
(:mod:`.baselines`), check the release gates (:mod:`.gates`), fit scaling curves
(:mod:`.scaling`)."""
