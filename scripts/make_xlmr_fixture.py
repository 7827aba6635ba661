#!/usr/bin/env python3
"""Write tests/fixtures/tiny-xlmr/: a tiny XLM-RoBERTa sentence encoder with
random weights, and the vectors sentence-transformers gives for a few
sentences with it. The Rust embedder is checked against them
(tests/tests/embedding_parity.rs), so the XLM-R path (positions offset by
the padding index, a SentencePiece Unigram tokenizer with its precompiled
normalizer, mean and CLS pooling, e5-style query/passage prompts) is proven
on the real reference implementation without a multilingual model download.

The tokenizer is trained here with sentencepiece on the sentences below (a
few languages and scripts), converted by transformers to tokenizer.json as it
does for xlm-roberta-base. The model: 2 layers, hidden 32, 4 heads, vocab as
trained, seeded random weights.

Run once, from the repository root:
    target/st-venv/bin/pip install sentence-transformers sentencepiece protobuf
    target/st-venv/bin/python scripts/make_xlmr_fixture.py
"""
import json
import os
import shutil
import tempfile

import sentencepiece as spm
import torch
from sentence_transformers import SentenceTransformer, models
from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizerFast
from transformers.convert_slow_tokenizer import XLMRobertaConverter

OUT = "tests/fixtures/tiny-xlmr"

TRAIN = [
    "The quick brown fox jumps over the lazy dog.",
    "A magpie is a bird of the crow family, known for its intelligence.",
    "Retrieval combines a search index with a language model.",
    "Vitamin D deficiency is associated with an increased risk of fractures.",
    "How do I install the software on Linux?",
    "北京是中国的首都，也是政治和文化中心。",
    "长城是中国古代的军事防御工程。",
    "上海是中国最大的城市之一，位于长江入海口。",
    "东京是日本的首都。東京の天気は晴れです。",
    "서울은 대한민국의 수도이며 가장 큰 도시이다.",
    "Ça coûte combien ? Très cher, malheureusement.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Москва — столица России.",
    "El rápido zorro marrón salta sobre el perro perezoso.",
    "Ｆｕｌｌｗｉｄｔｈ letters and ① circled digits are normalised by NFKC.",
] * 4

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "北京是中国的首都。",
    "東京の天気は晴れです。",
    "서울은 대한민국의 수도이다.",
    "Ｆｕｌｌｗｉｄｔｈ ① and unseen words: zyxwv qqq.",
    "Москва — столица России, и это очень большой город с многими жителями.",
    "",
    "a",
    " ".join(["北京上海东京"] * 60),  # truncated at max_seq_length
]
QUERIES = ["where is the capital of China?", "中国的首都在哪里"]


def main():
    torch.manual_seed(17)
    work = tempfile.mkdtemp()
    with open(os.path.join(work, "train.txt"), "w") as f:
        f.write("\n".join(TRAIN))
    spm.SentencePieceTrainer.train(
        input=os.path.join(work, "train.txt"),
        model_prefix=os.path.join(work, "spm"),
        vocab_size=300,
        model_type="unigram",
        character_coverage=1.0,
        normalization_rule_name="nmt_nfkc",
        hard_vocab_limit=False,
        # XLM-R's fairseq layout puts <s> <pad> </s> <unk> first; the
        # tokenizer class adds them, so sentencepiece's own are kept apart.
        bos_id=-1,
        eos_id=-1,
        unk_id=0,
        pad_id=-1,
    )
    # transformers' own converter for xlm-roberta-base's sentencepiece file
    # (fairseq ids: <s> 0, <pad> 1, </s> 2, <unk> 3, pieces after).
    class Spm:
        vocab_file = os.path.join(work, "spm.model")

        def convert_tokens_to_ids(self, t):
            return {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}[t]

    fast = XLMRobertaTokenizerFast(
        tokenizer_object=XLMRobertaConverter(Spm()).converted(),
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
    )
    cfg = XLMRobertaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=66,  # 64 positions after the padding offset
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    model = XLMRobertaModel(cfg, add_pooling_layer=False)
    # Random init leaves the layer norms at 1/0: give them something to do.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    if os.path.exists(OUT):
        shutil.rmtree(OUT)
    hf_dir = os.path.join(work, "hf")
    model.save_pretrained(hf_dir, safe_serialization=True)
    fast.save_pretrained(hf_dir)

    out = {"sentences": SENTENCES, "queries": QUERIES}
    for pooling in ["mean", "cls"]:
        word = models.Transformer(hf_dir, max_seq_length=64)
        pool = models.Pooling(word.get_word_embedding_dimension(), pooling_mode=pooling)
        st = SentenceTransformer(
            modules=[word, pool, models.Normalize()],
            device="cpu",
            prompts={"query": "query: ", "passage": "passage: "},
        )
        vecs = st.encode(SENTENCES, batch_size=3, normalize_embeddings=True)
        out[f"{pooling}_vectors"] = [[round(float(x), 7) for x in v] for v in vecs]
        q = st.encode(QUERIES, prompt_name="query", normalize_embeddings=True)
        out[f"{pooling}_query_vectors"] = [[round(float(x), 7) for x in v] for v in q]
        p = st.encode(SENTENCES[:2], prompt_name="passage", normalize_embeddings=True)
        out[f"{pooling}_passage_vectors"] = [[round(float(x), 7) for x in v] for v in p]
        out[f"{pooling}_token_counts"] = [len(fast(s)["input_ids"]) for s in SENTENCES]
        if pooling == "mean":
            st.save(OUT)
    # Keep the files the Rust embedder reads; drop what it does not need.
    for f in os.listdir(OUT):
        if f in ("sentencepiece.bpe.model", "README.md"):
            os.remove(os.path.join(OUT, f))
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(out, f)
    print(f"wrote {OUT}: vocab {len(fast)}, {len(SENTENCES)} sentences")
    for s in SENTENCES[:5]:
        print(fast.tokenize(s))


if __name__ == "__main__":
    main()
