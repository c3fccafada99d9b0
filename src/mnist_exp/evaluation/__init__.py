"""Scoring a model on a test set and drawing its figures."""
