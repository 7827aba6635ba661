//! magpie's forward pass and tokenizer match llama.cpp on the same GGUF.
//! Reference logits: tests/fixtures/*_llamacpp.json, written by
//! scripts/make_llm_fixture.py with llama-cpp-python.

use magpie_candle::llm::AttentionKernel;
use magpie_candle::{LlmOptions, LocalLlm};
use magpie_tests::{check_greedy, check_logits, gemma_path, greedy_tokens, logit_fixture};

#[test]
fn gemma3_matches_llama_cpp() {
    gemma3_against_llama_cpp(Path::Own);
}

/// The KV cache in f32 (`LlmOptions::kv_cache`, `--kv-cache f32`) against
/// llama.cpp with an f32 cache; the cache's tensors are f32, and f16 (the
/// default) holds the same context in half the bytes.
#[test]
fn an_f32_cache_matches_llama_cpp_with_one() {
    use magpie_candle::llm::KvCacheType;
    let (llm, fx) = gemma_with_cache(KvCacheType::F32, "gemma3_270m_f32kv_llamacpp.json");
    let m = llm.model();
    let mut f32c = m.new_cache(64);
    assert_eq!(f32c.kind(), KvCacheType::F32);
    m.set_kv_cache(KvCacheType::F16).unwrap();
    let mut f16c = m.new_cache(64);
    assert_eq!(f16c.kind(), KvCacheType::F16);
    let ids = &fx.cases[0].tokens;
    m.forward(ids, &mut f32c, false).unwrap();
    m.forward(ids, &mut f16c, false).unwrap();
    let (a, b) = (f32c.keys(0).unwrap(), f16c.keys(0).unwrap());
    assert_eq!(a.dtype(), candle_core::DType::F32);
    assert_eq!(b.dtype(), candle_core::DType::F16);
    assert_eq!(a.dims(), b.dims());
    // layer 0's keys come before any attention: the f16 cache holds the f32
    // cache's keys rounded to f16, bit for bit
    let rounded = a.to_dtype(candle_core::DType::F16).unwrap();
    // (f16 widens to f32 exactly, so f32 bits compare the f16 values)
    let bits = |t: &candle_core::Tensor| {
        let t = t.flatten_all().unwrap().to_dtype(candle_core::DType::F32);
        let v = t.unwrap().to_vec1::<f32>().unwrap();
        v.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    };
    assert!(
        bits(&rounded) == bits(&b),
        "the f16 cache is not the f32 one rounded"
    );
}

/// magpie's own SentencePiece tokenizer gives llama.cpp's ids on Gemma 3's
/// 262,144-token vocabulary for varied text: the sample corpus, chat markup,
/// written-out control tokens, runs of spaces, tabs and newlines (user-defined
/// tokens), no-break and ideographic spaces, CJK, Hangul and emoji (byte
/// fallback). Fixture: scripts/make_tokenizer_fixture.py.
#[test]
fn gemma3_tokenizer_matches_llama_cpp_on_varied_text() {
    let fx: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            magpie_tests::workspace().join("tests/fixtures/gemma3_tokens_llamacpp.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let f = magpie_candle::llm::ModelFile::open(&gemma_path()).unwrap();
    let tok = magpie_candle::llm::GgufTokenizer::from_metadata(&f.metadata).unwrap();
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() > 300);
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(c["ids"].clone()).unwrap();
        assert_eq!(tok.encode(text).unwrap(), want, "{text:?}");
    }
}

/// The GPU's code path (candle's kernels throughout: no fused step, no
/// mapped weights, attention through matrix products), run on the CPU where
/// there is no GPU: the same llama.cpp fixtures hold for Gemma 3 and for
/// every tiny layout. `scripts/gpu_check.sh` runs the same models on a GPU.
#[test]
fn the_gpu_code_path_matches_llama_cpp_too() {
    gemma3_against_llama_cpp(Path::Candle);
    tiny_models_against_llama_cpp(Path::Candle);
}

/// The GPU's code path with attention as one fused kernel
/// (`MAGPIE_ATTENTION=fused`; flash.cu, whose algorithm runs here on the
/// CPU step for step): the same fixtures hold, Gemma 3's sliding window
/// (512 positions, prompts past it) and every tiny layout's greedy tokens
/// included. `scripts/gpu_check.sh` runs the kernel itself on a GPU.
#[test]
fn fused_attention_on_the_gpu_code_path_matches_llama_cpp() {
    gemma3_against_llama_cpp(Path::CandleFused);
    tiny_models_against_llama_cpp(Path::CandleFused);
}

/// The q8_0 KV cache (34 bytes per 32 values) against llama.cpp with one
/// (there with flash attention, which a quantized value cache needs): the
/// same top tokens within Gemma's tolerance; its rows hold Q8_0 blocks; and
/// stepping through a prompt gives the prompt's logits bit for bit.
#[test]
fn a_q8_0_cache_matches_llama_cpp_with_one() {
    use magpie_candle::llm::model::Transformer;
    use magpie_candle::llm::KvCacheType;
    let (llm, fx) = gemma_with_cache(KvCacheType::Q8_0, "gemma3_270m_q8kv_llamacpp.json");
    let m = llm.model();
    let ids = &fx.cases[5].tokens[..600];
    let mut whole = m.new_cache(1024);
    assert_eq!(whole.kind(), KvCacheType::Q8_0);
    let a = Transformer::to_vec(&m.forward(ids, &mut whole, false).unwrap()).unwrap();
    let k = whole.keys(0).unwrap();
    assert_eq!(k.dtype(), candle_core::DType::U8);
    assert_eq!(k.dims()[3], m.cfg.head_dim / 32 * 34);
    let mut stepped = m.new_cache(1024);
    m.forward(&ids[..590], &mut stepped, false).unwrap();
    let mut b = Vec::new();
    for t in &ids[590..] {
        b = Transformer::to_vec(&m.forward(&[*t], &mut stepped, false).unwrap()).unwrap();
    }
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert!(
        bits(&a) == bits(&b),
        "stepping and prompting differ on a q8_0 cache"
    );
}

/// Gemma 3 with a KV cache of `kind`, checked against llama.cpp's fixture
/// made with the same cache type.
fn gemma_with_cache(
    kind: magpie_candle::llm::KvCacheType,
    fixture: &str,
) -> (LocalLlm, magpie_tests::LogitFixture) {
    let fx = logit_fixture(fixture);
    let opts = LlmOptions {
        kv_cache: Some(kind),
        ..Default::default()
    };
    let llm = LocalLlm::load(&gemma_path(), opts).unwrap();
    for case in &fx.cases {
        let logits = llm.logits(&case.tokens).unwrap();
        let d = check_logits(case, &logits, 1.5);
        println!(
            "{:5} tokens ({kind} cache): top-1 agrees, max |diff| {d:.4}",
            case.tokens.len()
        );
    }
    (llm, fx)
}

/// Which code path a test runs.
#[derive(Clone, Copy, PartialEq)]
enum Path {
    /// magpie's CPU kernels (the default on a CPU).
    Own,
    /// candle's kernels throughout, attention as matrix products (a GPU's
    /// default).
    Candle,
    /// candle's kernels, attention as one fused kernel.
    CandleFused,
}

fn options(path: Path) -> LlmOptions {
    LlmOptions {
        candle_kernels: path != Path::Own,
        attention: (path == Path::CandleFused).then_some(AttentionKernel::Fused),
        ..Default::default()
    }
}

fn gemma3_against_llama_cpp(path: Path) {
    let fx = logit_fixture("gemma3_270m_llamacpp.json");
    let llm = LocalLlm::load(&gemma_path(), options(path)).unwrap();
    assert_eq!(llm.model().own_kernels(), path == Path::Own);
    let fused = path == Path::CandleFused;
    assert_eq!(llm.model().attention() == AttentionKernel::Fused, fused);
    for case in &fx.cases {
        let ours = llm.encode_prompt(&case.prompt).unwrap();
        assert_eq!(ours, case.tokens, "tokens differ for {:?}", case.prompt);
        let logits = llm.logits(&case.tokens).unwrap();
        let d = check_logits(case, &logits, 1.5);
        println!(
            "{:5} tokens: top-1 agrees, max |diff| {d:.4}",
            case.tokens.len()
        );
    }
}

/// Tiny random-weight models of the llama, qwen2, qwen3, chatglm and glm4
/// layouts, written by the test (the bytes must match the file llama.cpp
/// read), with their SentencePiece or byte-level BPE vocabularies: the same
/// tokens, the same top-1 and close logits, and where the fixture has them
/// the same greedy continuation.
#[test]
fn tiny_models_match_llama_cpp() {
    tiny_models_against_llama_cpp(Path::Own);
}

fn tiny_models_against_llama_cpp(code: Path) {
    use magpie_tests::tiny::{sha256_file, write_tiny, Tiny};
    let dir = tempfile::tempdir().unwrap();
    for kind in Tiny::ALL {
        let fx = logit_fixture(&format!("tiny_{}_llamacpp.json", kind.arch()));
        let path = dir.path().join(kind.file_name(2));
        write_tiny(kind, 2, &gemma_path(), &path);
        assert_eq!(
            sha256_file(&path),
            fx.model_sha256,
            "the tiny {} model is not the file the fixture was made from: rerun scripts/make_llm_fixture.py (see its header)",
            kind.arch()
        );
        let llm = LocalLlm::load(&path, options(code)).unwrap();
        let (mut agree, mut total) = (0, 0);
        for case in &fx.cases {
            let ours = llm.encode_prompt(&case.prompt).unwrap();
            assert_eq!(
                ours,
                case.tokens,
                "{}: tokens differ for {:?}",
                kind.arch(),
                case.prompt
            );
            let logits = llm.logits(&case.tokens).unwrap();
            let d = check_logits(case, &logits, 0.4);
            println!(
                "{}: {:3} tokens, top-1 agrees, max |diff| {d:.5}",
                kind.arch(),
                case.tokens.len()
            );
            if !case.greedy.is_empty() {
                let ours = greedy_tokens(&llm, &case.tokens, case.greedy.len(), &[]);
                let same = check_greedy(case, &ours, 0.2);
                println!("    greedy: {same} of {} tokens agree", ours.len());
                agree += same;
                total += ours.len();
            }
        }
        // the same continuation, but for near ties (see check_greedy)
        assert!(
            agree * 2 >= total,
            "{}: only {agree} of {total} greedy tokens agree",
            kind.arch()
        );
    }
}

/// A tokenizer.json beside the .gguf is used instead of the GGUF's vocabulary
/// (here: the one magpie built from the GGUF, saved, so the ids must agree).
#[test]
fn a_tokenizer_json_beside_the_model_is_used() {
    use magpie_tests::tiny::{write_tiny, Tiny};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    write_tiny(Tiny::Qwen3, 1, &gemma_path(), &path);
    let plain = LocalLlm::load(&path, LlmOptions::default()).unwrap();
    let text = "Install docqa, then run: scripts/demo.sh";
    let want = plain.encode_prompt(text).unwrap();
    plain
        .tokenizer()
        .hf()
        .expect("a GPT-2 vocabulary runs on tokenizers")
        .save(dir.path().join("tokenizer.json"), false)
        .unwrap();
    let with_json = LocalLlm::load(&path, LlmOptions::default()).unwrap();
    assert_eq!(with_json.tokenizer().kind, "gpt2");
    assert_eq!(with_json.encode_prompt(text).unwrap(), want);
    // a broken tokenizer.json is a clear error, not a panic
    std::fs::write(dir.path().join("tokenizer.json"), "{not json").unwrap();
    let err = LocalLlm::load(&path, LlmOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
}
