#!/usr/bin/env python3
"""sentence-transformers side of scripts/bench_embed.sh: one timed pass, JSON out."""
import json
import sys
import time

import torch
from sentence_transformers import SentenceTransformer

torch.set_num_threads(2)
model_dir, path, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
sentences = [l.rstrip("\n") for l in open(path) if l.strip()]
model = SentenceTransformer(model_dir, device="cpu")
model.encode(sentences[:batch], batch_size=batch)  # warm-up
t = time.perf_counter()
model.encode(sentences, batch_size=batch, normalize_embeddings=True)
secs = time.perf_counter() - t
print(json.dumps({"runtime": "sentence-transformers", "sentences": len(sentences), "batch": batch,
                  "seconds": [secs], "sentences_per_sec": len(sentences) / secs}))
