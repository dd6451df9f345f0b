"""Training data: LLaVA-format files, chat templates, labels, images, checks and batching.

- `records`: lazy reading of JSON and JSON Lines data files.
- `conversation`: validation of one record into user and assistant turns.
- `templates`: the chat template registry (`plain`, `v1`, `llama_2`).
- `tokenization`: token ids and labels from the real token sequence; generation prompts.
- `images`: image file checks, decoding to RGB, and preprocessing.
- `config`, `preflight`, `report`: the data config, the pre-flight check and its report.
- `dataset`, `collator`, `sampler`: `prepare_dataset`, batching and grouped sampling.

Import the submodules directly; this package imports nothing so that the command line stays fast.
"""
