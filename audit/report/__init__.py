"""The run page, the release page, the gallery, CI outputs (JUnit, summary) and their charts."""
