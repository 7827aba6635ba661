//! Generation around the model: the sliding context window (in-place shift
//! with RoPE re-rotation against a full re-encode, generating well past the
//! window), stop sequences, cancellation, and bad input.

use futures::StreamExt;
use magpie_candle::llm::model::Transformer;
use magpie_candle::{LlmOptions, LocalLlm};
use magpie_core::{
    CancelToken, FinishReason, GenerationEvent, GenerationOptions, Generator, Prompt,
};
use magpie_tests::tiny::{tiny_in, Tiny};
use magpie_tests::{gemma_path, max_abs_diff};

/// With one layer the cached keys depend only on token and position, so
/// shifting the cache and re-rotating must give the logits of encoding the
/// kept tokens afresh (up to float error), for interleaved (llama),
/// half-split (qwen) and partial interleaved (GLM: half of each head) RoPE.
/// With an f32 cache that is float error alone; with f16 (the default) or
/// q8_0 the shifted keys are rounded twice, as in llama.cpp, and the logits
/// stay close.
#[test]
fn shifted_cache_matches_a_fresh_encode() {
    use magpie_candle::llm::KvCacheType;
    let dir = tempfile::tempdir().unwrap();
    for (kind, kv) in Tiny::ALL.into_iter().flat_map(|k| {
        [
            (k, KvCacheType::F32),
            (k, KvCacheType::F16),
            (k, KvCacheType::Q8_0),
        ]
    }) {
        let opts = LlmOptions {
            kv_cache: Some(kv),
            ..Default::default()
        };
        let llm = LocalLlm::load(&tiny_in(kind, 1, dir.path()), opts).unwrap();
        let m: &Transformer = llm.model();
        let prompt: Vec<u32> = llm
            .encode_prompt(&"Magpies hoard shiny things and remember faces. ".repeat(4))
            .unwrap();
        assert!(prompt.len() > 30, "{}", prompt.len());
        let next = prompt[5];
        let (n_keep, n_discard) = (4, 11);
        let mut cache = m.new_cache(256);
        m.forward(&prompt, &mut cache, false).unwrap();
        m.shift(&mut cache, n_keep, n_discard).unwrap();
        assert_eq!(cache.len(), prompt.len() - n_discard);
        let shifted = Transformer::to_vec(&m.forward(&[next], &mut cache, false).unwrap()).unwrap();

        let mut kept = prompt[..n_keep].to_vec();
        kept.extend_from_slice(&prompt[n_keep + n_discard..]);
        kept.push(next);
        let mut fresh_cache = m.new_cache(256);
        let fresh =
            Transformer::to_vec(&m.forward(&kept, &mut fresh_cache, false).unwrap()).unwrap();
        let d = max_abs_diff(&shifted, &fresh);
        println!(
            "{} ({kv}): shift vs re-encode max |diff| {d:.2e}",
            kind.arch()
        );
        if kv == KvCacheType::F32 {
            assert!(d < 2e-3, "{}: {d}", kind.arch());
        } else {
            let span = fresh.iter().fold(f32::MIN, |m, v| m.max(*v))
                - fresh.iter().fold(f32::MAX, |m, v| m.min(*v));
            assert!(d < 0.02 * span, "{} ({kv}): {d} of {span}", kind.arch());
            assert_eq!(
                shifted
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map(|x| x.0),
                fresh
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map(|x| x.0),
                "{} ({kv}): the top token moved",
                kind.arch()
            );
        }
        // and the shift did something: without it the logits differ
        let mut unshifted = m.new_cache(256);
        m.forward(&prompt, &mut unshifted, false).unwrap();
        let plain =
            Transformer::to_vec(&m.forward(&[next], &mut unshifted, false).unwrap()).unwrap();
        assert!(max_abs_diff(&plain, &fresh) > 1e-2);
    }
}

async fn run(
    llm: &LocalLlm,
    prompt: &str,
    opts: GenerationOptions,
) -> (String, magpie_core::GenerationSummary) {
    run_prompt(llm, Prompt::Text(prompt.into()), opts).await
}

async fn run_prompt(
    llm: &LocalLlm,
    prompt: Prompt,
    opts: GenerationOptions,
) -> (String, magpie_core::GenerationSummary) {
    let mut s = llm.generate(prompt, opts).await.unwrap();
    let mut text = String::new();
    while let Some(ev) = s.next().await {
        match ev.unwrap() {
            GenerationEvent::Delta { text: t } => text.push_str(&t),
            GenerationEvent::Done(sum) => return (text, sum),
        }
    }
    panic!("no summary")
}

/// Generate three times a small window, for both ways of sliding, on the real
/// model: no error, the window slid, the cache never grew past it.
#[tokio::test]
async fn generation_goes_well_past_the_window() {
    for in_place in [true, false] {
        let window = 64;
        let llm = LocalLlm::load(
            &gemma_path(),
            LlmOptions {
                context_window: Some(window),
                shift_in_place: in_place,
                ..Default::default()
            },
        )
        .unwrap();
        let opts = GenerationOptions {
            max_tokens: 3 * window,
            seed: Some(3),
            n_keep: Some(4),
            // the model may end its story early; the test is about going on
            ignore_eos: true,
            ..Default::default()
        };
        let (text, sum) = run(&llm, "Once upon a time, in a small village,", opts).await;
        println!(
            "in_place={in_place}: {} tokens, {} shifts, {:.1} tok/s",
            sum.usage.completion_tokens, sum.timings.context_shifts, sum.timings.tokens_per_sec
        );
        assert_eq!(sum.finish_reason, FinishReason::Length, "{sum:?}");
        assert_eq!(sum.usage.completion_tokens, 3 * window);
        assert!(sum.timings.context_shifts >= 3, "{sum:?}");
        assert!(!text.trim().is_empty());
        let (len, cap) = llm.cache_stats();
        assert!(len <= window && cap <= window, "cache grew to {len}/{cap}");
    }
}

#[tokio::test]
async fn a_stop_sequence_that_never_comes_ends_at_max_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let llm = LocalLlm::load(&tiny_in(Tiny::Qwen2, 2, dir.path()), LlmOptions::default()).unwrap();
    let opts = GenerationOptions {
        max_tokens: 40,
        stop: vec!["\u{1F99C} never \u{1F99C}".into()],
        seed: Some(1),
        ..Default::default()
    };
    let (_, sum) = run(&llm, "The index", opts).await;
    assert_eq!(sum.finish_reason, FinishReason::Length);
    assert_eq!(sum.usage.completion_tokens, 40);
}

#[tokio::test]
async fn stop_sequences_cut_the_real_model() {
    let llm = LocalLlm::load(&gemma_path(), LlmOptions::default()).unwrap();
    // greedy, then stop on the first word it would write
    let (free, _) = run(
        &llm,
        "The capital of France is",
        GenerationOptions {
            max_tokens: 12,
            ..GenerationOptions::greedy()
        },
    )
    .await;
    let word = free
        .split_whitespace()
        .nth(1)
        .expect("a few words")
        .to_string();
    let (cut, sum) = run(
        &llm,
        "The capital of France is",
        GenerationOptions {
            max_tokens: 12,
            stop: vec![word.clone()],
            ..GenerationOptions::greedy()
        },
    )
    .await;
    assert_eq!(sum.finish_reason, FinishReason::Stop);
    assert!(!cut.contains(&word), "{cut:?} still holds {word:?}");
    assert!(free.starts_with(&cut), "{free:?} vs {cut:?}");
}

#[tokio::test]
async fn cancellation_and_dropped_streams_stop_generation() {
    let dir = tempfile::tempdir().unwrap();
    let llm = LocalLlm::load(&tiny_in(Tiny::Llama, 2, dir.path()), LlmOptions::default()).unwrap();
    let cancel = CancelToken::new();
    let opts = GenerationOptions {
        max_tokens: 400,
        cancel: Some(cancel.clone()),
        seed: Some(2),
        ..Default::default()
    };
    let mut s = llm
        .generate(Prompt::Text("Hello".into()), opts)
        .await
        .unwrap();
    let mut deltas = 0;
    let sum = loop {
        match s.next().await.unwrap().unwrap() {
            GenerationEvent::Delta { .. } => {
                deltas += 1;
                cancel.cancel();
            }
            GenerationEvent::Done(sum) => break sum,
        }
    };
    assert_eq!(sum.finish_reason, FinishReason::Cancelled);
    assert!(deltas >= 1 && sum.usage.completion_tokens < 400);
    // dropping a stream frees the model for the next request
    let s = llm
        .generate(
            Prompt::Text("Hello".into()),
            GenerationOptions {
                max_tokens: 400,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    drop(s);
    let (_, sum) = run(
        &llm,
        "Hello",
        GenerationOptions {
            max_tokens: 3,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(sum.usage.completion_tokens, 3);
}

#[tokio::test]
async fn long_prompts_and_bad_n_keep() {
    let dir = tempfile::tempdir().unwrap();
    let llm = LocalLlm::load(
        &tiny_in(Tiny::Qwen3, 2, dir.path()),
        LlmOptions {
            context_window: Some(64),
            ..Default::default()
        },
    )
    .unwrap();
    let long = "configuration of the index ".repeat(80);
    // n_keep larger than the window: a clear error
    let mut s = llm
        .generate(
            Prompt::Text(long.clone()),
            GenerationOptions {
                n_keep: Some(100),
                max_tokens: 5,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let err = s.next().await.unwrap().unwrap_err().to_string();
    assert!(
        err.contains("n_keep (100) must be smaller than the context window (64)"),
        "{err}"
    );
    // a prompt longer than the window: its middle is left out, generation works
    let (_, sum) = run(
        &llm,
        &long,
        GenerationOptions {
            max_tokens: 10,
            n_keep: Some(8),
            ..Default::default()
        },
    )
    .await;
    assert!(sum.usage.prompt_tokens > 64);
    assert_eq!(sum.usage.completion_tokens, 10);
    // empty prompts and bad options are refused before generating
    assert!(llm
        .generate(Prompt::Text(String::new()), GenerationOptions::default())
        .await
        .is_err());
    assert!(llm
        .generate(
            Prompt::Text("x".into()),
            GenerationOptions {
                top_p: 2.0,
                ..Default::default()
            }
        )
        .await
        .is_err());
}

#[test]
fn corrupt_truncated_and_foreign_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = tiny_in(Tiny::Llama, 1, dir.path());
    let bytes = std::fs::read(&good).unwrap();
    // truncated in the tensor data
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = LocalLlm::load(&cut, LlmOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("truncated"), "{e}");
    // truncated in the header
    std::fs::write(&cut, &bytes[..100]).unwrap();
    let e = LocalLlm::load(&cut, LlmOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not a usable GGUF"), "{e}");
    // not a GGUF at all
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"this is a text file, not a model").unwrap();
    let e = LocalLlm::load(&junk, LlmOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not a usable GGUF"), "{e}");
    // random bytes after a valid magic
    let mut noise = b"GGUF\x03\x00\x00\x00".to_vec();
    let mut rng = magpie_core::Rng::new(9);
    noise.extend((0..4096).map(|_| rng.next_u64() as u8));
    std::fs::write(&junk, &noise).unwrap();
    assert!(LocalLlm::load(&junk, LlmOptions::default()).is_err());
    // an architecture magpie does not run
    let mut c =
        candle_core::quantized::gguf_file::Content::read(&mut std::fs::File::open(&good).unwrap())
            .unwrap();
    c.metadata.insert(
        "general.architecture".into(),
        candle_core::quantized::gguf_file::Value::String("mamba".into()),
    );
    let other = dir.path().join("mamba.gguf");
    {
        let md: Vec<(&str, &candle_core::quantized::gguf_file::Value)> =
            c.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut src = std::fs::File::open(&good).unwrap();
        let tensors: Vec<(String, candle_core::quantized::QTensor)> = c
            .tensor_infos
            .keys()
            .map(|n| {
                (
                    n.clone(),
                    c.tensor(&mut src, n, &candle_core::Device::Cpu).unwrap(),
                )
            })
            .collect();
        let tr: Vec<(&str, &candle_core::quantized::QTensor)> =
            tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        candle_core::quantized::gguf_file::write(
            &mut std::fs::File::create(&other).unwrap(),
            &md,
            &tr,
        )
        .unwrap();
    }
    let e = LocalLlm::load(&other, LlmOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("\"mamba\" is not supported")
            && e.contains("chatglm, gemma3, glm4, llama, qwen2, qwen3"),
        "{e}"
    );
}

const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// A chat longer than the window loses whole old turns (never the system
/// message, never a tool result without its call), and generation on it goes
/// past the window cutting at message boundaries.
#[tokio::test]
async fn long_chats_drop_whole_turns() {
    use magpie_core::{ChatMessage, Role};
    let dir = tempfile::tempdir().unwrap();
    let llm = LocalLlm::load(
        &tiny_in(Tiny::Qwen2, 2, dir.path()),
        LlmOptions {
            context_window: Some(160),
            chat_template: Some(CHATML.into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(llm.has_chat_template());
    let mut chat = vec![ChatMessage::new(Role::System, "You answer from the index.")];
    for i in 0..12 {
        chat.push(ChatMessage::new(
            Role::User,
            format!("question {i} about the configuration file"),
        ));
        chat.push(ChatMessage::new(
            Role::Assistant,
            format!("call search for {i}"),
        ));
        chat.push(ChatMessage::new(
            Role::Tool,
            format!("result {i}: install notes and upgrade notes"),
        ));
        chat.push(ChatMessage::new(
            Role::Assistant,
            format!("answer {i} from the notes"),
        ));
    }
    let opts = GenerationOptions {
        max_tokens: 40,
        ..Default::default()
    };
    let (ids, n_keep, bounds) = llm.render_chat(&chat, &opts).unwrap();
    assert!(ids.len() <= 160 - 40, "{}", ids.len());
    let text = llm.tokenizer().decode_with_specials(&ids).unwrap();
    assert!(
        text.starts_with("<|im_start|>system\nYou answer from the index.<|im_end|>"),
        "{text}"
    );
    assert!(text.contains("answer 11 from the notes"));
    assert!(!text.contains("question 0 "));
    // every kept turn is whole: a tool result appears only with its call
    for i in 0..12 {
        assert_eq!(
            text.contains(&format!("call search for {i}<")),
            text.contains(&format!("result {i}:")),
            "turn {i} split: {text}"
        );
    }
    assert!(n_keep > 5 && n_keep < ids.len());
    assert!(!bounds.is_empty() && bounds.windows(2).all(|w| w[0] < w[1]));
    assert!(bounds.iter().all(|&b| b > n_keep && b < ids.len()));
    // generation past the window on the chat
    let (_, sum) = run_prompt(
        &llm,
        Prompt::Chat(chat.clone()),
        GenerationOptions {
            max_tokens: 300,
            seed: Some(4),
            ignore_eos: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(sum.finish_reason, FinishReason::Length, "{sum:?}");
    assert!(sum.timings.context_shifts >= 1, "{sum:?}");
    let (len, cap) = llm.cache_stats();
    assert!(len <= 160 && cap <= 160);
}

fn top(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]));
    idx.truncate(k);
    idx
}

/// Decoding one token at a time (the fused step, reading the cache in place)
/// gives the logits of running the whole sequence as one prompt (the fused
/// prompt), bit for bit: on the tiny model and on Gemma, past its 512-token
/// local window too. Both do the same arithmetic in the same order (the
/// kernels' tiles give each token its one-token values; attention takes the
/// keys in order), so how a prompt is split into calls changes nothing.
#[test]
fn decode_steps_match_a_full_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let long = "Magpies hoard shiny things, remember faces, and build domed nests. ".repeat(50);
    let short = "The magpie index keeps chunks in two stores, and the catalog";
    let tiny_llama = tiny_in(Tiny::Llama, 2, dir.path());
    for (path, text) in [
        (gemma_path(), short),
        // past Gemma's 512-token local window: local layers read a window of the cache
        (gemma_path(), long.as_str()),
        (tiny_llama.clone(), short),
        (tiny_llama, &long[..1200]),
    ] {
        let llm = LocalLlm::load(&path, LlmOptions::default()).unwrap();
        let m = llm.model();
        let ids = llm.encode_prompt(text).unwrap();
        let n = ids.len();
        let mut cache = m.new_cache(1024);
        m.forward(&ids[..n - 3], &mut cache, false).unwrap();
        m.forward(&ids[n - 3..n - 2], &mut cache, false).unwrap();
        m.forward(&ids[n - 2..n - 1], &mut cache, false).unwrap();
        let stepped =
            Transformer::to_vec(&m.forward(&ids[n - 1..], &mut cache, false).unwrap()).unwrap();
        let mut fresh = m.new_cache(1024);
        let whole = Transformer::to_vec(&m.forward(&ids, &mut fresh, false).unwrap()).unwrap();
        let d = max_abs_diff(&stepped, &whole);
        println!(
            "{} ({n} tokens): stepped vs whole max |diff| {d:.2e}",
            path.display()
        );
        assert_eq!(top(&stepped, 5), top(&whole, 5));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(
            bits(&stepped) == bits(&whole),
            "{}: max |diff| {d}",
            path.display()
        );
    }
}

/// The fused one-token step (magpie's decoder on the CPU) against the generic
/// path over candle ops, on every layout, and one thread against the pool:
/// the same logits bit for bit (the two paths do the same arithmetic in the
/// same order; on Gemma a reordered sum flips greedy tokens within 12 steps).
/// Gemma goes past its 512-token local window, so local layers read a window.
#[test]
fn fused_decode_matches_the_generic_path_on_any_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let long = "Magpies hoard shiny things, remember faces, and build domed nests. ".repeat(40);
    let mut cases = Vec::new();
    for kind in Tiny::ALL {
        cases.push((tiny_in(kind, 2, dir.path()), long[..600].to_string()));
    }
    cases.push((gemma_path(), long.clone()));
    for (path, text) in cases {
        let llm = LocalLlm::load(&path, LlmOptions::default()).unwrap();
        let m = llm.model();
        assert!(
            m.fused_decode(),
            "{}: the fused step is off",
            path.display()
        );
        let ids = llm.encode_prompt(&text).unwrap();
        let mut caches: Vec<_> = (0..3).map(|_| m.new_cache(1024)).collect();
        let mut next = Vec::new();
        for cache in caches.iter_mut() {
            let l = m.forward(&ids, cache, false).unwrap();
            next.push(Transformer::to_vec(&l).unwrap());
        }
        assert!(next.iter().all(|n| n == &next[0]));
        let mut token = top(&next[0], 1)[0] as u32;
        for step in 0..12 {
            // 0: fused on the pool, 1: fused on one thread, 2: generic
            let mut out = Vec::new();
            for (i, cache) in caches.iter_mut().enumerate() {
                m.set_fused_decode(i < 2);
                m.set_decode_threads(if i == 1 { Some(1) } else { None });
                let l = m.forward(&[token], cache, false).unwrap();
                out.push(Transformer::to_vec(&l).unwrap());
            }
            m.set_fused_decode(true);
            m.set_decode_threads(None);
            let at = format!(
                "{} ({} prompt tokens) step {step}",
                path.display(),
                ids.len()
            );
            assert_eq!(out[0], out[1], "{at}: one thread against the pool");
            assert_eq!(out[0], out[2], "{at}: fused against generic");
            token = top(&out[0], 1)[0] as u32;
        }
    }
}

/// The fused prompt (magpie's own prompt pass on the CPU) against the generic
/// path over candle ops, on every layout (biases, q/k norms, post norms,
/// both RoPE layouts, grouped heads, GLM's split matrices) and on Gemma past
/// its local window: the same cache before the first attention, bit for bit;
/// the same logits up to the order of the attention's sums (candle multiplies
/// every query by every key, then masks).
#[test]
fn fused_prompt_matches_the_generic_path_on_every_layout() {
    let dir = tempfile::tempdir().unwrap();
    let long = "Magpies hoard shiny things, remember faces, and build domed nests. ".repeat(50);
    let mut cases = Vec::new();
    for kind in Tiny::ALL {
        cases.push((tiny_in(kind, 2, dir.path()), long[..900].to_string(), true));
    }
    cases.push((gemma_path(), long.clone(), false));
    for (path, text, tiny) in cases {
        let llm = LocalLlm::load(&path, LlmOptions::default()).unwrap();
        let m = llm.model();
        let ids = llm.encode_prompt(&text).unwrap();
        let mut out = Vec::new();
        let mut caches = Vec::new();
        for fused in [true, false] {
            m.set_fused_decode(fused);
            let mut cache = m.new_cache(1024);
            // in two calls, the second after cached positions
            let half = ids.len() / 2;
            m.forward(&ids[..half], &mut cache, false).unwrap();
            let l = m.forward(&ids[half..], &mut cache, false).unwrap();
            out.push(Transformer::to_vec(&l).unwrap());
            caches.push(cache);
        }
        m.set_fused_decode(true);
        let d = max_abs_diff(&out[0], &out[1]);
        let at = format!("{} ({} tokens)", path.display(), ids.len());
        let range = out[1].iter().fold(f32::MIN, |m, v| m.max(*v))
            - out[1].iter().fold(f32::MAX, |m, v| m.min(*v));
        println!(
            "{at}: fused vs generic prompt max |diff| {d:.2e} (logits span {range:.1}), top 3 {:?} vs {:?}",
            top(&out[0], 3),
            top(&out[1], 3)
        );
        // layer 0's keys come before any attention: norms, projections
        // (with biases, q/k norms), RoPE and the cache write, bit for bit
        let keys = |c: &magpie_candle::llm::model::KvCache| {
            let k = c
                .keys(0)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_dtype(candle_core::DType::F32)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            k.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        };
        assert!(
            keys(&caches[0]) == keys(&caches[1]),
            "{at}: layer 0's keys differ"
        );
        // past it, the attention's order of sums moves some 8-bit activation
        // codes by one, and the layers carry that along
        if tiny {
            assert!(d <= 0.02 * range, "{at}: {d} of a span of {range}");
            assert_eq!(top(&out[0], 1), top(&out[1], 1), "{at}");
        } else {
            // Gemma's 18 layers amplify the attention's rounding through
            // 8-bit activation codes: the leading tokens agree
            let (a, b) = (top(&out[0], 5), top(&out[1], 5));
            assert!(
                a.iter().filter(|t| b.contains(t)).count() >= 4,
                "{at}: {a:?} vs {b:?}"
            );
        }
    }
}
