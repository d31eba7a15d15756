"""Full-text sparse vectors: tokenization (English and jieba-segmented Chinese), stable term indices,
BM25 saturation on the document side, 1.0 on the query side, segment keywords."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from shared.knowledge import sparse
from shared.knowledge.sparse import encode_document, encode_query, keywords, term_index, tokenize

ROOT = Path(__file__).resolve().parents[2]


def test_english_words_lowercased_split_and_stopwords_dropped() -> None:
    tokens = tokenize("The Quick brown fox: how do I use GPT-4o with Qdrant's API? a b x 7")
    assert tokens == ["quick", "brown", "fox", "use", "gpt", "4o", "qdrant", "api"]
    # NFKC folds full-width letters and ligatures; accents stay.
    assert tokenize("ＰＬＥＸＵＳ ﬁle Café") == ["plexus", "file", "café"]


def test_chinese_is_segmented_with_search_subwords() -> None:
    tokens = tokenize("我们在北京大学学习人工智能")
    for word in ("北京", "大学", "北京大学", "学习", "人工智能"):
        assert word in tokens
    assert "我们" not in tokens and "在" not in tokens  # stopwords
    # Mixed scripts: latin words and CJK runs each go their own way.
    assert tokenize("Plexus支持OpenAI的API检索") == ["plexus", "支持", "openai", "api", "检索"]


def test_stopword_lists_are_substantial() -> None:
    assert len(sparse.STOPWORDS_EN) >= 100 and len(sparse.STOPWORDS_ZH) >= 100
    assert tokenize("the of and is to in 的 了 是 和") == []
    assert tokenize("") == [] and encode_document("") == encode_query("") == sparse.SparseVector([], [])


def test_term_index_is_blake2b_31_bits() -> None:
    expected = int.from_bytes(hashlib.blake2b(b"qdrant", digest_size=4).digest(), "big") & 0x7FFFFFFF
    assert term_index("qdrant") == expected
    assert encode_query("Qdrant").indices == [expected]
    zh = int.from_bytes(hashlib.blake2b("北京".encode(), digest_size=4).digest(), "big") & 0x7FFFFFFF
    assert zh in encode_query("北京").indices
    assert all(0 <= term_index(t) < 2**31 for t in ("a", "北京大学", "x" * 1000))


def test_encoding_is_identical_in_another_process() -> None:
    text = "Hybrid search: 北京大学 and Qdrant sparse vectors, sparse again."
    code = ("import sys; from shared.knowledge.sparse import encode_document as e; "
            "v = e(sys.argv[1]); print(v.indices); print(v.values)")
    out = subprocess.run([sys.executable, "-c", code, text], cwd=ROOT, capture_output=True, text=True,
                         check=True, env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"}).stdout.split("\n")
    here = encode_document(text)
    assert out[0] == str(here.indices) and out[1] == str(here.values)


def test_document_values_are_bm25_saturated() -> None:
    one = encode_document("alpha")
    ten = encode_document(" ".join(["alpha"] * 10))
    assert len(one.indices) == len(ten.indices) == 1
    assert ten.values[0] > one.values[0]
    assert ten.values[0] < 10 * one.values[0]
    assert ten.values[0] < sparse.K1 + 1  # the saturation ceiling
    # Exact formula for a 1-token document: tf=1, len=1.
    norm = sparse.K1 * (1 - sparse.B + sparse.B * 1 / sparse.AVGDL)
    assert abs(one.values[0] - (sparse.K1 + 1) / (1 + norm)) < 1e-12
    # Longer documents weigh the same term frequency less.
    long = encode_document("alpha " + " ".join(f"filler{i}" for i in range(400)))
    assert long.values[long.indices.index(one.indices[0])] < one.values[0]


def test_indices_sorted_unique_and_query_values_one() -> None:
    doc = encode_document("zeta beta alpha beta gamma alpha beta")
    assert doc.indices == sorted(set(doc.indices)) and len(doc.indices) == 4
    q = encode_query("beta alpha beta 北京大学")
    assert q.indices == sorted(set(q.indices)) and set(q.values) == {1.0}
    assert len(q.indices) == len(set(tokenize("beta alpha beta 北京大学")))


def test_keywords_by_frequency_then_first_occurrence() -> None:
    text = "cherry apple banana apple the banana apple date cherry elder"
    assert keywords(text, n=4) == ["apple", "cherry", "banana", "date"]
    assert keywords(text, n=0) == []
    # Chinese keywords are whole words, not search sub-words.
    zh = keywords("北京大学的人工智能研究。北京大学很有名。")
    assert zh[0] == "北京大学" and "人工智能" in zh and "北京" not in zh
