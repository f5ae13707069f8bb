"""Peak memory of prepare does not grow with corpus size (checked on 1x vs 4x the corpus)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Python-heap peak of the main process (tracemalloc): what the reader, the ordered task queue, the
# bucket spill and the shard writer hold. Buffers are set small so holding the corpus would show.
SCRIPT = textwrap.dedent("""
    import json, sys, tracemalloc
    from pretrain.prepare.config import validate_config
    from pretrain.prepare.pipeline import run
    inputs, out, tok = sys.argv[1].split(","), sys.argv[2], sys.argv[3]
    cfg = validate_config({"input": inputs, "output": out, "num_workers": 1, "progress": False,
                           "validation_fraction": 0.0, "tokenizer": {"path": tok},
                           "shard_size_bytes": 256 * 1024, "chunk_bytes": 16 * 1024,
                           "spill_buffer_bytes": 64 * 1024})
    import webdataset  # imported before measuring: a one-off cost, not corpus-dependent
    tracemalloc.start()
    run(cfg, echo=lambda line: None)
    print(json.dumps({"peak": tracemalloc.get_traced_memory()[1]}))
""")


def _peak(inputs, out, tok) -> int:
    r = subprocess.run([sys.executable, "-c", SCRIPT, ",".join(map(str, inputs)), str(out), tok],
                       env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True, timeout=300, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])["peak"]


def test_peak_memory_independent_of_corpus_size(demo_corpus, prepared_demo, tmp_path):
    sources = [os.path.join(demo_corpus, n) for n in ("demo-docs.jsonl", "demo-text.txt")]
    copies = []
    for i in range(4):
        for src in sources:
            dst = tmp_path / f"copy{i}-{os.path.basename(src)}"
            dst.write_bytes(open(src, "rb").read())
            copies.append(dst)
    tok = os.path.join(prepared_demo, "tokenizer.json")
    one = _peak(copies[:2], tmp_path / "one", tok)
    four = _peak(copies, tmp_path / "four", tok)
    corpus = sum(os.path.getsize(p) for p in sources)
    # Holding the corpus (or its tokens) would add >= 3x corpus bytes at 4x; allow noise well below that.
    assert four - one < 0.5 * corpus, (one, four, corpus)
    print(f"peak python heap: 1x {one / 1e6:.2f} MB, 4x {four / 1e6:.2f} MB (corpus 1x {corpus / 1e6:.2f} MB)")
