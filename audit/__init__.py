"""audit: a safety-auditing evaluation harness for language-model release pipelines."""

__version__ = "0.1.0"
