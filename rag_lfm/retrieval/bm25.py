"""BM25 keyword search with bm25s, persisted beside a knowledge base and kept in sync with it.

Dense embeddings blur exact keywords (names, codes, rare terms); BM25 keeps them. The index
lives in ``kb.path / "bm25"`` as bm25s' own ``.npy`` + JSON files (no pickle) plus
``chunk_ids.npy`` (row -> chunk id) and ``rag_lfm_bm25.json`` (the KB generation it was built
at and the tokenisation settings). :meth:`BM25Index.for_kb` rebuilds it when the KB has
committed since (its ``generation`` changed) or the settings differ.

Example:
    >>> idx = BM25Index.build(["the cat sat", "dogs run fast"], [10, 11], stemmer=None)
    >>> idx.search(["cat"], k=2)[1].tolist()
    [[10, -1]]
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rag_lfm.errors import ConfigError, IndexFormatError

# bm25s logs every index build at DEBUG; a root logger configured by another library (NNCF) prints it.
logging.getLogger("bm25s").setLevel(logging.INFO)

FOLDER = "bm25"
# A sentence ends at . ! or ? followed by white space (abbreviations like "U.S. Army" may split early:
# acceptable for a ranking field).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
META = "rag_lfm_bm25.json"
FORMAT_VERSION = 1


def _import_bm25s() -> Any:
    try:
        import bm25s
    except ImportError as exc:  # pragma: no cover - bm25s is a core dependency
        raise ConfigError("BM25 search needs bm25s; install it with `pip install bm25s`") from exc
    return bm25s


def _stemmer(name: str | None) -> Any:
    if name is None:
        return None
    try:
        import Stemmer
    except ImportError as exc:
        raise ConfigError(
            f"BM25 stemmer {name!r} needs PyStemmer; install it with `pip install PyStemmer` or pass stemmer=None"
        ) from exc
    try:
        return Stemmer.Stemmer(name)
    except KeyError as exc:
        raise ConfigError(
            f"BM25 stemmer {name!r} is unknown; valid: {', '.join(Stemmer.algorithms())}"
        ) from exc


class BM25Index:
    """A bm25s index over chunk texts, addressed by chunk id.

    Args (of :meth:`build`):
        texts / ids: one text per chunk id.
        stemmer: a Snowball language for PyStemmer (``"english"``) or None.
        stopwords: a bm25s stopword language (``"en"``) or None.
        k1, b, method: BM25 parameters (bm25s' ``method``: lucene, robertson, atire, bm25l, bm25+).
    """

    def __init__(self, model: Any, chunk_ids: np.ndarray, settings: dict[str, Any]) -> None:
        self._model = model
        self.chunk_ids = np.asarray(chunk_ids, dtype=np.int64)
        self.settings = dict(settings)
        self._stem = _stemmer(self.settings.get("stemmer"))

    def __len__(self) -> int:
        return len(self.chunk_ids)

    @staticmethod
    def default_settings(**overrides: Any) -> dict[str, Any]:
        s = {"stemmer": "english", "stopwords": "en", "k1": 1.5, "b": 0.75, "method": "lucene", "fields": [],
             "opening_sentences": 0, "text": True}
        unknown = set(overrides) - set(s)
        if unknown:
            raise ConfigError(f"unknown BM25 setting(s) {sorted(unknown)}; valid: {sorted(s)}")
        s.update(overrides)
        s["fields"] = list(s["fields"])
        if not isinstance(s["opening_sentences"], int) or s["opening_sentences"] < 0:
            raise ConfigError(f"BM25 opening_sentences={s['opening_sentences']!r} must be an int >= 0 (0 = whole text)")
        if not s["text"] and not s["fields"]:
            raise ConfigError("BM25 text=False indexes the metadata fields alone: name them, e.g. fields=['title']")
        return s

    def _tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        bm25s = _import_bm25s()
        return bm25s.tokenize(
            list(texts), stopwords=self.settings.get("stopwords"), stemmer=self._stem,
            return_ids=False, show_progress=False,
        )

    @classmethod
    def build(
        cls, texts: Sequence[str], ids: Sequence[int] | np.ndarray, *, show_progress: bool = False, **settings: Any
    ) -> BM25Index:
        """Tokenise and index ``texts``; ``ids[i]`` is the chunk id of ``texts[i]``."""
        if len(texts) != len(ids):
            raise ConfigError(f"BM25 build: {len(texts)} texts but {len(ids)} ids; pass one id per text")
        bm25s = _import_bm25s()
        s = cls.default_settings(**settings)
        index = cls(None, np.asarray(ids, dtype=np.int64), s)
        model = bm25s.BM25(k1=s["k1"], b=s["b"], method=s["method"])
        if len(texts):
            model.index(index._tokenize(texts), show_progress=show_progress)
        index._model = model
        return index

    def search(
        self, queries: Sequence[str], k: int, *, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` chunks per query: ``(scores[b,k] float32, chunk_ids[b,k] int64)``; ``-1`` = none.

        Chunks sharing no term with the query score 0 and are reported as "none" rather than
        as arbitrary zero-score rows, so fusion does not reward them. ``allowed`` (chunk ids,
        e.g. from a metadata filter) restricts the search to those chunks.
        """
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        k = min(int(k), max(len(self.chunk_ids), 1))  # the result arrays never outgrow the collection
        b = len(queries)
        scores = np.zeros((b, k), dtype=np.float32)
        ids = np.full((b, k), -1, dtype=np.int64)
        n = len(self.chunk_ids)
        if n == 0 or b == 0:
            return scores, ids
        kk = min(k, n)
        extra: dict[str, Any] = {}
        if allowed is not None:
            # bm25s multiplies each document's score by the mask: 0 removes it.
            extra["weight_mask"] = np.isin(self.chunk_ids, np.asarray(allowed, dtype=np.int64)).astype(np.float32)
        rows, sc = self._model.retrieve(self._tokenize(queries), k=kk, show_progress=False, n_threads=1, **extra)
        rows = np.asarray(rows, dtype=np.int64)
        sc = np.asarray(sc, dtype=np.float32)
        found = sc > 0
        ids[:, :kk] = np.where(found, self.chunk_ids[rows], -1)
        scores[:, :kk] = np.where(found, sc, 0.0)
        return scores, ids

    # ------------------------------------------------------------------ persistence

    def save(self, folder: str | Path, *, generation: int | None = None) -> Path:
        """Write the index into ``folder`` atomically (built in a temp folder beside it, then swapped)."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".bm25-", dir=folder.parent))
        try:
            if len(self.chunk_ids):
                self._model.save(str(tmp), allow_pickle=False, show_progress=False)
            np.save(tmp / "chunk_ids.npy", self.chunk_ids, allow_pickle=False)
            meta = {"format_version": FORMAT_VERSION, "generation": generation, "settings": self.settings,
                    "n_chunks": int(len(self.chunk_ids))}
            (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
            old = None
            if folder.exists():
                old = folder.with_name(folder.name + ".old")
                if old.exists():
                    shutil.rmtree(old)
                os.replace(folder, old)
            os.replace(tmp, folder)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return folder

    @staticmethod
    def read_meta(folder: str | Path) -> dict[str, Any] | None:
        path = Path(folder) / META
        if not path.exists():
            return None
        meta = json.loads(path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise IndexFormatError(
                f"{path}: BM25 format_version {meta.get('format_version')!r} is not {FORMAT_VERSION}; "
                "delete the folder to rebuild it"
            )
        return meta

    @classmethod
    def load(cls, folder: str | Path) -> BM25Index:
        """Load an index saved by :meth:`save`."""
        folder = Path(folder)
        meta = cls.read_meta(folder)
        if meta is None:
            raise IndexFormatError(f"{folder} is not a BM25 index (no {META}); build it with BM25Index.for_kb(kb)")
        bm25s = _import_bm25s()
        ids = np.load(folder / "chunk_ids.npy", allow_pickle=False)
        model = bm25s.BM25.load(str(folder), load_corpus=False, allow_pickle=False) if len(ids) else bm25s.BM25()
        return cls(model, ids, meta["settings"])

    @staticmethod
    def chunk_text(hit: Any, fields: Sequence[str], opening_sentences: int = 0, include_text: bool = True) -> str | None:
        """The text indexed for a chunk: the chosen metadata fields (e.g. a title), then its text.

        With ``opening_sentences = n > 0`` only a document's opening is indexed (the first ``n``
        sentences of its first chunk; later chunks return None and are left out): a second,
        "lead" field, since encyclopedic and news text states what a document is about in its
        first sentence. With ``include_text=False`` (setting ``text``) only the fields are indexed.
        """
        if not include_text:
            # The fields alone (e.g. a title field), once per document: on its first chunk.
            if hit.start != 0:
                return None
            return "\n".join(str(hit.metadata.get(f, "")) for f in fields if hit.metadata.get(f)) or None
        text = hit.text
        if opening_sentences:
            if hit.start != 0:
                return None
            text = " ".join(_SENTENCE_END.split(text.strip(), maxsplit=opening_sentences)[:opening_sentences])
        parts = [str(hit.metadata.get(f, "")) for f in fields if hit.metadata.get(f)]
        return "\n".join([*parts, text])

    @classmethod
    def folder_for(cls, kb: Any, settings: dict[str, Any]) -> Path:
        """``kb.path / "bm25"`` for the default settings, ``bm25-<hash>`` for others (so two
        retrievers with different settings do not rebuild each other's index)."""
        if settings == cls.default_settings():
            return Path(kb.path) / FOLDER
        import hashlib

        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
        return Path(kb.path) / f"{FOLDER}-{digest}"

    @classmethod
    def for_kb(cls, kb: Any, *, rebuild: bool = False, show_progress: bool = True, **settings: Any) -> BM25Index:
        """The BM25 index of ``kb``: its committed sidecar when current, else built from the chunks.

        The sidecar (``kb.path / "bm25"``, or :meth:`folder_for` for other settings) is a side file
        of the index's commit record: loaded only when every file verifies against its sha256 and
        it was built at the current ``kb.generation``. Otherwise the index is built in memory; a
        writer (inside ``kb.write_lock()``, e.g. at the end of an ingest) also saves it and binds
        it to the record, so the next reader loads it. Readers never write.
        """
        wanted = cls.default_settings(**settings)
        folder = cls.folder_for(kb, wanted)
        rel = folder.name
        committed = {r for r in (getattr(kb, "side_files", None) or {}) if r.startswith(rel + "/")}
        if not rebuild and committed:
            try:
                kb.side_folder(rel)  # every committed file under it checked against its sha256
                meta = cls.read_meta(folder)
            except IndexFormatError:
                meta = None  # missing or modified: derived data, rebuilt below rather than trusted
            if meta is not None and meta.get("generation") == kb.generation and meta["settings"] == wanted:
                return cls.load(folder)
        texts: list[str] = []
        ids: list[int] = []
        chunks: Iterable[list[Any]] = kb.iter_chunks(batch_size=1000)
        if show_progress:
            from tqdm import tqdm

            chunks = tqdm(chunks, desc="BM25: reading chunks", unit="batch", leave=False)
        for batch in chunks:
            for hit in batch:
                text = cls.chunk_text(hit, wanted["fields"], wanted["opening_sentences"], wanted["text"])
                if text is not None:
                    texts.append(text)
                    ids.append(int(hit.chunk_id))
        index = cls.build(texts, ids, show_progress=show_progress, **wanted)
        if getattr(kb, "writing", False):
            from rag_lfm.commit import digest_files

            index.save(folder, generation=kb.generation)
            fresh = digest_files(kb.path, rel)
            kb.commit_side_files({**{r: None for r in committed if r not in fresh}, **fresh})
        return index
