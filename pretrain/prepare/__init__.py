"""Raw corpus -> WebDataset shards + manifest + tokenizer (`pretrain-prepare`).

Public entry points: `PrepareConfig`/`validate_config` (config.py), `run` (pipeline.py),
`write_demo_corpus` (demo_corpus.py).
"""
