"""Small labelled tasks built from real text that exists offline (CPython's docs and docstrings,
Debian's /usr/share/common-licenses), for the demo, the tests and bench/finetune.py. Nothing is
committed; everything is regenerated, deterministically from a seed.

Tasks (a model that has learned nothing scores at chance on each: labels are balanced):
- source      classification: is a sentence from the language reference, a stdlib docstring or a licence?
- topic       classification: which stdlib package does a docstring sentence document?
- pair        pair_classification: do two sentences come from the same source (1) or not (0)?
- regression  regression: the share of code-like words (identifiers, keywords) in a sentence
- ner         token_classification: BIO tags of code-like word runs (B-CODE, I-CODE, O)

CLI: ``python -m pretrain.finetune.demo_task <out_dir> --task source --format tsv [--train N --validation N]``
writes train/validation/test files in the chosen format (tsv, csv, jsonl, parquet; ner: conll, jsonl).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import sysconfig
from pathlib import Path
from typing import Iterator

from pretrain.prepare.demo_corpus import docstrings, stdlib_docstring_documents, topic_documents
from pretrain.prepare.sentences import split_sentences

LICENSES = "/usr/share/common-licenses"
TASKS = ("source", "topic", "pair", "regression", "ner")
TOPIC_PACKAGES = ("asyncio", "email", "multiprocessing", "unittest", "xml", "tkinter")
_CONSTANTS = ("True", "False", "None")
_CODE = re.compile(r"^[A-Za-z_][\w.]*(\(\))?$")


def _sentences(docs: Iterator[str], limit: int, min_words: int = 5, max_words: int = 40) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for doc in docs:
        for s in split_sentences(doc):
            words = s.split()
            if min_words <= len(words) <= max_words and s not in seen:
                seen.add(s)
                out.append(" ".join(words))
                if len(out) >= limit:
                    return out
    return out


def license_documents() -> Iterator[str]:
    if not os.path.isdir(LICENSES):
        return
    seen: set[str] = set()
    for name in sorted(os.listdir(LICENSES)):
        path = os.path.realpath(os.path.join(LICENSES, name))
        if path in seen or not os.path.isfile(path):
            continue
        seen.add(path)
        with open(path, encoding="utf-8", errors="replace") as f:
            for para in re.split(r"\n\s*\n", f.read()):
                text = " ".join(para.split())
                if len(text) > 40:
                    yield text


def package_docstrings(package: str) -> Iterator[str]:
    """Docstrings of one stdlib package, read with ast (no imports, no side effects)."""
    yield from docstrings(os.path.join(sysconfig.get_paths()["stdlib"], package), min_chars=30)


def is_code_word(word: str) -> bool:
    w = word.strip(",;:'\"`")
    return bool(_CODE.match(w)) and ("_" in w or w.endswith("()") or "." in w.strip(".") or w in _CONSTANTS)


def _balanced(groups: dict[str, list[str]], per_class: int, rng: random.Random) -> list[tuple[str, str]]:
    n = min(per_class, *(len(v) for v in groups.values()))
    rows = [(s, label) for label, sents in groups.items() for s in rng.sample(sents, n)]
    rng.shuffle(rows)
    return rows


def build_rows(task: str, total: int, seed: int = 0, sources: tuple[str, ...] | None = None) -> list[dict]:
    """`total` rows (about; balanced classes) of one task as dicts: text[, text_pair], label.
    `sources` restricts source/pair to some of reference, docstring, license."""
    rng = random.Random(f"{task}-{seed}")
    if task in ("source", "pair"):
        pool = 2 * total
        groups = {"reference": _sentences(topic_documents(), pool), "docstring": _sentences(stdlib_docstring_documents(), pool)}
        lic = _sentences(license_documents(), pool)
        if len(lic) >= 50:
            groups["license"] = lic
        if sources:
            missing = [x for x in sources if x not in groups]
            if missing:
                raise ValueError(f"demo task sources {missing} are not available here (have {list(groups)})")
            groups = {k: groups[k] for k in sources}
        if task == "source":
            return [{"text": s, "label": lab} for s, lab in _balanced(groups, total // len(groups) + 1, rng)][:total]
        labels = list(groups)
        rows = []
        for k in range(total):
            a_label = rng.choice(labels)
            b_label = a_label if k % 2 == 0 else rng.choice([x for x in labels if x != a_label])
            rows.append({"text": rng.choice(groups[a_label]), "text_pair": rng.choice(groups[b_label]),
                         "label": int(a_label == b_label)})
        rng.shuffle(rows)
        return rows
    if task == "topic":
        groups = {p: _sentences(package_docstrings(p), total) for p in TOPIC_PACKAGES}
        groups = {p: s for p, s in groups.items() if len(s) >= 20}
        return [{"text": s, "label": lab} for s, lab in _balanced(groups, total // len(groups) + 1, rng)][:total]
    sents = _sentences(stdlib_docstring_documents(), (12 if task == "ner" else 3) * total)
    rng.shuffle(sents)
    if task == "regression":
        return [{"text": s, "label": round(sum(map(is_code_word, s.split())) / len(s.split()), 4)} for s in sents[:total]]
    if task == "ner":  # sentences with at least one code-like word (else nearly every tag is O)
        rows = []
        for s in [s for s in sents if any(map(is_code_word, s.split()))][:total]:
            words = s.split()
            tags, previous = [], False
            for w in words:
                code = is_code_word(w)
                tags.append(("I-CODE" if previous else "B-CODE") if code else "O")
                previous = code
            rows.append({"tokens": words, "tags": tags})
        return rows
    raise ValueError(f"unknown demo task {task!r}; expected one of {', '.join(TASKS)}")


def write_rows(rows: list[dict], path: str | Path, fmt: str) -> str:
    """One split in `fmt`: tsv (GLUE layout: header, tabs, no quoting), csv, jsonl, parquet, conll."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "conll":
        with open(path, "w", encoding="utf-8") as f:
            for r in rows:
                f.write("".join(f"{w}\t{t}\n" for w, t in zip(r["tokens"], r["tags"])) + "\n")
    elif fmt == "jsonl":
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), str(path))
    elif fmt in ("tsv", "csv"):
        keys = list(rows[0])
        with open(path, "w", encoding="utf-8", newline="") as f:
            if fmt == "tsv":
                f.write("\t".join(keys) + "\n")
                f.writelines("\t".join(str(r[k]).replace("\t", " ") for k in keys) + "\n" for r in rows)
            else:
                w = csv.writer(f)
                w.writerow(keys)
                w.writerows([r[k] for k in keys] for r in rows)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return str(path)


def write_task(out_dir: str | Path, task: str, fmt: str, train: int, validation: int, test: int = 0,
               seed: int = 0, sources: tuple[str, ...] | None = None) -> dict[str, str]:
    """Write train/validation[/test] files; returns {split: path}. Splits never share a row."""
    rows = build_rows(task, train + validation + test, seed, sources)
    if len(rows) < train + validation + test:  # never a silently empty or short split
        raise ValueError(f"demo task {task!r} has {len(rows)} rows on this machine; asked for train={train} + "
                         f"validation={validation} + test={test}")
    ext = {"conll": "conll"}.get(fmt, fmt)
    splits = {"train": rows[:train], "validation": rows[train:train + validation]}
    if test:
        splits["test"] = rows[train + validation:train + validation + test]
    return {name: write_rows(part, Path(out_dir) / f"{name}.{ext}", fmt) for name, part in splits.items() if part}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--task", choices=TASKS, default="source")
    p.add_argument("--format", default="tsv", choices=("tsv", "csv", "jsonl", "parquet", "conll"))
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--validation", type=int, default=500)
    p.add_argument("--test", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sources", default=None, help="source/pair: comma-separated subset of reference,docstring,license")
    a = p.parse_args(argv)
    sources = tuple(a.sources.split(",")) if a.sources else None
    try:
        files = write_task(a.out_dir, a.task, a.format, a.train, a.validation, a.test, a.seed, sources)
    except ValueError as e:  # too few rows, unknown source or format: one line, exit 2
        p.error(str(e))
    for split, path in files.items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
