#!/usr/bin/env python3
"""llama.cpp side of scripts/bench_llm.sh: the same measurement as
`docqa bench llm` (N prompt tokens from an empty cache, then M greedy tokens
one at a time), on 2 threads, one JSON line out."""
import json
import resource
import sys
import time

import llama_cpp
import numpy as np
from llama_cpp import Llama

model, text_file, n_prompt, n_gen, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
t = time.perf_counter()
llm = Llama(model_path=model, n_ctx=n_prompt + n_gen + 16, n_batch=256, n_threads=2, n_threads_batch=2, verbose=False)
load = time.perf_counter() - t
toks = llm.tokenize(open(text_file).read().encode(), add_bos=True, special=True)[:n_prompt]
n_vocab = llm.n_vocab()
runs = []
for _ in range(repeat):
    llm.reset()
    t = time.perf_counter()
    llm.eval(toks)
    prefill = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(n_gen):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(n_vocab,))
        llm.eval([int(logits.argmax())])
    decode = time.perf_counter() - t
    runs.append((n_prompt / prefill, n_gen / decode))
med = lambda v: sorted(v)[len(v) // 2]
print(json.dumps({
    "runtime": "llama.cpp", "prompt_tokens": n_prompt, "gen_tokens": n_gen, "load_seconds": load,
    "prefill_tokens_per_sec": med([r[0] for r in runs]), "decode_tokens_per_sec": med([r[1] for r in runs]),
    "runs": runs, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
