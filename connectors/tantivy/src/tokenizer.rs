//! A tokenizer for mixed Western and Chinese text: words split on non-alphanumerics,
//! runs of Han characters segmented with jieba (search mode, for recall).

use std::sync::OnceLock;

use jieba_rs::Jieba;
use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, Stemmer, StopWordFilter, TextAnalyzer, Token,
    TokenStream, Tokenizer,
};

/// Name under which the analyzer is registered in the index.
pub const ANALYZER: &str = "magpie";

fn jieba() -> &'static Jieba {
    static J: OnceLock<Jieba> = OnceLock::new();
    J.get_or_init(Jieba::new)
}

fn is_han(c: char) -> bool {
    matches!(c as u32, 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x2FA1F)
}

/// Splits on anything that is not a letter or digit; Han runs go through jieba.
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
    Other,
}

fn kind(c: char) -> Kind {
    if is_han(c) {
        Kind::Han
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
            Kind::Other => {}
        };
        for (i, c) in text.char_indices() {
            let k = kind(c);
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
}
