//! LoRA adapters switched per request on one base, in a test binary of its
//! own: the resident set it checks is this test's alone (tests of one binary
//! run side by side in one process).

use magpie_candle::{LlmOptions, LocalLlm};
use magpie_core::AdapterChoice;
use magpie_tests::tiny::{write_lora_for, TinyLora, LORA_A, LORA_B};
use magpie_tests::{gemma_path, greedy_answer};

/// Resident set size of this process, in bytes.
fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// Two adapters on one base (Gemma 3 270M, with random adapters of rank 8
/// (f16) and 32 (Q8_0) on every projection), requests alternating between none, A, B and
/// A+B (B at its own scale) over the same prompt, so the prefix cache would
/// be reused if it ignored the adapters: each answer equals the answer of a
/// fresh load with that set, and the base is loaded once: the process grows
/// by far less than the model when adapters load and while requests switch
/// (a copy of the weights per adapter set would add the model each time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapters_switch_per_request_on_one_base() {
    let dir = tempfile::tempdir().unwrap();
    let base = gemma_path();
    let (pa, pb) = (dir.path().join("a.gguf"), dir.path().join("b.gguf"));
    write_lora_for(&base, TinyLora { rank: 8, ..LORA_A }, &pa);
    write_lora_for(
        &base,
        TinyLora {
            output: false,
            ..LORA_B
        },
        &pb,
    );
    let model_bytes = std::fs::metadata(&base).unwrap().len();
    let prompt = "The magpie index keeps chunks in two stores, and";
    let a = AdapterChoice::new("a");
    let b = AdapterChoice {
        name: "b".into(),
        scale: 0.7,
    };
    let sets: Vec<(&str, Vec<AdapterChoice>)> = vec![
        ("none", vec![]),
        ("A", vec![a.clone()]),
        ("B", vec![b.clone()]),
        ("A+B", vec![a.clone(), b.clone()]),
    ];
    let order = [0usize, 1, 2, 3, 1, 0, 3, 2, 0, 2, 1, 3];
    let mib = |b: u64| b as f64 / 1048576.0;

    let llm = LocalLlm::load(&base, LlmOptions::default()).unwrap();
    let mut first = vec![greedy_answer(&llm, prompt, &[]).await];
    let loaded = rss();
    llm.load_adapter("a", &pa).unwrap();
    llm.load_adapter("b", &pb).unwrap();
    let with_adapters = rss();
    // warm up every set once, then measure the switching
    for (_, set) in &sets[1..] {
        first.push(greedy_answer(&llm, prompt, set).await);
    }
    let before = rss();
    let mut answers: Vec<Vec<String>> = vec![Vec::new(); sets.len()];
    for &i in &order {
        answers[i].push(greedy_answer(&llm, prompt, &sets[i].1).await);
    }
    let after = rss();
    println!(
        "RSS: {:.0} MiB with the base, +{:.1} MiB for two adapters, +{:.1} MiB over the first requests, +{:.1} MiB over 12 switching requests (the model file is {:.0} MiB)",
        mib(loaded),
        mib(with_adapters.saturating_sub(loaded)),
        mib(before.saturating_sub(with_adapters)),
        mib(after.saturating_sub(before)),
        mib(model_bytes)
    );
    // a copy of the base would add the whole model (seen alone: +15 MiB for
    // the adapters, +4 over the first requests, +1 over the switching)
    for (what, grown, bound) in [
        (
            "loading two adapters",
            with_adapters.saturating_sub(loaded),
            model_bytes / 4,
        ),
        (
            "the first request of each set",
            before.saturating_sub(with_adapters),
            model_bytes / 4,
        ),
        ("switching", after.saturating_sub(before), model_bytes / 8),
    ] {
        assert!(
            grown < bound,
            "RSS grew by {:.1} MiB in {what} (model: {:.0} MiB): is the base copied or reloaded?",
            mib(grown),
            mib(model_bytes)
        );
    }
    // every answer of a set is the same, and sets differ
    for (i, (name, _)) in sets.iter().enumerate() {
        for got in &answers[i] {
            assert_eq!(
                got, &first[i],
                "{name}: the answer changed between requests"
            );
        }
        println!("{name:5} → {:?}", first[i]);
    }
    for i in 1..sets.len() {
        assert_ne!(
            first[i], first[0],
            "{}: the adapter changed nothing",
            sets[i].0
        );
    }
    assert_ne!(first[1], first[2]);
    assert_ne!(first[3], first[1]);
    drop(llm);

    // a fresh load with only that set's adapters gives the same answer
    for (i, (name, set)) in sets.iter().enumerate() {
        let fresh = LocalLlm::load(&base, LlmOptions::default()).unwrap();
        for c in set {
            fresh
                .load_adapter(&c.name, if c.name == "a" { &pa } else { &pb })
                .unwrap();
        }
        assert_eq!(
            greedy_answer(&fresh, prompt, set).await,
            first[i],
            "{name}: switching on one base differs from a fresh load"
        );
    }
}
