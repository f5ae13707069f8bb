"""Loader throughput: tokens/s delivered into batches (ResumableLoader, 0/1/2 workers).

Usage: python bench/data_loader.py [prepared_dir]   (default: writes a synthetic directory)
Steady state: the clock starts after the first batch (worker start-up excluded).
To be merged into bench/data.py with the prepare benchmark.
"""
from __future__ import annotations

import itertools
import sys
import tempfile
import time

from pretrain.data import build_train_loader
from pretrain.data.config import DataConfig, ObjectiveConfig


def loader_throughput(prepared_dir: str, workers: int, batches: int = 300, max_seq_len: int = 128,
                      micro_batch_size: int = 32, masking: str = "token", sentence_task: str = "sop") -> float:
    """Real (non-pad) tokens per second yielded by one rank's training loader."""
    data = DataConfig(path=prepared_dir, max_seq_len=max_seq_len, micro_batch_size=micro_batch_size,
                      num_workers=workers)
    obj = ObjectiveConfig(masking=masking, sentence_task=sentence_task)
    it = iter(build_train_loader(data, obj, 0, 1))
    next(it)
    tokens, start = 0, time.perf_counter()
    for batch in itertools.islice(it, batches):
        tokens += int(batch["attention_mask"].sum())
    return tokens / (time.perf_counter() - start)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        root = argv[0]
    else:
        from pretrain.data.synthetic import write_prepared

        root = write_prepared(tempfile.mkdtemp(prefix="bench-data-"), {"train": 8, "valid": 1}, docs_per_shard=150)
    print("| workers | masking | sentence task | tokens/s |\n|---|---|---|---|")
    for masking, task in (("token", "sop"), ("whole_word", "sop"), ("span", "nsp")):
        for workers in (0, 1, 2):
            tps = loader_throughput(root, workers, masking=masking, sentence_task=task)
            print(f"| {workers} | {masking} | {task} | {tps:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
