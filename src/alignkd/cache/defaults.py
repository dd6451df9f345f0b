"""Default options of `alignkd cache-teacher`, importable without torch (the CLI's help text shows them)."""

DEFAULT_TOP_K = 64
"""Tokens kept per logit row. Each row then takes 64 x (4 + 2) + 4 + 4 = 392 bytes (fp32
log-probabilities, 16-bit ids, the tail and the target), 0.61% of a dense fp16 row of a
32000-token vocabulary."""

DEFAULT_SHARD_MEGABYTES = 512.0
"""Shard size in MiB: large enough that a cache of millions of samples has few files, small
enough that hashing one when it is first read takes about a second."""
