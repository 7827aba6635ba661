#!/usr/bin/env python3
"""llama.cpp's token ids for varied text on Gemma 3's SentencePiece vocabulary,
for tests/tests/llm_parity.rs (magpie's own SentencePiece tokenizer must give
the same ids).

    scripts/setup_llama_ref.sh            # once: builds llama-cpp-python
    target/llama-venv/bin/python scripts/make_tokenizer_fixture.py MODEL.gguf OUT.json

The texts: the bundled sample corpus in 700-character pieces, and 300 seeded
random strings over an alphabet of spaces, tabs, newlines, no-break and
ideographic spaces, accents, CJK, Hangul, emoji, `<`, `>`, `▁` and `0x`, plus
chat markup and written-out control tokens (special tokens parsed).
"""
import json
import pathlib
import random
import sys

from llama_cpp import Llama

model, out = sys.argv[1], sys.argv[2]
texts = []
for p in sorted(pathlib.Path("examples/docqa/sample").rglob("*")):
    if p.is_file() and p.suffix in (".md", ".txt", ".html"):
        t = p.read_text(errors="ignore")
        texts += [t[i : i + 700] for i in range(0, len(t), 700)]
random.seed(1)
alphabet = "ab c  d\n\n\t\tÉé中文한국어🐦\u00a0\u3000<>_▁0x"
texts += ["".join(random.choice(alphabet) for _ in range(random.randint(1, 40))) for _ in range(300)]
texts += [
    "<start_of_turn>user\nhello<end_of_turn>\n<start_of_turn>model\n",
    "  leading",
    "trailing  ",
    "<unused12>x<unused1>",
    "\n\n\n  \t",
    "喜鹊会收集闪亮的东西，并且能记住人脸。",
]
llm = Llama(model_path=model, vocab_only=True, verbose=False)
cases = [{"text": t, "ids": llm.tokenize(t.encode(), add_bos=False, special=True)} for t in texts]
json.dump({"model": pathlib.Path(model).name, "cases": cases}, open(out, "w"), ensure_ascii=False)
print(f"{len(cases)} texts -> {out}")
