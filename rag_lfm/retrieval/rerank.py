"""Cross-encoder reranking with any local sequence-classification model.

A cross-encoder reads ``(query, passage)`` together and outputs one relevance logit, which is
slower than comparing embeddings but sees word-level interactions. No pretrained
cross-encoder ships offline here, so the class takes any local folder (``resolve_model``
resolves it); the tests build a tiny randomly initialised BERT from a config.

Example:
    >>> rr = CrossEncoderReranker("path/to/cross-encoder")   # doctest: +SKIP
    >>> rr.score("who painted water lilies?", ["Claude Monet was ...", "Paris is ..."])  # doctest: +SKIP
    array([ 7.1, -3.2], dtype=float32)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from rag_lfm.errors import ConfigError
from rag_lfm.types import Hit


class CrossEncoderReranker:
    """Scores ``(query, text)`` pairs with a local ``AutoModelForSequenceClassification``.

    The score is the single logit of a 1-label model, or ``logit[-1] - logit[0]`` (the log-odds
    of the last, "relevant", class) of a multi-label one. The model loads on first use.

    Args:
        model: a local folder (or a name :func:`rag_lfm.models.resolve_model` knows).
        max_length: tokens per pair; longer pairs are truncated (passage side first).
        batch_size: pairs per forward pass.
        device: ``"cpu"``, ``"cuda"``...; default: CUDA when available.
    """

    def __init__(
        self, model: str | os.PathLike[str], *, max_length: int = 256, batch_size: int = 32, device: str | None = None
    ) -> None:
        if max_length < 8:
            raise ConfigError(f"max_length must be >= 8 tokens, got {max_length}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.model_name = str(model)
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = device
        self._model: Any = None
        self._tokenizer: Any = None

    def warm_up(self) -> None:
        """Load the tokenizer and model (done on first use otherwise)."""
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from rag_lfm.models import resolve_model

        path = resolve_model(self.model_name)
        self._tokenizer = AutoTokenizer.from_pretrained(str(path))
        self._model = AutoModelForSequenceClassification.from_pretrained(str(path))
        self._model.eval()
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._model.to(device)
        self.device = device

    def score(self, query: str, texts: Sequence[str]) -> np.ndarray:
        """Relevance score of each text for ``query`` (float32 ``[len(texts)]``, higher is better)."""
        import torch

        self.warm_up()
        out: list[np.ndarray] = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            enc = self._tokenizer(
                [query] * len(batch), batch, padding=True, truncation="longest_first",
                max_length=self.max_length, return_tensors="pt",
            ).to(self.device)
            with torch.inference_mode():
                logits = self._model(**enc).logits.float()
            s = logits[:, 0] if logits.shape[1] == 1 else logits[:, -1] - logits[:, 0]
            out.append(s.cpu().numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)

    def rerank(self, query: str, hits: Sequence[Hit], *, top_n: int | None = None) -> list[Hit]:
        """Reorder ``hits`` by cross-encoder score (copies, with ``score`` set to it); keep ``top_n``."""
        scores = self.score(query, [h.text for h in hits])
        order = np.argsort(-scores, kind="stable")
        ranked = [replace(hits[i], score=float(scores[i])) for i in order]
        return ranked[:top_n] if top_n is not None else ranked
