//! Token-aware, structure-aware splitting with overlap.

use std::sync::Arc;

use magpie_core::{chunk_id_for, Chunk, Document, Span, Splitter, TokenCounter};

/// Counts words and punctuation as tokens, each CJK character as one token.
/// Used when no model tokenizer is at hand.
pub struct WordCounter;

fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0xAC00..=0xD7AF | 0x20000..=0x2FA1F)
}

impl TokenCounter for WordCounter {
    fn token_offsets(&self, text: &str) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut word: Option<usize> = None;
        for (i, c) in text.char_indices() {
            if c.is_alphanumeric() && !is_cjk(c) {
                if word.is_none() {
                    word = Some(i);
                }
                continue;
            }
            if let Some(s) = word.take() {
                out.push((s, i));
            }
            if !c.is_whitespace() {
                out.push((i, i + c.len_utf8()));
            }
        }
        if let Some(s) = word {
            out.push((s, text.len()));
        }
        out
    }
}

/// Splits each section of a document into chunks of at most `chunk_tokens` tokens
/// (counted by the embedding model's tokenizer), preferring paragraph, then line,
/// then sentence, then word boundaries, with `overlap_tokens` of overlap.
pub struct TokenSplitter {
    counter: Arc<dyn TokenCounter>,
    chunk_tokens: usize,
    overlap_tokens: usize,
}

impl TokenSplitter {
    /// A splitter counting with `counter`: 200-token chunks, 40 tokens of overlap.
    pub fn new(counter: Arc<dyn TokenCounter>) -> Self {
        Self {
            counter,
            chunk_tokens: 200,
            overlap_tokens: 40,
        }
    }

    /// Maximum tokens per chunk.
    pub fn chunk_tokens(mut self, n: usize) -> Self {
        self.chunk_tokens = n.max(8);
        self.overlap_tokens = self.overlap_tokens.min(self.chunk_tokens / 2);
        self
    }

    /// Tokens shared by consecutive chunks (at most half a chunk).
    pub fn overlap_tokens(mut self, n: usize) -> Self {
        self.overlap_tokens = n.min(self.chunk_tokens / 2);
        self
    }

    /// Byte ranges of the pieces of `text[start..end]`.
    fn split_range(&self, text: &str, start: usize, end: usize) -> Vec<(usize, usize)> {
        let body = &text[start..end];
        let toks: Vec<(usize, usize)> = self
            .counter
            .token_offsets(body)
            .into_iter()
            .filter(|&(a, b)| {
                a < b && b <= body.len() && body.is_char_boundary(a) && body.is_char_boundary(b)
            })
            .collect();
        let mut out = Vec::new();
        if toks.is_empty() {
            return out;
        }
        let size = self.chunk_tokens;
        let mut s = 0usize; // token index where the current chunk starts
        loop {
            let b0 = toks[s].0;
            if toks.len() - s <= size {
                out.push((start + b0, start + toks[toks.len() - 1].1));
                break;
            }
            let hard = toks[s + size].0; // first byte that must not be included
            let soft = toks[s + size / 2].0;
            let window = &body[soft..hard];
            let cut = best_break(window).map(|p| soft + p).unwrap_or(hard);
            let cut = if cut <= b0 { hard } else { cut };
            out.push((start + b0, start + cut));
            // first token at or after the cut
            let next = toks.partition_point(|t| t.0 < cut);
            let mut ns = next.saturating_sub(self.overlap_tokens).max(s + 1);
            // start the overlap at a word boundary
            while ns < next && ns > 0 && !body[..toks[ns].0].ends_with(char::is_whitespace) {
                ns += 1;
            }
            s = ns;
            if s >= toks.len() {
                break;
            }
        }
        out
    }
}

/// Byte offset just after the best natural break in `window`, if any.
fn best_break(window: &str) -> Option<usize> {
    if let Some(p) = window.rfind("\n\n") {
        return Some(p + 2);
    }
    if let Some(p) = window.rfind('\n') {
        return Some(p + 1);
    }
    let mut best = None;
    for pat in [". ", "? ", "! ", "; ", "。", "！", "？", "；"] {
        if let Some(p) = window.rfind(pat) {
            let e = p + pat.len();
            if best.is_none_or(|b| e > b) {
                best = Some(e);
            }
        }
    }
    if best.is_some() {
        return best;
    }
    // Just after the last whitespace character, whatever its width (U+00A0 is
    // two bytes, U+3000 three).
    window
        .char_indices()
        .rev()
        .find(|(_, c)| c.is_whitespace())
        .map(|(p, c)| p + c.len_utf8())
}

fn line_starts(text: &str) -> Vec<usize> {
    let mut v = vec![0];
    v.extend(text.match_indices('\n').map(|(i, _)| i + 1));
    v
}

fn line_of(starts: &[usize], byte: usize) -> usize {
    starts.partition_point(|s| *s <= byte)
}

impl Splitter for TokenSplitter {
    fn split(&self, doc: &Document) -> Vec<Chunk> {
        let text = &doc.text;
        let whole = [magpie_core::Section {
            heading_path: vec![],
            start: 0,
            end: text.len(),
        }];
        let sections = if doc.sections.is_empty() {
            &whole[..]
        } else {
            &doc.sections[..]
        };
        let starts = line_starts(text);
        let title = doc.title().map(str::to_string);
        let mut chunks = Vec::new();
        for sec in sections {
            let end = sec.end.min(text.len());
            if sec.start >= end || !text.is_char_boundary(sec.start) || !text.is_char_boundary(end)
            {
                continue;
            }
            for (b0, b1) in self.split_range(text, sec.start, end) {
                let piece = &text[b0..b1];
                let trimmed_start = b0 + (piece.len() - piece.trim_start().len());
                let trimmed_end = b1 - (piece.len() - piece.trim_end().len());
                if trimmed_start >= trimmed_end {
                    continue;
                }
                let index = chunks.len();
                chunks.push(Chunk {
                    id: chunk_id_for(&doc.id, &doc.content_hash, index),
                    doc_id: doc.id.clone(),
                    doc_hash: doc.content_hash.clone(),
                    source: doc.uri.clone(),
                    index,
                    text: text[trimmed_start..trimmed_end].to_string(),
                    span: Span {
                        byte_start: trimmed_start,
                        byte_end: trimmed_end,
                        line_start: line_of(&starts, trimmed_start),
                        line_end: line_of(&starts, trimmed_end - 1),
                        page_start: doc.page_of(trimmed_start),
                        page_end: doc.page_of(trimmed_end - 1),
                    },
                    heading_path: sec.heading_path.clone(),
                    title: title.clone(),
                    metadata: doc.metadata.clone(),
                });
            }
        }
        chunks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> Document {
        Document::from_text("t.txt", text)
    }

    #[test]
    fn word_counter_counts_words_punct_and_cjk() {
        let t = "Hello, world! 中文字";
        let toks = WordCounter.token_offsets(t);
        let words: Vec<&str> = toks.iter().map(|(a, b)| &t[*a..*b]).collect();
        assert_eq!(words, ["Hello", ",", "world", "!", "中", "文", "字"]);
    }

    #[test]
    fn short_text_is_one_chunk_with_exact_span() {
        let d = doc("  one short paragraph.\n");
        let chunks = TokenSplitter::new(Arc::new(WordCounter)).split(&d);
        assert_eq!(chunks.len(), 1);
        let c = &chunks[0];
        assert_eq!(c.text, "one short paragraph.");
        assert_eq!(&d.text[c.span.byte_start..c.span.byte_end], c.text);
        assert_eq!((c.span.line_start, c.span.line_end), (1, 1));
    }

    #[test]
    fn long_text_respects_size_spans_and_overlap() {
        let mut text = String::new();
        for p in 0..30 {
            for s in 0..5 {
                text.push_str(&format!(
                    "Paragraph {p} sentence {s} has some words in it. "
                ));
            }
            text.push_str("\n\n");
        }
        let d = doc(&text);
        let sp = TokenSplitter::new(Arc::new(WordCounter))
            .chunk_tokens(60)
            .overlap_tokens(10);
        let chunks = sp.split(&d);
        assert!(chunks.len() > 10, "{}", chunks.len());
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(c.index, i);
            assert_eq!(&d.text[c.span.byte_start..c.span.byte_end], c.text);
            assert!(WordCounter.count(&c.text) <= 60, "chunk {i} too long");
            assert!(c.span.line_start <= c.span.line_end);
        }
        // consecutive chunks overlap or touch: nothing is lost
        for w in chunks.windows(2) {
            assert!(
                w[1].span.byte_start <= w[0].span.byte_end + 2,
                "{:?} {:?}",
                w[0].span,
                w[1].span
            );
            assert!(w[1].span.byte_start > w[0].span.byte_start);
        }
        assert_eq!(
            chunks.last().unwrap().span.byte_end,
            d.text.trim_end().len()
        );
    }

    #[test]
    fn prefers_paragraph_breaks() {
        let para = "word ".repeat(30);
        let text = format!("{para}\n\n{para}\n\n{para}");
        let d = doc(&text);
        let chunks = TokenSplitter::new(Arc::new(WordCounter))
            .chunk_tokens(45)
            .overlap_tokens(0)
            .split(&d);
        assert_eq!(chunks.len(), 3);
        assert!(chunks.iter().all(|c| c.text.trim() == para.trim()));
    }

    #[test]
    fn text_without_spaces_is_cut_hard() {
        let text = "x".repeat(10) + &"中".repeat(500);
        let d = doc(&text);
        let chunks = TokenSplitter::new(Arc::new(WordCounter))
            .chunk_tokens(100)
            .split(&d);
        assert!(chunks.len() >= 5);
        for c in &chunks {
            assert!(WordCounter.count(&c.text) <= 100);
        }
    }

    #[test]
    fn sections_carry_heading_paths() {
        let text = "# A\nalpha\n## B\nbeta\n";
        let (sections, title) = crate::parse::markdown_sections(text);
        let mut d = doc(text);
        d.sections = sections;
        d.metadata.insert("title".into(), title.unwrap().into());
        let chunks = TokenSplitter::new(Arc::new(WordCounter)).split(&d);
        assert_eq!(chunks.len(), 2);
        assert_eq!(
            chunks[1].heading_path,
            vec!["A".to_string(), "B".to_string()]
        );
        assert_eq!(chunks[1].title.as_deref(), Some("A"));
        assert_eq!(chunks[1].span.line_start, 3);
    }
}
