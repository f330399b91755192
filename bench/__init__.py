"""Benchmarks that print ratios against a floor measured in the same run.

Run them from the repository root as modules (``python -m bench.hub_fanout``,
``python -m bench.fanout``); see bench/README.md. They are not tests: nothing in
them asserts on timing.
"""
