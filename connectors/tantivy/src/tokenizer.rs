//! A tokenizer for mixed Western and CJK text, chosen per script run:
//! - words split on non-alphanumerics (Latin, Cyrillic, Greek, ...);
//! - runs of Han characters segmented with jieba (search mode, for recall);
//! - Japanese (kana, and Han in a text that holds kana) and Korean (Hangul)
//!   as overlapping character bigrams, the usual dictionary-free fallback:
//!   Japanese is not segmented by spaces at all, and Korean words carry their
//!   particles (서울은, 서울에서), which bigrams match across.

use std::sync::OnceLock;

use jieba_rs::Jieba;
use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, Stemmer, StopWordFilter, TextAnalyzer, Token,
    TokenStream, Tokenizer,
};

/// Name under which the analyzer is registered in the index (v2: Japanese
/// and Korean as bigrams).
pub const ANALYZER: &str = "magpie-v2";

/// The name indexes written by the first analyzer carry.
pub const ANALYZER_V1: &str = "magpie";

/// The analyzer a field of `schema` was indexed with.
pub fn analyzer_of(
    schema: &tantivy::schema::Schema,
    field: tantivy::schema::Field,
) -> Option<&'static str> {
    let name = match schema.get_field_entry(field).field_type() {
        tantivy::schema::FieldType::Str(o) => o.get_indexing_options()?.tokenizer().to_string(),
        _ => return None,
    };
    [ANALYZER, ANALYZER_V1].into_iter().find(|a| *a == name)
}

fn jieba() -> &'static Jieba {
    static J: OnceLock<Jieba> = OnceLock::new();
    J.get_or_init(Jieba::new)
}

fn is_han(c: char) -> bool {
    matches!(c as u32, 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x2FA1F)
}

fn is_kana(c: char) -> bool {
    matches!(c as u32, 0x3040..=0x309F | 0x30A0..=0x30FF | 0x31F0..=0x31FF | 0xFF66..=0xFF9F)
}

fn is_hangul(c: char) -> bool {
    matches!(c as u32, 0xAC00..=0xD7AF | 0x1100..=0x11FF | 0x3130..=0x318F | 0xA960..=0xA97F | 0xD7B0..=0xD7FF)
}

/// Splits on anything that is not a letter or digit; Han runs go through
/// jieba, Japanese and Korean runs become bigrams.
#[derive(Clone, Default)]
pub struct MixedTokenizer;

/// Tokens produced by [`MixedTokenizer`].
pub struct VecTokenStream {
    tokens: Vec<Token>,
    next: usize,
}

impl TokenStream for VecTokenStream {
    fn advance(&mut self) -> bool {
        if self.next < self.tokens.len() {
            self.next += 1;
            true
        } else {
            false
        }
    }
    fn token(&self) -> &Token {
        &self.tokens[self.next - 1]
    }
    fn token_mut(&mut self) -> &mut Token {
        &mut self.tokens[self.next - 1]
    }
}

#[derive(PartialEq, Clone, Copy)]
enum Kind {
    Word,
    Han,
    Bigram,
    Other,
}

fn kind(c: char, japanese: bool) -> Kind {
    if is_han(c) {
        if japanese {
            Kind::Bigram
        } else {
            Kind::Han
        }
    } else if is_kana(c) || is_hangul(c) {
        Kind::Bigram
    } else if c.is_alphanumeric() {
        Kind::Word
    } else {
        Kind::Other
    }
}

impl Tokenizer for MixedTokenizer {
    type TokenStream<'a> = VecTokenStream;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> VecTokenStream {
        let mut tokens = Vec::new();
        let push = |from: usize, to: usize, tokens: &mut Vec<Token>| {
            let position = tokens.len();
            tokens.push(Token {
                offset_from: from,
                offset_to: to,
                position,
                text: text[from..to].to_string(),
                position_length: 1,
            });
        };
        let mut run: Option<(usize, Kind)> = None;
        let flush = |start: usize, end: usize, k: Kind, tokens: &mut Vec<Token>| match k {
            Kind::Word => push(start, end, tokens),
            Kind::Han => {
                let seg = &text[start..end];
                let base = seg.as_ptr() as usize;
                for w in jieba().cut_for_search(seg, true) {
                    let off = w.as_ptr() as usize - base;
                    push(start + off, start + off + w.len(), tokens);
                }
            }
            Kind::Bigram => {
                let chars: Vec<(usize, char)> = text[start..end].char_indices().collect();
                if chars.len() == 1 {
                    push(start, end, tokens);
                }
                for pair in chars.windows(2) {
                    let from = start + pair[0].0;
                    let to = start + pair[1].0 + pair[1].1.len_utf8();
                    push(from, to, tokens);
                }
            }
            Kind::Other => {}
        };
        // A text with kana is Japanese: its Han characters are kanji, which
        // jieba's Chinese dictionary would cut wrongly.
        let japanese = text.chars().any(is_kana);
        for (i, c) in text.char_indices() {
            let k = kind(c, japanese);
            match run {
                Some((_, rk)) if rk == k => {}
                Some((s, rk)) => {
                    flush(s, i, rk, &mut tokens);
                    run = Some((i, k));
                }
                None => run = Some((i, k)),
            }
        }
        if let Some((s, rk)) = run {
            flush(s, text.len(), rk, &mut tokens);
        }
        VecTokenStream { tokens, next: 0 }
    }
}

/// Common Chinese function words, dropped like English stop words.
const CHINESE_STOP_WORDS: &[&str] = &[
    "的",
    "了",
    "是",
    "在",
    "和",
    "与",
    "及",
    "或",
    "也",
    "有",
    "就",
    "不",
    "都",
    "而",
    "着",
    "这",
    "那",
    "之",
    "其",
    "把",
    "被",
    "让",
    "给",
    "对",
    "从",
    "向",
    "吗",
    "呢",
    "吧",
    "啊",
    "呀",
    "哪",
    "哪个",
    "哪里",
    "什么",
    "怎么",
    "如何",
    "为什么",
    "一个",
    "这个",
    "那个",
];

/// The analyzer used for chunk text and queries: mixed tokenizer, lower case,
/// English and Chinese stop words removed, English (Snowball) stemming.
pub fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(MixedTokenizer)
        .filter(RemoveLongFilter::limit(48))
        .filter(LowerCaser)
        .filter(StopWordFilter::new(Language::English).expect("English stop words are built in"))
        .filter(StopWordFilter::remove(
            CHINESE_STOP_WORDS.iter().map(|s| s.to_string()),
        ))
        .filter(Stemmer::new(Language::English))
        .build()
}

/// The analyzed terms of `text`, in order.
pub fn terms(analyzer: &mut TextAnalyzer, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut ts = analyzer.token_stream(text);
    while ts.advance() {
        out.push(ts.token().text.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn english_is_stemmed_and_stopped() {
        let mut a = analyzer();
        assert_eq!(
            terms(&mut a, "The Running dogs, of COVID-19!"),
            ["run", "dog", "covid", "19"]
        );
    }

    #[test]
    fn chinese_is_segmented() {
        let mut a = analyzer();
        let t = terms(&mut a, "我来到北京清华大学");
        assert!(t.contains(&"北京".to_string()), "{t:?}");
        assert!(
            t.contains(&"清华大学".to_string()) || t.contains(&"清华".to_string()),
            "{t:?}"
        );
        let mixed = terms(&mut a, "Rust语言很快");
        assert!(
            mixed.contains(&"rust".to_string()) && mixed.contains(&"语言".to_string()),
            "{mixed:?}"
        );
    }

    #[test]
    fn japanese_and_korean_become_bigrams() {
        let mut a = analyzer();
        assert_eq!(
            terms(&mut a, "東京の天気"),
            ["東京", "京の", "の天", "天気"]
        );
        // particles attached to a Korean word still share its bigram
        let doc = terms(&mut a, "서울에서 만나요");
        let query = terms(&mut a, "서울은");
        assert!(
            doc.contains(&"서울".to_string()) && query.contains(&"서울".to_string()),
            "{doc:?} {query:?}"
        );
        // one character alone is kept
        assert_eq!(terms(&mut a, "ア"), ["ア"]);
        // Latin words beside them are still words
        let mixed = terms(&mut a, "Rustの本");
        assert!(
            mixed.contains(&"rust".to_string()) && mixed.contains(&"の本".to_string()),
            "{mixed:?}"
        );
    }

    proptest::proptest! {
        /// Every token is a non-empty slice of the text on character
        /// boundaries, whatever mix of scripts comes in.
        #[test]
        fn tokens_are_slices_of_the_text(text in "[a-zA-Z0-9 .,中文字東京のテスト서울에서\u{00A0}\u{3000}é]{0,40}") {
            let mut t = MixedTokenizer;
            let mut ts = t.token_stream(&text);
            while ts.advance() {
                let tok = ts.token();
                proptest::prop_assert!(text.is_char_boundary(tok.offset_from));
                proptest::prop_assert!(text.is_char_boundary(tok.offset_to));
                proptest::prop_assert!(tok.offset_from < tok.offset_to);
                proptest::prop_assert_eq!(&text[tok.offset_from..tok.offset_to], tok.text.as_str());
            }
        }
    }
}
