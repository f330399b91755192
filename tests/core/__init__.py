"""Tests of the pure core: synchronous and deterministic, hypothesis where it pays."""
