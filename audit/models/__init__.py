"""Models: loading and hashing checkpoints, the handle plug-ins receive, generation, scoring,
and OpenAI-compatible endpoints that answer for a model with text only."""
