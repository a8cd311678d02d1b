"""Models: loading and hashing checkpoints, the handle plug-ins receive, generation, scoring."""
