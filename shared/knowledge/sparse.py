"""Full-text search as sparse vectors: the document side carries BM25 term-frequency saturation, the
query side carries 1.0 per term, and the vector store applies IDF (its sparse vectors use the IDF
modifier), so the dot product is BM25.

Tokens: NFKC, lowercase; runs of letters/digits (non-CJK) are words, split on everything else
(``gpt-4o`` gives ``gpt`` and ``4o``), one-character words dropped; CJK runs are segmented with jieba
in search mode (``北京大学`` gives ``北京``, ``大学`` and ``北京大学``, so a query for either matches);
English and Chinese stopwords dropped.

Term index: the first 4 bytes of ``blake2b(token.encode("utf-8"), digest_size=4)`` read big-endian,
masked to 31 bits: stable across processes, machines and Python versions (never ``hash()``). Two
tokens that collide share an index (their values are summed).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import threading
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

from shared.knowledge.vectors import SparseVector

K1 = 1.2
B = 0.75
# Average document length in tokens, for BM25's length normalisation. The engine does not know the
# corpus's real average, so a constant stands in: 200 tokens is about a 1,000-character chunk
# (Dify's default segment is up to 500-1,000 tokens of text; after stopwords fewer remain).
AVGDL = 200.0

# CJK ideographs (unified, extension A, compatibility, extensions B and later).
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_TOKEN_RE = re.compile(f"([{_CJK}]+)|([^\\W_{_CJK}]+)")



def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


STOPWORDS_EN = _words("""
a about above after again against all am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have
having he her here hers herself him himself his how i if in into is it its itself just me more most my
myself no nor not now of off on once only or other our ours ourselves out over own same she should so
some such than that the their theirs them themselves then there these they this those through to too
under until up very was we were what when where which while who whom why will with would you your
yours yourself yourselves also let may might must shall us ve ll re don doesn didn isn aren wasn weren
""")

STOPWORDS_ZH = _words("""
的 了 在 是 我 有 和 就 不 人 都 一 一个 上 也 很 到 说 要 去 你 会 着 没有 看 好 自己 这 那 他 她 它 们
我们 你们 他们 她们 它们 这个 那个 这些 那些 这样 那样 之 与 及 其 或 而 并 但 但是 而且 因为 所以 如果
虽然 然后 可以 已经 还 又 把 被 让 给 从 对 向 于 以 为 为了 由 比 等 等等 吗 呢 吧 啊 呀 哦 嗯 么 什么
怎么 怎样 哪 哪里 谁 这里 那里 此 该 每 各 些 中 地 得 所 过 来 将 能 没 只 再 最 更 即 则 啦
以及 并且 或者 还是 就是 不是 因此 如何 一些 这种 那种 其中 其他 关于 通过 对于
""")

STOPWORDS = STOPWORDS_EN | STOPWORDS_ZH

_jieba: Any = None
_jieba_lock = threading.Lock()


def _segmenter() -> Any:
    """jieba, initialised once per process: quiet, its dictionary cache in a private temp dir."""
    global _jieba
    if _jieba is None:
        with _jieba_lock:
            if _jieba is None:
                import jieba

                jieba.setLogLevel(logging.WARNING)
                logging.getLogger("jieba").setLevel(logging.WARNING)
                # jieba unpickles its cache: keep it in a directory only this user can write.
                cache = Path(tempfile.gettempdir()) / f"plexus-jieba-{os.getuid() if hasattr(os, 'getuid') else 0}"
                try:
                    cache.mkdir(mode=0o700, exist_ok=True)
                    jieba.dt.tmp_dir = str(cache)
                except OSError:
                    jieba.dt.tmp_dir = tempfile.mkdtemp(prefix="plexus-jieba-")
                jieba.initialize()
                _jieba = jieba
    return _jieba


def _tokens(text: str, search: bool) -> list[str]:
    text = unicodedata.normalize("NFKC", text or "").lower()
    out: list[str] = []
    for m in _TOKEN_RE.finditer(text):
        cjk, word = m.group(1), m.group(2)
        if word is not None:
            if len(word) > 1 and word not in STOPWORDS:
                out.append(word)
            continue
        jieba = _segmenter()
        pieces = jieba.lcut_for_search(cjk) if search else jieba.lcut(cjk)
        out.extend(p for p in pieces if p.strip() and p not in STOPWORDS)
    return out


def tokenize(text: str) -> list[str]:
    """Search tokens of ``text``, in order (CJK words followed by their sub-words)."""
    return _tokens(text, search=True)


def term_index(token: str) -> int:
    """The stable 31-bit index of a token."""
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=4).digest(), "big") & 0x7FFFFFFF


def _vector(weights: dict[int, float]) -> SparseVector:
    indices = sorted(weights)
    return SparseVector(indices=indices, values=[weights[i] for i in indices])


def encode_document(text: str) -> SparseVector:
    """BM25 term-frequency saturation per term: ``tf*(k1+1) / (tf + k1*(1 - b + b*len/avgdl))``."""
    tokens = tokenize(text)
    norm = K1 * (1 - B + B * len(tokens) / AVGDL)
    weights: dict[int, float] = {}
    for token, tf in Counter(tokens).items():
        idx = term_index(token)
        weights[idx] = weights.get(idx, 0.0) + tf * (K1 + 1) / (tf + norm)
    return _vector(weights)


def encode_query(text: str) -> SparseVector:
    """1.0 per distinct term (the engine's IDF does the weighting)."""
    return _vector({term_index(t): 1.0 for t in tokenize(text)})


def keywords(text: str, n: int = 10) -> list[str]:
    """The ``n`` most frequent terms, ties by first occurrence. CJK is segmented in jieba's default
    mode here (whole words, not search sub-words, which would fill the list with fragments)."""
    counts = Counter(_tokens(text, search=False))  # keeps first-occurrence order; sorted() is stable
    return sorted(counts, key=lambda t: -counts[t])[:max(0, n)]
