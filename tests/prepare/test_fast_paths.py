"""The hand-built shard bytes (npy headers, tar headers) equal what numpy/tarfile write."""
from __future__ import annotations

import io
import random
import tarfile

import numpy as np
import pytest

from pretrain import shardformat
from pretrain.prepare import writer


def test_fast_paths_are_active():
    # If these fail, the fallbacks are in use: output stays correct, but prepare is slower.
    assert shardformat._NPY_FAST
    assert writer.tar_header is writer._fast_header


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_npy_bytes_equal_np_save(dtype):
    rng = np.random.default_rng(0)
    for n in [0, 1, 2, 9, 10, 99, 100, 1000, 65536, 123457]:
        a = rng.integers(0, 60000, n).astype(dtype)
        buf = io.BytesIO()
        np.save(buf, a, allow_pickle=False)
        assert shardformat.npy_1d(a.tobytes(), a.dtype, n) == buf.getvalue()
        assert (np.load(io.BytesIO(shardformat.npy_1d(a.tobytes(), a.dtype, n))) == a).all()


def test_tar_header_equals_tarfile():
    rng = random.Random(0)
    for _ in range(5000):
        name = "d%012d.%s" % (rng.randrange(10**13), rng.choice(["ids.npy", "sents.npy"]))
        size = rng.randrange(min(10 ** rng.randrange(1, 11), 8**11))
        assert writer._fast_header(name, size) == writer._tarfile_header(name, size)
    long = "d" * 110 + "/x.npy"  # > 99 bytes: ustar prefix field, built by tarfile
    assert writer.tar_header(long, 5) == writer._tarfile_header(long, 5)


def test_written_tar_reads_back(tmp_path):
    from pretrain.prepare.encode import RECORD_HEADER

    recs = []
    for doc_id, n in [(3, 1), (17, 300), (10**12 + 5, 2)]:
        ids = shardformat.npy_1d(np.arange(n, dtype=np.uint16).tobytes(), np.dtype(np.uint16), n)
        ends = shardformat.npy_1d(np.array([n], np.int32).tobytes(), np.dtype(np.int32), 1)
        recs.append(RECORD_HEADER.pack(doc_id, 1, n, len(ids), len(ends)) + ids + ends)
    entry = writer._write_tar(str(tmp_path / "s.tar"), "train/s.tar", recs)
    assert entry["bytes"] == (tmp_path / "s.tar").stat().st_size and entry["tokens"] == 303
    with tarfile.open(tmp_path / "s.tar") as tar:
        names = tar.getnames()
        assert names[0] == "d000000000003.ids.npy" and len(names) == 6
        assert np.load(io.BytesIO(tar.extractfile(names[2]).read())).tolist() == list(range(300))


def test_sentence_candidate_regex_equals_its_plain_form():
    import re

    from pretrain.prepare.sentences import _CANDIDATE

    plain = re.compile(r"""([.!?]+|\u2026)(["'\u201d\u2019)\]]*)(\s+)(?=["'\u201c\u2018(\[]*[A-Z0-9\u00c0-\u00de])""")
    rng = random.Random(0)
    alphabet = list(".!?\u2026\"'\u201d\u2019)] ([\u201c\u2018Aa1\u00e9\n\xa0") + ["\u2026.", "..", " . "]
    spans = lambda r, t: [(m.span(1), m.span(2), m.span(3)) for m in r.finditer(t)]
    for _ in range(30000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(30)))
        assert spans(_CANDIDATE, text) == spans(plain, text), text
