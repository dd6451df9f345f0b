"""Scorers for the evaluation benchmarks, one module per benchmark, and their shared rules."""
