"""Resumable streaming of prepared shards -> examples -> masked batches (see docs/data.md).

Names are imported lazily so `pretrain.data.errors` (looked up by launch/errors.py) does not
pull in torch and webdataset.
"""
_EXPORTS = {
    "build_train_loader": "pretrain.data.build",
    "build_eval_loader": "pretrain.data.build",
    "ResumableLoader": "pretrain.data.loader",
    "merge_cursors": "pretrain.data.loader",
    "cut_cursor": "pretrain.data.loader",
    "DataError": "pretrain.data.errors",
    "check_tokenizer": "pretrain.data.tokens",
    "check_vocab_size": "pretrain.data.tokens",
    "batch_examples": "pretrain.model.layout",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pretrain.data' has no attribute {name!r}")
