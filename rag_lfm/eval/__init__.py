"""Evaluation: retrieval quality (:mod:`rag_lfm.eval.retrieval`) and answer quality.

Submodules are imported on use, so ``import rag_lfm.eval`` stays light.
"""
