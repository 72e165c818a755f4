"""Distillation: a frozen teacher reader with retrieval teaches a smaller or cheaper student.

Two costs matter to a RAG user, and a student can cut either:

1. a smaller model: ``student="layers=15"`` keeps half of the teacher's decoder layers,
   initialised from its weights (:mod:`rag_lfm.distill.student`);
2. a cheaper strategy: REPLUG runs one forward pass per passage; a student of a
   ``replug:5`` teacher reads the same 5 passages in one prompt (``in-context``).

Stages, one module each: :mod:`~rag_lfm.distill.spec` (teacher and student specs),
:mod:`~rag_lfm.distill.cache` (teacher outputs on disk, top-k only, resumable),
:mod:`~rag_lfm.distill.student` (layer pruning), :mod:`~rag_lfm.distill.losses` (kl, seq, gold),
:mod:`~rag_lfm.distill.train` (resumable training), :mod:`~rag_lfm.distill.run` (:func:`distill`).
The teacher's weights never change (checked by fingerprint).

Example:
    >>> from rag_lfm.distill import distill
    >>> distill(kb, teacher="replug:5", student="layers=15", out="models/student")  # doctest: +SKIP
"""

from rag_lfm.distill.cache import TeacherCache, build_teacher_cache
from rag_lfm.distill.losses import LOSSES
from rag_lfm.distill.run import DistillReport, distill, load_card, save_student
from rag_lfm.distill.spec import StudentSpec, TeacherSpec
from rag_lfm.distill.student import build_student, kept_layers, prune_layers
from rag_lfm.distill.train import TrainConfig, TrainExample, build_examples, mean_kl, train_student

__all__ = [
    "LOSSES",
    "DistillReport",
    "StudentSpec",
    "TeacherCache",
    "TeacherSpec",
    "TrainConfig",
    "TrainExample",
    "build_examples",
    "build_student",
    "build_teacher_cache",
    "distill",
    "kept_layers",
    "load_card",
    "mean_kl",
    "prune_layers",
    "save_student",
    "train_student",
]
