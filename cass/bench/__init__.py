"""Benchmarks of the engine (``python -m cass.bench``), outside the model library's modules."""
