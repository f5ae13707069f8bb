"""Packed vs unpacked rows on short documents: real tokens/s and fill (results: docs/benchmarks.md).

    .venv/bin/python bench/packing.py                       # the demo corpus, bert-mini + modernbert-mini
    .venv/bin/python bench/packing.py --text my.txt         # any text file, cut the same way
    .venv/bin/python bench/packing.py --steps 60 --models bert-mini

Corpus: the demo corpus's text (pretrain/prepare/demo_corpus.py: Python's docs and docstrings) or
a given text file, split into sentences and cut into documents of 1-3 sentences (deterministic),
a WordPiece tokenizer trained on it, written as prepared shards (pretrain/shardformat.py).
For each model preset and packing on/off: our PretrainingModel (the preset's shape, vocab from
the tokenizer) trained by a plain torch AdamW loop (no DeepSpeed: this measures what packing does
to the model's work, not the engine) on batches from our loader (`build_train_loader`, MLM only,
the same micro-batch shape: micro_batch x max_seq_len), 1 process, the machine's threads, bf16
autocast where the CPU computes bf16 natively (AVX512-BF16/AMX), else fp32. Reported: fill (real
tokens / positions), real tokens/s and examples/s as the median of the per-step rates over the
second half of the steps, and the ratio packed / unpacked measured in the same run, modes
interleaved (A B A B ...) per model so drift on a shared machine hits both alike.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def sentences_from(text_file: str | None, limit_mb: float) -> list[str]:
    if text_file:
        text = Path(text_file).read_text(encoding="utf-8", errors="replace")
        paragraphs = re.split(r"\n\s*\n", text)
    else:
        from pretrain.prepare.demo_corpus import demo_documents

        paragraphs, size = [], 0
        for doc in demo_documents():
            paragraphs.append(doc)
            size += len(doc)
            if size > limit_mb * 2**20:
                break
    out = []
    for para in paragraphs:
        para = re.sub(r"\s+", " ", para).strip()
        out.extend(s for s in _SENTENCE.split(para) if len(s.split()) >= 3)
    if len(out) < 100:
        raise SystemExit(f"{text_file or 'demo corpus'}: only {len(out)} sentences of >= 3 words; need >= 100")
    return out


def write_short_documents(root: str, sentences: list[str], vocab_size: int = 8000, shards: int = 8) -> str:
    """Documents of 1, 2 or 3 sentences (cycling), tokenizer trained on the text, train split only."""
    import json

    import webdataset as wds

    from pretrain.data.synthetic import train_tokenizer
    from pretrain.shardformat import MANIFEST_FORMAT, SPECIAL_TOKENS, encode_document, tokenizer_fingerprint

    tok = train_tokenizer(sentences, vocab_size)
    tok.save(os.path.join(root, "tokenizer.json"))
    encoded = [e.ids for e in tok.encode_batch(sentences, add_special_tokens=False)]
    docs, k, i = [], 0, 0
    while i < len(encoded):
        n = 1 + k % 3
        docs.append([s for s in encoded[i:i + n] if s])
        i, k = i + n, k + 1
    docs = [d for d in docs if d]
    os.makedirs(os.path.join(root, "train"), exist_ok=True)
    infos = []
    per = -(-len(docs) // shards)
    for s in range(shards):
        name = f"train/shard-{s:06d}.tar"
        part = docs[s * per:(s + 1) * per]
        with wds.TarWriter(os.path.join(root, name)) as w:
            for j, d in enumerate(part):
                w.write(encode_document(s * per + j, d, tok.get_vocab_size()))
        infos.append({"name": name, "documents": len(part), "sentences": sum(map(len, part)),
                      "tokens": sum(len(x) for d in part for x in d), "bytes": os.path.getsize(os.path.join(root, name))})
    vocab = tok.get_vocab()
    manifest = {
        "format": MANIFEST_FORMAT,
        "tokenizer": {"file": "tokenizer.json", "sha256": tokenizer_fingerprint(tok), "vocab_size": tok.get_vocab_size(),
                      "lowercase": True, "special_tokens": {t: vocab[t] for t in SPECIAL_TOKENS}},
        "splits": {"train": {"shards": infos, "documents": len(docs), "sentences": sum(i["sentences"] for i in infos),
                             "tokens": sum(i["tokens"] for i in infos), "skipped": {}}},
        "inputs": [], "config": {"bench": "packing"}, "config_hash": "bench-packing",
    }
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    return root


def cpu_line() -> str:
    from parallel.device import cpu_features

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {cpu_features()}"


class Run:
    """One (model, packing) configuration: its model, optimizer, loader iterator and rates."""

    def __init__(self, preset: str, packing: bool, data_dir: str, args, dtype):
        import torch
        from omegaconf import OmegaConf

        from pretrain.data import build_train_loader
        from pretrain.data.config import DataConfig, ObjectiveConfig
        from pretrain.model import ModelConfig, build_model
        from pretrain.shardformat import load_manifest

        model_cfg = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "model" / f"{preset}.yaml"), resolve=True)
        model_cfg.update(vocab_size=load_manifest(data_dir).vocab_size, sentence_head="none", unpad=args.unpad,
                         max_position_embeddings=max(args.seq, model_cfg.get("max_position_embeddings", 0)))
        torch.manual_seed(0)
        self.model = build_model(ModelConfig(**model_cfg)).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=5e-4, foreach=False)
        data = DataConfig(path=data_dir, max_seq_len=args.seq, micro_batch_size=args.batch, num_workers=1,
                          packing=packing)
        self.batches = iter(build_train_loader(data, ObjectiveConfig(sentence_task="none", mlm_probability=0.3), 0, 1))
        self.name, self.packing, self.dtype = preset, packing, dtype
        self.tokens, self.examples, self.seconds, self.positions = [], [], [], 0

    def step(self) -> None:
        import torch

        from pretrain.data.config import ObjectiveConfig
        from pretrain.model.layout import batch_examples
        from pretrain.model.pretraining import MODEL_INPUTS
        from pretrain.objectives import pretraining_loss

        batch = next(self.batches)
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=self.dtype, enabled=self.dtype != torch.float32):
            out = self.model(**{k: batch[k] for k in MODEL_INPUTS if k in batch})
            n = float((batch["labels"] != -100).sum())
            loss, _ = pretraining_loss(out, batch, n, ObjectiveConfig(sentence_task="none"))
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.seconds.append(time.perf_counter() - t0)
        self.tokens.append(int(batch["attention_mask"].sum()))
        self.examples.append(batch_examples(batch))
        self.positions += batch["input_ids"].numel()

    def result(self) -> dict:
        half = len(self.seconds) // 2
        rate = lambda xs: statistics.median(x / s for x, s in zip(xs[half:], self.seconds[half:]))  # noqa: E731
        return {"fill": sum(self.tokens) / self.positions, "tokens_per_s": rate(self.tokens),
                "examples_per_s": rate(self.examples), "step_s": statistics.median(self.seconds[half:])}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text", help="a text file to cut into 1-3 sentence documents (default: the demo corpus)")
    ap.add_argument("--corpus-mb", type=float, default=4.0, help="demo corpus text to read (MB)")
    ap.add_argument("--models", default="bert-mini,modernbert-mini")
    ap.add_argument("--steps", type=int, default=60, help="steps per configuration (median of the second half)")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    ap.add_argument("--unpad", choices=["true", "false"], default="true",
                    help="model.unpad: true (the default) computes Linears on real tokens only, so packing "
                         "saves less there than on padded rows")
    args = ap.parse_args(argv)
    args.unpad = args.unpad == "true"

    import torch

    from parallel.precision import resolve_precision

    # precision=auto as the trainer resolves it on this CPU (flags + a measured bf16 probe)
    bf16 = args.precision == "bf16" or (args.precision == "auto"
                                        and resolve_precision("auto", torch.device("cpu")).dtype == "bf16")
    dtype = torch.bfloat16 if bf16 else torch.float32
    print(f"# {cpu_line()}; torch threads {torch.get_num_threads()}; {'bf16 autocast' if bf16 else 'fp32'}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = write_short_documents(tmp, sentences_from(args.text, args.corpus_mb))
        print(f"# corpus: {args.text or 'demo corpus'}; seq {args.seq}, micro-batch {args.batch}, "
              f"{args.steps} steps each (median of the second half), MLM only, model.unpad={args.unpad}", flush=True)
        print("| model | packing | fill | real tokens/s | examples/s | step s | tokens/s vs unpacked |")
        print("|---|---|---|---|---|---|---|")
        for preset in args.models.split(","):
            runs = [Run(preset, p, data_dir, args, dtype) for p in (False, True)]
            for _ in range(args.steps):
                for r in runs:
                    r.step()
            base = runs[0].result()
            for r in runs:
                res = r.result()
                print(f"| {preset} | {'on' if r.packing else 'off'} | {res['fill']:.3f} | {res['tokens_per_s']:,.0f} | "
                      f"{res['examples_per_s']:,.1f} | {res['step_s']:.3f} | "
                      f"{res['tokens_per_s'] / base['tokens_per_s']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
