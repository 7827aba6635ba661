//! LoRA adapters on the local runtime: parity with llama.cpp applying the
//! same GGUF adapter, and bad adapters and requests (switching per request is
//! in llm_lora_switch.rs, alone in its process for its RSS check).
//! Reference: tests/fixtures/tiny_*_lora*_llamacpp.json, written by
//! scripts/make_llm_fixture.py --lora.

use std::path::{Path, PathBuf};

use magpie_candle::{LlmError, LlmOptions, LocalLlm};
use magpie_core::{AdapterChoice, GenerationOptions, Generator, Prompt};
use magpie_tests::tiny::{
    sha256_file, tiny_in, tiny_vocab_size, write_lora, Tiny, TinyLora, LORA_A, LORA_B,
};
use magpie_tests::{
    check_greedy, check_logits, gemma_path, greedy_answer, greedy_tokens, logit_fixture,
    max_abs_diff,
};

fn lora(kind: Tiny, spec: TinyLora, tag: &str, dir: &Path) -> PathBuf {
    let p = dir.join(format!("tiny-{}-2l-lora-{tag}.gguf", kind.arch()));
    write_lora(kind, 2, tiny_vocab_size(kind, &gemma_path()), spec, &p);
    p
}

/// A tiny llama and a tiny qwen2 with an adapter on every attention and MLP
/// projection (and one more on the llama with a quantized adapter that also
/// adapts the output, at half scale), against llama.cpp applying the same
/// file: the same tokens, top-1, logits within the parity tolerance, and the
/// same greedy continuation.
#[test]
fn adapted_tiny_models_match_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, spec, tag, fixture) in [
        (Tiny::Llama, LORA_A, "a", "tiny_llama_lora_llamacpp.json"),
        (Tiny::Qwen2, LORA_A, "a", "tiny_qwen2_lora_llamacpp.json"),
        (Tiny::Llama, LORA_B, "b", "tiny_llama_lora_b_llamacpp.json"),
    ] {
        let fx = logit_fixture(fixture);
        let base = tiny_in(kind, 2, dir.path());
        let adapter = lora(kind, spec, tag, dir.path());
        let fresh = "rerun scripts/make_llm_fixture.py (see its header)";
        assert_eq!(
            sha256_file(&base),
            fx.model_sha256,
            "{fixture}: not the base the fixture was made from: {fresh}"
        );
        let lref = fx.lora.as_ref().expect("a LoRA fixture");
        assert_eq!(
            sha256_file(&adapter),
            lref.sha256,
            "{fixture}: not the adapter the fixture was made from: {fresh}"
        );
        let llm = LocalLlm::load(&base, LlmOptions::default()).unwrap();
        let summary = llm.load_adapter(tag, &adapter).unwrap();
        assert_eq!(summary.ranks, vec![spec.rank]);
        // q, k, v, o, gate, up and down of two layers, and the output
        assert_eq!(summary.tensors, 14 + usize::from(spec.output));
        let choice = [AdapterChoice {
            name: tag.into(),
            scale: lref.scale,
        }];
        let (mut agree, mut total) = (0, 0);
        for case in &fx.cases {
            assert_eq!(llm.encode_prompt(&case.prompt).unwrap(), case.tokens);
            let adapted = llm.logits_with(&case.tokens, &choice).unwrap();
            let d = check_logits(case, &adapted, 0.4);
            // the adapter does change the model
            let plain = llm.logits(&case.tokens).unwrap();
            let moved = max_abs_diff(&adapted, &plain);
            println!(
                "{fixture}: {:3} tokens, top-1 agrees, max |diff| {d:.5} (the adapter moves logits by up to {moved:.2})",
                case.tokens.len()
            );
            assert!(
                moved > 1.0,
                "{fixture}: the adapter barely changes the logits ({moved})"
            );
            assert!(!case.greedy.is_empty(), "{fixture} has no greedy tokens");
            let ours = greedy_tokens(&llm, &case.tokens, case.greedy.len(), &choice);
            // the continuation may part from llama.cpp's only where its pick
            // led the runner-up by less than 0.2 (half the logit tolerance):
            // these random tiny models are full of such steps (a third of
            // them in the fixtures' margins), so how far each continuation
            // gets depends on where the first falls, not on the adapter
            let same = check_greedy(case, &ours, 0.2);
            println!(
                "    greedy: {same} of {} tokens agree{}",
                ours.len(),
                if same < ours.len() {
                    " (then a near tie)"
                } else {
                    ""
                }
            );
            agree += same;
            total += ours.len();
        }
        println!("{fixture}: {agree} of {total} greedy tokens agree");
        assert!(agree > 0, "{fixture}: no greedy token agrees");
    }
}

/// Write an adapter of one pair whose input size is wrong for the tiny models.
fn write_misshapen(path: &Path) {
    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    use candle_core::{Device, Tensor};
    let dev = Device::Cpu;
    let a = Tensor::ones((4, 100), candle_core::DType::F32, &dev).unwrap();
    let b = Tensor::ones((256, 4), candle_core::DType::F32, &dev).unwrap();
    let qa = QTensor::quantize(&a, GgmlDType::F32).unwrap();
    let qb = QTensor::quantize(&b, GgmlDType::F32).unwrap();
    let s = |v: &str| gguf_file::Value::String(v.into());
    let md = [
        ("general.architecture", s("llama")),
        ("general.type", s("adapter")),
        ("adapter.type", s("lora")),
    ];
    let md: Vec<(&str, &gguf_file::Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let t = [
        ("blk.0.attn_output.weight.lora_a", &qa),
        ("blk.0.attn_output.weight.lora_b", &qb),
    ];
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &md, &t).unwrap();
}

/// A mismatched adapter (another architecture, another depth, other
/// dimensions), a truncated one, a model given as an adapter, and requests
/// naming an unknown adapter or a bad scale: each a clear error, the adapters
/// already loaded kept, and the model still answering.
#[tokio::test]
async fn bad_adapters_and_requests_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_in(Tiny::Llama, 2, dir.path());
    let good = lora(Tiny::Llama, LORA_A, "a", dir.path());
    let llm = LocalLlm::load(&base, LlmOptions::default()).unwrap();
    llm.load_adapter("a", &good).unwrap();
    let expect = greedy_answer(&llm, "Magpies", &[AdapterChoice::new("a")]).await;

    let err = |r: Result<_, LlmError>| -> String {
        match r {
            Ok(_) => panic!("a bad adapter was loaded"),
            Err(e) => e.to_string(),
        }
    };
    // made for another architecture
    let qwen = lora(Tiny::Qwen2, LORA_A, "a", dir.path());
    let e = err(llm.load_adapter("q", &qwen));
    assert!(e.contains("qwen2") && e.contains("llama"), "{e}");
    // made for a deeper model
    let shallow =
        LocalLlm::load(&tiny_in(Tiny::Llama, 1, dir.path()), LlmOptions::default()).unwrap();
    let e = err(shallow.load_adapter("a", &good));
    assert!(e.contains("blk.1.") && e.contains("no such matrix"), "{e}");
    // other dimensions
    let odd = dir.path().join("odd.gguf");
    write_misshapen(&odd);
    let e = err(llm.load_adapter("odd", &odd));
    assert!(e.contains("256×256") && e.contains("256×100"), "{e}");
    // the output of a model that ties it to the embedding
    let q3 = LocalLlm::load(&tiny_in(Tiny::Qwen3, 2, dir.path()), LlmOptions::default()).unwrap();
    let e = err(q3.load_adapter("b", &lora(Tiny::Qwen3, LORA_B, "b", dir.path())));
    assert!(e.contains("output.weight"), "{e}");
    // truncated
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let e = err(llm.load_adapter("cut", &cut));
    assert!(e.contains("cut.gguf") && e.contains("LoRA adapter"), "{e}");
    // not a GGUF at all, and a model rather than an adapter
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"PK\x03\x04 not a gguf file").unwrap();
    let e = err(llm.load_adapter("junk", &junk));
    assert!(e.contains("junk.gguf"), "{e}");
    let e = err(llm.load_adapter("m", &base));
    assert!(e.contains("not \"adapter\""), "{e}");
    // names a request could not name
    for name in ["", "a+b", "x,y"] {
        err(llm.load_adapter(name, &good));
    }
    // a missing file
    let e = err(llm.load_adapter("gone", &dir.path().join("gone.gguf")));
    assert!(e.contains("gone.gguf"), "{e}");

    // requests: an unknown name, a bad scale
    let opts = |c: AdapterChoice| GenerationOptions {
        adapters: vec![c],
        ..GenerationOptions::greedy()
    };
    let e = llm
        .generate(
            Prompt::Text("Magpies".into()),
            opts(AdapterChoice::new("nope")),
        )
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("\"nope\"") && e.contains("loaded: a") && e.contains("--lora"),
        "{e}"
    );
    let e = llm
        .generate(
            Prompt::Text("Magpies".into()),
            opts(AdapterChoice {
                name: "a".into(),
                scale: f32::NAN,
            }),
        )
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("scale"), "{e}");

    // nothing was lost: the one adapter is still there and answers as before
    let names: Vec<String> = llm.adapters().into_iter().map(|a| a.name).collect();
    assert_eq!(names, vec!["a".to_string()]);
    assert_eq!(
        greedy_answer(&llm, "Magpies", &[AdapterChoice::new("a")]).await,
        expect
    );
    assert!(llm.unload_adapter("a"));
    assert!(!llm.unload_adapter("a"));
}
