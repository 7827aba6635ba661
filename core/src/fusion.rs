//! Adaptive fusion: per query, how much the dense list counts in weighted
//! reciprocal-rank fusion, from evidence instead of a constant.
//!
//! The rule (the README's "How hybrid search weighs its parts"):
//!
//! 1. **Language prior.** The query's language, and the languages of the
//!    dense list's first hits (the corpus side), are checked against what the
//!    embedding model declares ([`LanguageSupport::coverage`]): 1 for a
//!    declared language, 0 for a language in a script none of the model's
//!    languages use, ½ for another language in a declared script. The prior
//!    is the smaller of the query's and the hits' coverage.
//! 2. **Agreement.** The share of the dense top 10 that BM25's top 10 also
//!    holds. Where the prior is between 0 and 1, agreement earns the dense
//!    list back its weight: `w = prior + (1 − prior) · agreement`. A prior
//!    of 0 (a script the model was never trained on) gives weight 0: such a
//!    model ranks close to noise, and on CMRC 2018 even its agreeing votes
//!    reordered BM25's hits for the worse far more often than for the better.
//! 3. **BM25** keeps weight 1: its terms either match or they do not, in any
//!    language its analyzer segments.
//!
//! With the defaults (an English model, English text) both weights are 1, so
//! the fusion is the usual RRF.

use std::collections::HashSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::lang::{detect, Detected, LanguageSupport};
use crate::traits::Embedder;
use crate::types::Hit;

/// How many of each list's first hits the agreement and the corpus check read.
pub const AGREEMENT_DEPTH: usize = 10;

/// The weights one query got, and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FusionWeights {
    /// Weight of the dense list.
    pub dense: f32,
    /// Weight of the BM25 list.
    pub bm25: f32,
    /// The query's detected language.
    pub query_language: Option<Detected>,
    /// Coverage of the query's language by the embedding model (0 to 1).
    pub query_coverage: f32,
    /// Mean coverage of the dense list's first hits' languages (0 to 1).
    pub hits_coverage: f32,
    /// Share of the dense top 10 also in the BM25 top 10.
    pub agreement: f32,
    /// Sentences saying what decided the weights.
    pub reasons: Vec<String>,
}

/// Weighs dense against BM25 per query (see the module docs for the rule).
#[derive(Clone, Default)]
pub struct AdaptiveFusion {
    support: LanguageSupport,
    embedder: Option<Arc<dyn Embedder>>,
}

impl std::fmt::Debug for AdaptiveFusion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdaptiveFusion")
            .field("support", &self.support)
            .finish()
    }
}

impl AdaptiveFusion {
    /// Fusion for an embedding model that declares `support`.
    pub fn new(support: LanguageSupport) -> Self {
        Self {
            support,
            embedder: None,
        }
    }

    /// Fusion for `embedder`: its declared languages, and where it declares
    /// none, its tokenizer's coverage of each query
    /// ([`Embedder::token_coverage`]).
    pub fn for_embedder(embedder: Arc<dyn Embedder>) -> Self {
        Self {
            support: embedder.languages(),
            embedder: Some(embedder),
        }
    }

    /// What the model declares.
    pub fn support(&self) -> &LanguageSupport {
        &self.support
    }

    /// How far the embedding model covers `query` alone (0 to 1), its
    /// detected language, and why: the first step of [`Self::weigh`], for
    /// callers deciding before they have the lists.
    pub fn query_coverage(&self, query: &str) -> (f32, Option<Detected>, Vec<String>) {
        let query_language = detect(query);
        let (mut coverage, why) = self.support.coverage(query_language.as_ref());
        let mut reasons = vec![format!("query: {why}")];
        if self.support == LanguageSupport::Unknown {
            if let Some(c) = self.embedder.as_ref().and_then(|e| e.token_coverage(query)) {
                coverage = c.clamp(0.0, 1.0);
                reasons.push(format!(
                    "the tokenizer knows {:.0}% of the query's tokens",
                    coverage * 100.0
                ));
            }
        }
        (coverage, query_language, reasons)
    }

    /// The weights for `query`, given both lists (best first).
    pub fn weigh(&self, query: &str, dense: &[Hit], bm25: &[Hit]) -> FusionWeights {
        let (query_coverage, query_language, mut reasons) = self.query_coverage(query);

        let mut sum = 0.0;
        let mut n = 0;
        let mut worst: Option<String> = None;
        // Only a model that names its languages can be out of its depth on
        // the hits; otherwise detecting their languages is wasted work.
        let declared = matches!(self.support, LanguageSupport::Only(_));
        for hit in dense.iter().take(AGREEMENT_DEPTH).filter(|_| declared) {
            let d = detect(&hit.chunk.text);
            if d.is_none() {
                continue;
            }
            let (c, why) = self.support.coverage(d.as_ref());
            if c < 1.0 && worst.is_none() {
                worst = Some(why);
            }
            sum += c;
            n += 1;
        }
        let hits_coverage = if n == 0 { 1.0 } else { sum / n as f32 };
        if let Some(w) = worst {
            reasons.push(format!(
                "dense hits: {:.0}% covered ({w})",
                hits_coverage * 100.0
            ));
        }

        let agreement = agreement(dense, bm25);
        let prior = query_coverage.min(hits_coverage);
        let weight = if dense.is_empty() || bm25.is_empty() {
            // Only one list has anything: fusion is that list whatever the weights.
            1.0
        } else if prior <= 0.0 {
            // Out of its depth: measured on CMRC 2018, letting agreement earn
            // weight back here reordered BM25's hits for the worse 24 times
            // as often as for the better.
            0.0
        } else {
            prior + (1.0 - prior) * agreement
        };
        if prior <= 0.0 {
            reasons.push("dense weight 0: the model does not cover this language".into());
        } else if prior < 1.0 {
            reasons.push(format!(
                "dense weight {weight:.2} = prior {prior:.2} + (1 − prior) × agreement {agreement:.2}"
            ));
        }
        FusionWeights {
            dense: weight,
            bm25: 1.0,
            query_language,
            query_coverage,
            hits_coverage,
            agreement,
            reasons,
        }
    }
}

/// Share of `a`'s first [`AGREEMENT_DEPTH`] chunks that `b`'s first
/// [`AGREEMENT_DEPTH`] also hold (0 when either is empty).
pub fn agreement(a: &[Hit], b: &[Hit]) -> f32 {
    let top_b: HashSet<&str> = b
        .iter()
        .take(AGREEMENT_DEPTH)
        .map(|h| h.chunk.id.as_str())
        .collect();
    let top_a: Vec<&str> = a
        .iter()
        .take(AGREEMENT_DEPTH)
        .map(|h| h.chunk.id.as_str())
        .collect();
    let depth = top_a.len().min(top_b.len());
    if depth == 0 {
        return 0.0;
    }
    let shared = top_a.iter().filter(|id| top_b.contains(*id)).count();
    shared as f32 / depth as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::test_hit as hit;

    const ZH: &str = "北京是中华人民共和国的首都，也是全国的政治和文化中心。";
    const EN: &str = "Vitamin D deficiency is associated with an increased risk of fractures.";

    #[test]
    fn english_model_on_english_is_plain_rrf() {
        let f = AdaptiveFusion::new(LanguageSupport::from_card(&["en"]));
        let dense = vec![hit("a", EN), hit("b", EN)];
        let bm25 = vec![hit("c", EN)];
        let w = f.weigh("does vitamin d prevent fractures", &dense, &bm25);
        assert_eq!((w.dense, w.bm25), (1.0, 1.0));
        assert_eq!(w.agreement, 0.0);
    }

    #[test]
    fn english_model_on_chinese_gets_no_weight() {
        let f = AdaptiveFusion::new(LanguageSupport::from_card(&["en"]));
        let dense: Vec<Hit> = (0..10).map(|i| hit(&format!("d{i}"), ZH)).collect();
        let mut bm25: Vec<Hit> = (0..10).map(|i| hit(&format!("b{i}"), ZH)).collect();
        // even when it agrees with BM25 on some hits
        for (i, h) in bm25.iter_mut().enumerate().take(3) {
            *h = hit(&format!("d{i}"), ZH);
        }
        let w = f.weigh("北京是哪个国家的首都？", &dense, &bm25);
        assert_eq!(w.dense, 0.0, "{w:?}");
        assert!((w.agreement - 0.3).abs() < 1e-6, "{w:?}");
        assert_eq!(w.query_language.as_ref().unwrap().lang, "cmn");
        assert!(
            w.reasons.iter().any(|r| r.contains("cmn")),
            "{:?}",
            w.reasons
        );
    }

    #[test]
    fn a_partly_covered_language_earns_weight_by_agreement() {
        let f = AdaptiveFusion::new(LanguageSupport::from_card(&["en"]));
        let fr = "Les enfants jouent dans le jardin pendant que leurs parents préparent le repas du soir avec les légumes frais du marché. Nous sommes très heureux de vous accueillir chez nous.";
        let dense: Vec<Hit> = (0..10).map(|i| hit(&format!("d{i}"), EN)).collect();
        let mut bm25: Vec<Hit> = (0..10).map(|i| hit(&format!("b{i}"), EN)).collect();
        let w = f.weigh(fr, &dense, &bm25);
        assert_eq!((w.query_coverage, w.dense), (0.5, 0.5), "{w:?}");
        for (i, h) in bm25.iter_mut().enumerate().take(4) {
            *h = hit(&format!("d{i}"), EN);
        }
        let w = f.weigh(fr, &dense, &bm25);
        assert!((w.dense - 0.7).abs() < 1e-6, "{w:?}");
    }

    #[test]
    fn english_query_over_chinese_hits_is_out_of_depth_too() {
        let f = AdaptiveFusion::new(LanguageSupport::from_card(&["en"]));
        let dense: Vec<Hit> = (0..10).map(|i| hit(&format!("d{i}"), ZH)).collect();
        let bm25 = vec![hit("x", EN)];
        let w = f.weigh("which city is the capital of China", &dense, &bm25);
        assert_eq!(w.query_coverage, 1.0);
        assert_eq!(w.hits_coverage, 0.0);
        assert_eq!(w.dense, 0.0);
    }

    #[test]
    fn multilingual_and_undeclared_models_keep_full_weight() {
        let dense: Vec<Hit> = (0..10).map(|i| hit(&format!("d{i}"), ZH)).collect();
        let bm25 = vec![hit("x", ZH)];
        for s in [LanguageSupport::Multilingual, LanguageSupport::Unknown] {
            let w = AdaptiveFusion::new(s).weigh("北京是哪个国家的首都？", &dense, &bm25);
            assert_eq!(w.dense, 1.0);
        }
    }

    #[test]
    fn one_empty_list_leaves_the_other() {
        let f = AdaptiveFusion::new(LanguageSupport::from_card(&["en"]));
        let dense: Vec<Hit> = (0..3).map(|i| hit(&format!("d{i}"), ZH)).collect();
        assert_eq!(f.weigh("北京是哪个国家的首都？", &dense, &[]).dense, 1.0);
    }
}
