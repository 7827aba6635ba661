#!/usr/bin/env python3
"""Write tests/fixtures/minilm_reference.json: sentences and their
sentence-transformers embeddings with all-MiniLM-L6-v2, the reference the
candle embedder is checked against (cosine > 0.999).

Run once, from the repository root, in a virtualenv with sentence-transformers:
    python3 -m venv target/st-venv
    target/st-venv/bin/pip install sentence-transformers
    target/st-venv/bin/python scripts/make_embedding_fixture.py models/all-MiniLM-L6-v2
"""
import json
import sys

from sentence_transformers import SentenceTransformer

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A magpie is a bird of the crow family, known for its intelligence.",
    "Rust guarantees memory safety without a garbage collector.",
    "How do I install the software on Linux?",
    "Vitamin D deficiency is associated with an increased risk of fractures.",
    "北京是中国的首都。",
    "Ça coûte combien ? Très cher, malheureusement.",
    "",
    "a",
    "Retrieval-augmented generation combines a search index with a language model "
    "so that answers can cite the passages they came from. " * 3,
    "x" * 50,
    "Emoji 🎉 and symbols ∑ ∫ √ are tokenized as unknown pieces.",
    # long enough to be truncated at 256 tokens
    " ".join(f"word{i}" for i in range(400)),
]


def main():
    model_dir = sys.argv[1] if len(sys.argv) > 1 else "models/all-MiniLM-L6-v2"
    model = SentenceTransformer(model_dir, device="cpu")
    vecs = model.encode(SENTENCES, normalize_embeddings=True, batch_size=4)
    out = {
        "model": "all-MiniLM-L6-v2",
        "max_seq_length": model.max_seq_length,
        "sentences": SENTENCES,
        "vectors": [[round(float(x), 7) for x in v] for v in vecs],
    }
    with open("tests/fixtures/minilm_reference.json", "w") as f:
        json.dump(out, f)
    print(f"wrote {len(SENTENCES)} vectors of {len(vecs[0])} dims")


if __name__ == "__main__":
    main()
