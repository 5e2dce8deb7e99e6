"""Keras's own saving/loading tests, run with every load redirected through ``lazyweights.keras``."""
