"""The offline teacher cache: run the teacher once, store what the objective reads, train from the store.

When teacher and student do not fit on the device together, the teacher's outputs can be
computed ahead of training:

    alignkd cache-teacher distill.yaml --out teacher-cache        # runs the teacher once
    alignkd distill distill.yaml teacher_cache=teacher-cache      # never loads the teacher

What is stored, per sample and only as far as the config's loss reads it:

- the teacher's top-k log-probabilities at the loss's logit positions and temperature, with
  their token ids and the log of the remaining (tail) mass. With the default `--top-k` of 64 a
  row takes 392 bytes, 0.61% of a dense fp16 row of a 32000-token vocabulary;
- the layer-0 text-after-image x vision attention block (fp16);
- the projector's vision tokens (fp16).

The logit term on top-k entries is defined in `alignkd.losses.topk`: the teacher's tail is one
bucket, each divergence is computed on k + 1 buckets, and with k equal to the vocabulary size it
equals the full term. The other terms are unchanged.

Safety. A cache records named fingerprint components (see `alignkd.cache.fingerprint`): the
tokenizer, template, system prompt, image preprocessing, max length, logit positions,
temperature, and the teacher's files, dtype and vision tokens. Each sample also stores a hash of
its token ids, labels and preprocessed image. A cache
that does not match the run is an error that names what changed. Shards are checked by size and
SHA-256 when first read; `alignkd cache-verify DIR` checks them all at once.

Partial caches. `--min-length N` caches only samples of at least N tokens, the authors' use for
long samples. Training then loads the teacher (teacher.path must be set), computes the other
samples live and reduces them to the same top-k form, so every row is distilled the same way.

Resuming. An interrupted `cache-teacher` continues where it stopped when run again with the
same arguments; it also rewrites shards that are missing or damaged.

Modules: `writer` (the command), `reader` (`CachedTeacher`, the training side), `format` (files
and manifest), `fingerprint`, `keys` (sample keys and sample hashes), `entries` (per-sample
outputs) and `assembly` (batch outputs in the live teacher's layout).
"""
