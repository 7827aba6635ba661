//! BM25 as sparse vectors, for a Qdrant collection whose sparse vector has the
//! IDF modifier: the client writes each chunk's term-frequency part of BM25,
//! the server multiplies by the inverse document frequency it keeps per term,
//! and a query is the set of its terms with weight 1. The score of a chunk is
//! then `Σ idf(t) · tf(t)·(k1+1) / (tf(t) + k1·(1 − b + b·len/avg_len))`, BM25
//! with a fixed average length (the server does not know the corpus' average).
//!
//! Terms are those of the embedded keyword store's analyzer
//! ([`magpie_tantivy::tokenizer::analyzer`]: words lower-cased, English stop
//! words dropped and Snowball-stemmed, Chinese segmented by jieba, Japanese
//! and Korean as bigrams), hashed to 32-bit ids (FNV-1a), so both sides agree
//! without a vocabulary and the two stores match the same terms.

use std::collections::BTreeMap;

use tantivy::tokenizer::TextAnalyzer;

/// The BM25 parameters of the sparse encoding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bm25Params {
    /// Term-frequency saturation.
    pub k1: f32,
    /// Length normalisation.
    pub b: f32,
    /// Assumed average chunk length in terms (after stop words).
    pub avg_len: f32,
}

impl Default for Bm25Params {
    fn default() -> Self {
        // magpie's chunks are ~200 model tokens: about 100 terms once stop words go.
        Self {
            k1: 1.2,
            b: 0.75,
            avg_len: 100.0,
        }
    }
}

/// A sparse vector: sorted unique indices and their values.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SparseVec {
    /// Term ids, ascending.
    pub indices: Vec<u32>,
    /// Weights, one per index.
    pub values: Vec<f32>,
}

impl SparseVec {
    /// True when no term survived tokenizing.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// Turns text into BM25 sparse vectors (documents) and term sets (queries).
pub struct Bm25Encoder {
    params: Bm25Params,
    analyzer: TextAnalyzer,
}

impl std::fmt::Debug for Bm25Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bm25Encoder")
            .field("params", &self.params)
            .finish()
    }
}

impl Default for Bm25Encoder {
    fn default() -> Self {
        Self::new(Bm25Params::default())
    }
}

/// FNV-1a, 32 bits: the term id.
pub fn term_id(term: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in term.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

impl Bm25Encoder {
    /// An encoder with these parameters.
    pub fn new(params: Bm25Params) -> Self {
        Self {
            params,
            analyzer: magpie_tantivy::tokenizer::analyzer(),
        }
    }

    /// The parameters.
    pub fn params(&self) -> Bm25Params {
        self.params
    }

    /// The terms of `text`, as the keyword store's analyzer gives them.
    pub fn terms(&self, text: &str) -> Vec<String> {
        magpie_tantivy::tokenizer::terms(&mut self.analyzer.clone(), text)
    }

    /// The sparse vector of a chunk.
    pub fn document(&self, text: &str) -> SparseVec {
        let terms = self.terms(text);
        let len = terms.len() as f32;
        let mut tf: BTreeMap<u32, f32> = BTreeMap::new();
        for t in &terms {
            *tf.entry(term_id(t)).or_default() += 1.0;
        }
        let Bm25Params { k1, b, avg_len } = self.params;
        let norm = k1 * (1.0 - b + b * len / avg_len.max(1.0));
        let (indices, values) = tf
            .into_iter()
            .map(|(i, f)| (i, f * (k1 + 1.0) / (f + norm)))
            .unzip();
        SparseVec { indices, values }
    }

    /// The sparse vector of a query: its distinct terms, weight 1.
    pub fn query(&self, text: &str) -> SparseVec {
        let ids: std::collections::BTreeSet<u32> =
            self.terms(text).iter().map(|t| term_id(t)).collect();
        SparseVec {
            values: vec![1.0; ids.len()],
            indices: ids.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_are_stemmed_lowercase_and_without_stop_words() {
        let e = Bm25Encoder::default();
        assert_eq!(
            e.terms("The Running dogs, and a runner's RUNS!"),
            ["run", "dog", "runner", "s", "run"]
        );
    }

    #[test]
    fn document_weights_follow_bm25_tf() {
        let e = Bm25Encoder::new(Bm25Params {
            k1: 1.2,
            b: 0.75,
            avg_len: 4.0,
        });
        let v = e.document("apple apple pear plum");
        assert_eq!(v.indices.len(), 3);
        assert!(v.indices.windows(2).all(|w| w[0] < w[1]), "sorted, unique");
        let apple = v
            .indices
            .iter()
            .position(|&i| i == term_id("appl"))
            .unwrap();
        let pear = v
            .indices
            .iter()
            .position(|&i| i == term_id("pear"))
            .unwrap();
        // len == avg_len: norm = k1; tf 2 → 2·2.2/3.2, tf 1 → 2.2/2.2
        assert!((v.values[apple] - 2.0 * 2.2 / 3.2).abs() < 1e-6);
        assert!((v.values[pear] - 1.0).abs() < 1e-6);
        let longer = e.document("apple pear plum fig kiwi lime nut oat");
        let p2 = longer
            .indices
            .iter()
            .position(|&i| i == term_id("pear"))
            .unwrap();
        assert!(
            longer.values[p2] < v.values[pear],
            "longer chunks weigh a term less"
        );
    }

    #[test]
    fn queries_are_distinct_terms_weight_one() {
        let e = Bm25Encoder::default();
        let q = e.query("apples and apples of pears");
        assert_eq!(q.indices.len(), 2);
        assert_eq!(q.values, [1.0, 1.0]);
        assert!(e.query("the and of").is_empty());
    }

    #[test]
    fn chinese_japanese_and_korean_are_segmented_like_the_keyword_store() {
        let e = Bm25Encoder::default();
        let zh = e.terms("长城修筑的历史");
        assert!(
            zh.contains(&"长城".to_string()) && zh.contains(&"历史".to_string()),
            "{zh:?}"
        );
        assert!(e.terms("東京の天気").contains(&"天気".to_string()));
        assert!(e.terms("서울에서").contains(&"서울".to_string()));
        // a query shares terms with a document that holds its words
        let doc = e.document("长城是中国古代的军事防御工程，长城修筑的历史可上溯到西周时期。");
        let q = e.query("长城的历史");
        assert!(q.indices.iter().all(|i| doc.indices.contains(i)), "{q:?}");
    }
}
