"""The project's benchmarks; ``python -m bench`` runs the ratio benchmarks (see ``__main__``)."""
