"""Where a run's steps execute: this process (:class:`audit.runner.LocalExecutor`, the default,
which imports no cluster library) or a Ray cluster (:mod:`audit.executors.cluster`), each step a
task with its resource request (:mod:`audit.executors.resources`)."""
