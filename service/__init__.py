"""calibserve: serve classifiers whose probabilities can be trusted."""

__version__ = "0.1.0"
