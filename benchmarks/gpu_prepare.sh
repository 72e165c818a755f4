#!/usr/bin/env bash
# Rebuild, from scratch, what benchmarks/gpu_suite.sh needs on the lent GPU machine (no network there):
#
#   .whl/        cp312 manylinux wheels of the packages that machine lacks (faiss-cpu, SQLAlchemy)
#   .gpu_carry/  configs + tokenizers of the real models (no weights: the GPU run initialises them
#                randomly) and 2,000 wiki-vital leads as JSONL
#
# Both folders are git-ignored (through .git/info/exclude) and travel as `carry` paths.
# Run from anywhere; uses this checkout's .venv (it needs the packaged models and the wiki data).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python

for entry in /.whl/ /.gpu_carry/; do
    grep -qxF "$entry" .git/info/exclude 2>/dev/null || echo "$entry" >> .git/info/exclude
done

# -- wheels ------------------------------------------------------------------------------
# What `import rag_lfm`, the GPU tests and bench_gpu.py need beyond the machine's own
# packages (torch, transformers, sentence-transformers, numpy, tqdm, typer, rich, lxml, pytest...).
# faiss-cpu 1.15.1 (the version this venv runs; its abi3 wheel is ~19 MB) needs numpy + packaging,
# both present there. SQLAlchemy 2.x needs typing-extensions (present; torch depends on it);
# greenlet only for its asyncio extension, which rag-lfm does not use.
WHEELS=(faiss-cpu==1.15.1 SQLAlchemy==2.1.9)
rm -rf .whl
for w in "${WHEELS[@]}"; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$w"
done
ls -l .whl

# -- model configs, tokenizers, text -------------------------------------------------------
rm -rf .gpu_carry
mkdir -p .gpu_carry
"$PY" - <<'EOF'
import json
import shutil
from pathlib import Path

from rag_lfm.connectors.wiki import load_wiki_vital
from rag_lfm.models import resolve_model

carry = Path(".gpu_carry")
KEEP = [
    "config.json", "generation_config.json", "modules.json", "sentence_bert_config.json",
    "config_sentence_transformers.json", "1_Pooling/config.json", "special_tokens_map.json",
    "tokenizer_config.json", "tokenizer.json", "vocab.txt", "chat_template.jinja", "chat_template.json",
]
# SmolLM2 resolves to the cached safetensors conversion of the packaged GGUF (converted here on first use).
for name, folder in [("all-MiniLM-L6-v2", "minilm"), ("SmolLM2-135M-Instruct", "smollm2")]:
    src = Path(resolve_model(name))
    for rel in KEEP:
        if (src / rel).is_file():
            (carry / folder / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, carry / folder / rel)
    print(name, "->", sorted(str(p.relative_to(carry)) for p in (carry / folder).rglob("*") if p.is_file()))

# The first 2,000 leads in the package's order (what WikiVital(limit=2000) ingests).
with open(carry / "wiki_leads_2000.jsonl", "w", encoding="utf-8") as fh:
    for e in load_wiki_vital()[:2000]:
        fh.write(json.dumps({k: e.get(k, "") for k in ("title", "extract", "description", "topic")}, ensure_ascii=False) + "\n")
EOF
du -sh .whl .gpu_carry
du -cb .whl .gpu_carry | tail -1 | awk '{printf "carried total: %.1f MiB (limit 64 MiB with the tree)\n", $1/1048576}'
