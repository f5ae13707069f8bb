"""Real English text that exists offline on any machine with CPython, written as a small corpus.

Sources: `pydoc_data.topics` (the language reference prose) and the docstrings of the standard
library, read by parsing .py sources with `ast` - importing arbitrary stdlib modules has side
effects (antigravity opens a browser, `this` prints), parsing does not. One document per topic or
docstring. Files are written as .txt (blank-line separated), .jsonl and .jsonl.gz so the demo
exercises several readers. Nothing is committed to the repo; this regenerates it.

CLI: ``python -m pretrain.prepare.demo_corpus <out_dir> [--max-mb N] [--copies K]``
"""
from __future__ import annotations

import argparse
import ast
import gzip
import json
import os
import re
import sysconfig
import warnings
from typing import Iterator

_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__"}  # tests: slow, terse


def _clean(text: str) -> str:
    """Docstring -> paragraph text: dedent, drop doctest/code lines, join wrapped lines per paragraph."""
    paras = []
    for para in re.split(r"\n\s*\n", text):
        lines = [ln.strip() for ln in para.strip().splitlines()]
        if not lines or any(ln.startswith((">>>", "...", "$ ")) for ln in lines):
            continue
        paras.append(" ".join(ln for ln in lines if ln))
    return "\n".join(p for p in paras if len(p) > 1)


def topic_documents() -> Iterator[str]:
    from pydoc_data.topics import topics

    for key in sorted(topics):
        text = _clean(topics[key])
        if text:
            yield text


def docstrings(root: str, min_chars: int = 40) -> Iterator[str]:
    """Cleaned docstrings (modules, classes, functions) of the .py files under `root`, in sorted
    order, read with ast (no imports); test, tool and hidden directories skipped."""
    for dirpath, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(names):
            if not name.endswith(".py"):
                continue
            try:
                with open(os.path.join(dirpath, name), encoding="utf-8") as f:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        tree = ast.parse(f.read())
            except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc and len(doc) >= min_chars:  # _clean only shortens: skip it for short ones
                        text = _clean(doc)
                        if len(text) >= min_chars:
                            yield text


def stdlib_docstring_documents() -> Iterator[str]:
    yield from docstrings(sysconfig.get_paths()["stdlib"])


def demo_documents() -> Iterator[str]:
    yield from topic_documents()
    yield from stdlib_docstring_documents()


def write_demo_corpus(out_dir: str, max_bytes: int | None = None, copies: int = 1) -> list[str]:
    """Write the demo corpus (at most `max_bytes` of text per copy) `copies` times; returns the files.

    Documents rotate over three files: text (one document per blank-line-separated block, the
    document's paragraphs on consecutive lines), JSONL and gzipped JSONL. `copies` > 1 repeats the
    corpus in further file sets (for scaling benchmarks), so the content is deterministic.
    """
    os.makedirs(out_dir, exist_ok=True)
    docs = []
    size = 0
    for doc in demo_documents():
        n = len(doc.encode("utf-8"))
        if max_bytes is not None and size + n > max_bytes:
            break
        docs.append(doc)
        size += n
    paths = []
    for c in range(copies):
        suffix = "" if copies == 1 else f"-{c}"
        txt = os.path.join(out_dir, f"demo-text{suffix}.txt")
        jsonl = os.path.join(out_dir, f"demo-docs{suffix}.jsonl")
        gz = os.path.join(out_dir, f"demo-docs{suffix}.jsonl.gz")
        with open(txt, "w", encoding="utf-8") as ft, open(jsonl, "w", encoding="utf-8") as fj, \
                gzip.open(gz, "wt", encoding="utf-8", compresslevel=1) as fg:
            for i, doc in enumerate(docs):
                if i % 3 == 0:
                    ft.write(doc + "\n\n")
                else:
                    (fj if i % 3 == 1 else fg).write(json.dumps({"id": i, "text": doc}) + "\n")
        paths += [txt, jsonl, gz]
    return paths


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pretrain.prepare.demo_corpus", description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--max-mb", type=float, default=None, help="cap on text per copy (default: everything)")
    p.add_argument("--copies", type=int, default=1, help="write the corpus K times (scaling benchmarks)")
    a = p.parse_args(argv)
    paths = write_demo_corpus(a.out_dir, None if a.max_mb is None else int(a.max_mb * 1e6), a.copies)
    total = sum(os.path.getsize(x) for x in paths)
    print(f"wrote {len(paths)} files, {total / 1e6:.1f} MB on disk, to {a.out_dir}")


if __name__ == "__main__":
    main()
