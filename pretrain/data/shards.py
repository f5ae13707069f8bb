"""Which shards a split reads: the manifest's list, or a user override of URLs.

Override syntax (`DataConfig.train_urls` / `valid_urls`): one string, or a list of strings;
a string may hold several specs separated by ``::`` (webdataset's convention, since `pipe:`
commands contain spaces). Each spec is brace-expanded (``shard-{000000..000009}.tar``); a spec
with glob characters and no ``pipe:`` prefix is globbed (sorted). Plain paths and
``pipe:<command>`` URLs are passed to webdataset as they are.

Document counts: the plan uses a shard's document count only to avoid empty work items when
shards are split into strided pieces. Counts come from the manifest (matched by absolute path);
override URLs that are not in the manifest (e.g. `pipe:` URLs) get ``None`` = unknown and are
planned without a count (never counted at plan time: that would read every shard once per
rank). An unknown count is harmless: an empty piece only costs opening the shard.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import braceexpand

from pretrain.data.errors import DataError
from pretrain.shardformat import Manifest

_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class ShardList:
    urls: tuple[str, ...]
    documents: tuple[Optional[int], ...]   # None = unknown (override URL not in the manifest)

    def fingerprint(self) -> str:
        """Identifies the shard list in a cursor; a resumed run must read the same shards."""
        return hashlib.sha256(json.dumps(list(self.urls)).encode()).hexdigest()[:16]

    def count(self, url: str) -> Optional[int]:
        return self._counts.get(url)

    @property
    def _counts(self) -> dict:
        return dict(zip(self.urls, self.documents))


def expand_urls(spec: Union[str, Sequence[str]]) -> list[str]:
    parts = [spec] if isinstance(spec, str) else list(spec)
    specs = [p.strip() for part in parts for p in str(part).split("::") if p.strip()]
    urls: list[str] = []
    for s in specs:
        for url in braceexpand.braceexpand(s):
            if not url.startswith("pipe:") and _GLOB_CHARS & set(url):
                found = sorted(glob.glob(os.path.expanduser(url)))
                if not found:
                    raise DataError(f"shard pattern {url!r} matches no files")
                urls.extend(found)
            else:
                urls.append(url)
    if not urls:
        raise DataError(f"shard URL override {spec!r} names no shards")
    return urls


def resolve_shards(manifest: Manifest, split: str, override=None) -> ShardList:
    """The split's shards (manifest order) or the override's, with known document counts."""
    known = {os.path.abspath(u): n for u, n in zip(manifest.shard_urls(split), manifest.shard_documents(split))}
    if override is None:
        urls = manifest.shard_urls(split)
    else:
        urls = expand_urls(override)
    counts = []
    for u in urls:
        if not u.startswith("pipe:") and "://" not in u and not os.path.exists(u):
            raise DataError(f"shard {u} does not exist")
        counts.append(None if u.startswith("pipe:") else known.get(os.path.abspath(u)))
    if not urls:
        raise DataError(f"{manifest.root}/manifest.json: split {split!r} has no shards")
    return ShardList(tuple(urls), tuple(counts))
