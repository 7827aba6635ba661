//! Property tests over arbitrary and deliberately nasty Unicode (no-break and
//! ideographic spaces, other spaces, combining marks, ZWJ emoji, bidi marks,
//! NUL, lone CR, a BOM mid-text, 4-byte letters, text without whitespace) for
//! everything that slices text: the splitter (word counter and the embedding
//! model's tokenizer), Markdown/HTML/DOCX extraction and encoding detection,
//! the filter parser, the MOSS and JSON tool-call parsers, chat-template
//! rendering and the LLM tokenizer's round trip.
//!
//! The seed is fixed (proptest's default config reads PROPTEST_CASES; see the
//! README for a longer run: `PROPTEST_CASES=5000 cargo test -p magpie-tests --test unicode`).

use std::sync::{Arc, OnceLock};

use magpie_candle::{HfTokenCounter, LlmOptions, LocalLlm};
use magpie_core::{
    ChatMessage, Document, Filter, JsonFormat, MossFormat, Role, Splitter, TokenCounter,
    ToolFormat, ToolSpec,
};
use magpie_files::{decode::decode, office, parse, TokenSplitter, WordCounter};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// Pieces real-world text is made of, the awkward ones over-represented.
const PIECES: &[&str] = &[
    "word",
    "Magpie",
    "nest",
    "42",
    "3.14",
    ".",
    ",",
    "!",
    "?",
    ";",
    ". ",
    "\n",
    "\n\n",
    "\r",
    "\r\n",
    "\t",
    " ",
    "  ",
    "\u{a0}",
    "\u{3000}",
    "\u{2002}",
    "\u{2003}",
    "\u{2009}",
    "\u{200a}",
    "\u{202f}",
    "\u{205f}",
    "\u{1680}",
    "\u{2028}",
    "\u{2029}",
    "\u{85}",
    "\u{b}",
    "\u{c}",
    "e\u{301}",
    "\u{301}",
    "\u{20dd}",
    "👩\u{200d}👩\u{200d}👧",
    "🏳\u{fe0f}\u{200d}🌈",
    "\u{200d}",
    "\u{200b}",
    "\u{200f}",
    "\u{200e}",
    "\u{202e}",
    "שלום",
    "مرحبا",
    "\u{0}",
    "\u{feff}",
    "𝔘𝔫𝔦",
    "𠀀𠀁",
    "中文",
    "的",
    "。",
    "，",
    "！",
    "？",
    "；",
    "「引用」",
    "ｶﾀｶﾅ",
    "한국어",
    "# ",
    "## Heading\n",
    "```\n",
    "<p>",
    "</p>",
    "<h2>",
    "</h2>",
    "&amp;",
    "&#x3000;",
    "<br>",
    "<|Commands|>:",
    "<eoc>",
    "<tool_call>",
    "</tool_call>",
    "(",
    ")",
    "\"",
    "'",
    "=",
    "|",
    "{\"name\":",
    "\\",
    "\u{fffd}",
    "\u{10ffff}",
];

/// Text built from [`PIECES`], or fully arbitrary, or one piece repeated with
/// no ASCII whitespace at all (the shape that crashed the splitter).
fn nasty_text() -> impl Strategy<Value = String> {
    let pieces =
        prop::collection::vec(prop::sample::select(PIECES), 0..400).prop_map(|v| v.concat());
    let repeated = (
        prop::sample::select(PIECES),
        prop::sample::select(PIECES),
        1..600usize,
    )
        .prop_map(|(a, sep, n)| vec![a; n].join(sep));
    prop_oneof![4 => pieces, 2 => any::<String>(), 2 => repeated]
}

fn runner(cases: u32) -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(cases);
    TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    )
}

/// Every property the splitter promises, for one document. `covered`: the
/// counter gives every non-space character a token (the word counter), so the
/// chunks must cover the text and keep to the size exactly.
fn check_chunks(
    doc: &Document,
    counter: &'static dyn TokenCounter,
    max_tokens: usize,
    covered: bool,
) -> Result<(), TestCaseError> {
    let chunks = TokenSplitter::new(Arc::new(Borrowed(counter)))
        .chunk_tokens(max_tokens)
        .overlap_tokens(max_tokens / 5)
        .split(doc);
    let text = &doc.text;
    let mut covered_to = vec![false; text.len()];
    for (i, c) in chunks.iter().enumerate() {
        let (a, b) = (c.span.byte_start, c.span.byte_end);
        prop_assert!(
            a < b && b <= text.len(),
            "chunk {i}: {a}..{b} of {}",
            text.len()
        );
        prop_assert!(text.is_char_boundary(a) && text.is_char_boundary(b));
        prop_assert_eq!(&text[a..b], c.text.as_str());
        prop_assert_eq!(c.index, i);
        prop_assert_eq!(c.span.line_start, 1 + text[..a].matches('\n').count());
        prop_assert!(c.span.line_start <= c.span.line_end);
        // Cut at token boundaries of the whole text; a subword tokenizer may
        // count the cut-out piece on its own a little differently.
        let slack = if covered { 0 } else { max_tokens / 2 + 4 };
        prop_assert!(
            counter.count(&c.text) <= max_tokens + slack,
            "chunk {i} has {} tokens",
            counter.count(&c.text)
        );
        for flag in &mut covered_to[a..b] {
            *flag = true;
        }
    }
    if covered {
        for (i, ch) in text.char_indices() {
            if !ch.is_whitespace() {
                prop_assert!(covered_to[i], "{ch:?} at byte {i} is in no chunk");
            }
        }
    }
    Ok(())
}

/// A shared counter as the splitter's `Arc<dyn TokenCounter>`.
struct Borrowed(&'static dyn TokenCounter);
impl TokenCounter for Borrowed {
    fn token_offsets(&self, text: &str) -> Vec<(usize, usize)> {
        self.0.token_offsets(text)
    }
}

fn minilm_counter() -> &'static HfTokenCounter {
    static C: OnceLock<HfTokenCounter> = OnceLock::new();
    C.get_or_init(|| {
        HfTokenCounter::from_file(magpie_tests::minilm_dir().join("tokenizer.json"))
            .expect("MiniLM's tokenizer")
    })
}

#[test]
fn words_joined_by_no_break_or_ideographic_spaces_split_cleanly() {
    // The reports: 410 words joined by U+00A0 (web text) or U+3000 (Chinese
    // news), no newline, no sentence punctuation, split with the real tokenizer.
    for sep in ["\u{a0}", "\u{3000}", "\u{2003}", "\u{202f}"] {
        let words: Vec<String> = (0..410).map(|i| format!("word{i}")).collect();
        let doc = Document::from_text("nbsp.txt", words.join(sep));
        for counter in [minilm_counter() as &'static dyn TokenCounter, &WordCounter] {
            check_chunks(&doc, counter, 200, true).unwrap();
        }
        let chunks = TokenSplitter::new(Arc::new(WordCounter))
            .chunk_tokens(200)
            .split(&doc);
        assert!(chunks.len() >= 3, "{sep:?}: {}", chunks.len());
        // Cuts fall on the separators, not inside words.
        for c in &chunks {
            assert!(c.text.starts_with("word"), "{sep:?}: {:?}", &c.text[..10]);
        }
    }
}

#[test]
fn splitter_with_the_word_counter() {
    runner(1024)
        .run(&(nasty_text(), 8..120usize), |(text, max)| {
            let doc = Document::from_text("t.txt", text);
            check_chunks(&doc, &WordCounter, max, true)
        })
        .unwrap();
}

#[test]
fn splitter_with_the_embedding_models_tokenizer() {
    runner(256)
        .run(&(nasty_text(), 16..200usize), |(text, max)| {
            let doc = Document::from_text("t.txt", text);
            // The tokenizer may drop characters it has no token for (control
            // characters), so coverage is the word counter's property only.
            check_chunks(&doc, minilm_counter(), max, false)
        })
        .unwrap();
}

#[test]
fn markdown_and_html_sections_are_on_char_boundaries() {
    runner(1024)
        .run(&nasty_text(), |text| {
            let (sections, _title) = parse::markdown_sections(&text);
            let mut doc = Document::from_text("t.md", text.clone());
            for s in &sections {
                prop_assert!(s.start <= s.end && s.end <= text.len());
                prop_assert!(text.is_char_boundary(s.start) && text.is_char_boundary(s.end));
            }
            doc.sections = sections;
            check_chunks(&doc, &WordCounter, 40, false)?;

            let html = format!(
                "<html><title>{text}</title><body><h1>{text}</h1><p>{text}</p></body></html>"
            );
            let (out, sections, _title) = parse::html_to_text(&html);
            for s in &sections {
                prop_assert!(s.start <= s.end && s.end <= out.len());
                prop_assert!(out.is_char_boundary(s.start) && out.is_char_boundary(s.end));
            }
            let (out2, _, _) = parse::html_to_text(&text);
            prop_assert!(out2.len() <= 4 * text.len() + 16);
            Ok(())
        })
        .unwrap();
}

#[test]
fn encoding_detection_never_panics_and_keeps_utf8_text() {
    runner(1024)
        .run(&nasty_text(), |text| {
            if let Ok(d) = decode(text.as_bytes()) {
                if d.converted_from.is_none() {
                    let t = text.strip_prefix('\u{feff}').unwrap_or(&text);
                    prop_assert_eq!(d.text.as_str(), t);
                }
            }
            Ok(())
        })
        .unwrap();
    runner(1024)
        .run(&prop::collection::vec(any::<u8>(), 0..2000), |bytes| {
            let _ = decode(&bytes);
            Ok(())
        })
        .unwrap();
}

#[test]
fn docx_with_nasty_paragraphs_extracts_without_panicking() {
    runner(256)
        .run(&prop::collection::vec(nasty_text(), 1..6), |paras| {
            let escaped: Vec<String> = paras
                .iter()
                .map(|p| {
                    p.replace('&', "&amp;")
                        .replace('<', "&lt;")
                        .replace('>', "&gt;")
                })
                .collect();
            let items: Vec<(Option<&str>, &str)> = escaped
                .iter()
                .enumerate()
                .map(|(i, p)| ((i % 2 == 0).then_some("Heading1"), p.as_str()))
                .collect();
            let bytes = magpie_tests::docs::make_docx(&items);
            if let Ok((text, sections, _title)) = office::docx(&bytes) {
                for s in &sections {
                    prop_assert!(s.start <= s.end && s.end <= text.len());
                    prop_assert!(text.is_char_boundary(s.start) && text.is_char_boundary(s.end));
                }
            }
            // Arbitrary bytes as a DOCX or an EPUB: an error, never a panic.
            let _ = office::docx(paras.concat().as_bytes());
            let _ = office::epub(paras.concat().as_bytes());
            Ok(())
        })
        .unwrap();
}

#[test]
fn filter_clauses_parse_or_refuse_without_panicking() {
    runner(1024)
        .run(&(nasty_text(), nasty_text()), |(a, b)| {
            for clause in [
                a.clone(),
                format!("meta.{a}={b}"),
                format!("meta.x>={a}"),
                format!("source={a}"),
                format!("doc={a}|{b}"),
            ] {
                if let Ok(f) = Filter::parse_all([clause.as_str()]) {
                    let _ = f.to_string();
                }
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn tool_call_parsers_find_calls_on_char_boundaries() {
    let tools = vec![ToolSpec {
        name: "calculate".into(),
        description: "arithmetic".into(),
        parameters: serde_json::json!({
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"]
        }),
        provider: "test".into(),
    }];
    let formats: [&dyn ToolFormat; 2] = [&MossFormat, &JsonFormat];
    runner(1024)
        .run(&(nasty_text(), nasty_text()), |(a, b)| {
            for text in [
                format!("{a}<|Commands|>: Calculate(\"{b}\")\n{a}"),
                format!("{a}<|Commands|>: {b}<eoc>"),
                format!("{a}<tool_call>{{\"name\": \"calculate\", \"arguments\": {{\"expression\": \"{b}\"}}}}</tool_call>"),
                format!("{a}<tool_call>{b}</tool_call>{a}"),
                a.clone(),
            ] {
                for f in formats {
                    if let Some(found) = f.find_call(&text, &tools) {
                        prop_assert!(found.start <= found.end && found.end <= text.len());
                        prop_assert!(text.is_char_boundary(found.start));
                        prop_assert!(text.is_char_boundary(found.end));
                    }
                    let _ = f.result_text(&Ok(b.clone()));
                }
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn chat_template_and_llm_tokenizer_round_trip() {
    let llm = LocalLlm::load(
        &magpie_tests::gemma_path(),
        LlmOptions {
            context_window: Some(4096),
            ..Default::default()
        },
    )
    .expect("Gemma 3 270M");
    let tok = llm.tokenizer();
    runner(256)
        .run(&(nasty_text(), nasty_text()), |(a, b)| {
            let ids = tok
                .encode(&a)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back = tok
                .decode(&ids)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&back, &a, "ids {:?}", ids);
            let chat = [
                ChatMessage {
                    role: Role::System,
                    content: b.clone(),
                },
                ChatMessage {
                    role: Role::User,
                    content: a.clone(),
                },
            ];
            // Rendering either works or says why; a chat too long for the
            // window loses whole turns, never part of a character.
            if let Ok((ids, n_keep, ends)) = llm.render_chat(&chat, &Default::default()) {
                prop_assert!(n_keep <= ids.len());
                prop_assert!(ends.iter().all(|e| *e <= ids.len()));
                let text = tok
                    .decode(&ids)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                if !a.trim().is_empty() && ids.len() < 4000 {
                    prop_assert!(text.contains(a.trim()), "{text:?} lacks {a:?}");
                }
            }
            Ok(())
        })
        .unwrap();
}
