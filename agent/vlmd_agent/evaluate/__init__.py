"""Evaluating: the wrapper loop, model backends, datasets, scoring and demos."""
