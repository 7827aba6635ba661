#!/usr/bin/env python3
"""Reference next-token logits from llama.cpp (llama-cpp-python) for the LLM
parity tests (tests/tests/llm_parity.rs).

    scripts/setup_llama_ref.sh            # once: builds llama-cpp-python
    target/llama-venv/bin/python scripts/make_llm_fixture.py MODEL.gguf OUT.json [PROMPTS.json]
        [--lora ADAPTER.gguf[:SCALE]] [--greedy N] [--kv f16|f32]

scripts/make_llm_fixtures.sh writes every fixture the tests read.

PROMPTS.json is a list of strings (default: the built-in set, which includes a
prompt past Gemma 3's 512-token local window). For each prompt the fixture keeps
llama.cpp's token ids (BOS added as the model asks, special tokens parsed), the
20 highest logits and the logits of 64 fixed token ids.

--lora applies a LoRA adapter (GGUF, as llama.cpp's convert_lora_to_gguf.py
writes it) at SCALE (default 1.0); the fixture records the adapter's sha256 and
scale. --greedy N also records the N tokens greedy decoding picks after each
prompt, each fed back one at a time as a generator does, and at each step the
margin of the pick over the runner-up (a near tie may fall either way within
the logit tolerance; the tests compare the tokens up to the first one).
"""
import argparse
import hashlib
import json
import pathlib
import sys

import numpy as np
import llama_cpp
from llama_cpp import Llama

ROOT = pathlib.Path(__file__).resolve().parent.parent


def default_prompts():
    sample = ROOT / "examples/docqa/sample"
    long_text = (sample / "guide/configuration.md").read_text() + "\n" + (sample / "guide/install.md").read_text()
    long_text = (long_text + "\n") * 3
    return [
        "The capital of France is",
        "Magpies are birds of the crow family. They",
        'fn main() {\n    println!("hello");',
        "喜鹊是一种",
        "<start_of_turn>user\nWhat is two plus two?<end_of_turn>\n<start_of_turn>model\n",
        long_text,
    ]


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("prompts", nargs="?")
    ap.add_argument("--lora", help="ADAPTER.gguf[:SCALE]")
    ap.add_argument("--greedy", type=int, default=0, help="greedy tokens to record after each prompt")
    ap.add_argument("--kv", choices=["f16", "f32", "q8_0"], default="f16", help="KV cache type (magpie's default: f16)")
    args = ap.parse_args()
    prompts = json.load(open(args.prompts)) if args.prompts else default_prompts()
    lora = {}
    if args.lora:
        path, _, scale = args.lora.partition(":")
        lora = {"lora_path": path, "lora_scale": float(scale or 1.0)}
    # the KV cache in the type magpie keeps it (GGML_TYPE_F32 0, F16 1,
    # Q8_0 8: a quantized value cache needs llama.cpp's flash attention)
    kv = {"f32": 0, "f16": 1, "q8_0": 8}[args.kv]
    llm = Llama(model_path=args.model, n_ctx=4096, n_batch=512, n_threads=2, verbose=False, seed=0,
                type_k=kv, type_v=kv, flash_attn=args.kv == "q8_0", **lora)
    n_vocab = llm.n_vocab()
    rng = np.random.default_rng(1234)
    probe = sorted(set(int(x) for x in rng.integers(0, n_vocab, 64)))
    cases = []
    for p in prompts:
        toks = llm.tokenize(p.encode(), add_bos=llm.metadata.get("tokenizer.ggml.add_bos_token", "true") != "false", special=True)
        llm.reset()
        llm.eval(toks)
        ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        logits = np.ctypeslib.as_array(ptr, shape=(n_vocab,)).astype(np.float32).copy()
        top = np.argsort(-logits)[:20]
        case = {
            "prompt": p,
            "tokens": [int(t) for t in toks],
            "top": [[int(i), float(logits[i])] for i in top],
            "probe": [[i, float(logits[i])] for i in probe],
        }
        if args.greedy:
            greedy, margins, step = [], [], logits
            for _ in range(args.greedy):
                tok = int(np.argmax(step))
                greedy.append(tok)
                second = np.partition(step, -2)[-2]
                margins.append(float(step[tok] - second))
                llm.eval([tok])
                ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
                step = np.ctypeslib.as_array(ptr, shape=(n_vocab,)).astype(np.float32).copy()
            case["greedy"] = greedy
            case["greedy_margin"] = margins
        cases.append(case)
        print(f"{len(toks):5d} tokens  top1={int(top[0])} ({llm.detokenize([int(top[0])]).decode(errors='replace')!r})", file=sys.stderr)
    fixture = {"model_sha256": sha256(args.model), "runtime": "llama-cpp-python", "kv_cache": args.kv}
    if lora:
        fixture["lora"] = {"sha256": sha256(lora["lora_path"]), "scale": lora["lora_scale"]}
    fixture["cases"] = cases
    json.dump(fixture, open(args.out, "w"), indent=0)


if __name__ == "__main__":
    main()
