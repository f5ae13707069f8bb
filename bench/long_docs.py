"""The demo corpus (CPython's documentation) regrouped into long documents, for seq-512 benchmarks.

Examples are packed within one document, and the demo corpus's documents are short (~70 tokens),
so at seq 512 almost every position would be padding; joining `--join` consecutive documents
gives ~1-2k-token documents whose examples fill the sequence.

usage: python bench/long_docs.py OUT_DIR [--join 24]   (writes OUT_DIR/long-docs.jsonl)
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out_dir")
    p.add_argument("--join", type=int, default=24)
    args = p.parse_args(argv)
    from pretrain.prepare.demo_corpus import demo_documents

    os.makedirs(args.out_dir, exist_ok=True)
    group, n = [], 0
    with open(os.path.join(args.out_dir, "long-docs.jsonl"), "w", encoding="utf-8") as f:
        for doc in demo_documents():
            group.append(doc)
            if len(group) == args.join:
                f.write(json.dumps({"id": n, "text": "\n".join(group)}) + "\n")
                group, n = [], n + 1
        if group:
            f.write(json.dumps({"id": n, "text": "\n".join(group)}) + "\n")
            n += 1
    print(f"wrote {n} documents to {args.out_dir}/long-docs.jsonl")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
