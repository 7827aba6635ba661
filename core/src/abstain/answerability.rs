//! The answerability docqa abstains on: sentence match and term coverage
//! together where both can be read, either alone where only one can, as one
//! calibrated score between 0 and 1 that is ½ at the measured threshold.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use super::coverage::term_coverage;
use super::sentence::{first_passages, passage_sentences, SentenceMatch};
use super::AnswerabilityScorer;
use crate::error::Result;
use crate::generate::ChatMessage;
use crate::traits::{Embedder, KeywordStore};
use crate::types::Hit;

/// What answerability read for one question: either part is `None` where it
/// could not be read (an embedder not measured or not reading the question's
/// language; a keyword store that cannot weigh terms).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct AnswerabilityParts {
    /// [`SentenceMatch`]'s best cosine.
    pub sentence: Option<f32>,
    /// [`term_coverage`] of the question with the recent user turns, in the
    /// best passage.
    pub coverage: Option<f32>,
}

/// How the parts were weighed, as measured (BENCHMARKS.md, "Knowing when not
/// to answer"): below `threshold`, abstaining refused at most 10% of
/// answerable turns on the calibration set.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Line {
    /// Weight of term coverage against the sentence cosine (0: cosine alone).
    coverage_weight: f32,
    /// Weight of the cosine (0: coverage alone).
    sentence_weight: f32,
    threshold: f32,
    /// Logistic slope: how fast the score goes from 0 to 1 around the
    /// threshold.
    slope: f32,
}

/// all-MiniLM-L6-v2's sentence match alone (the store cannot weigh terms).
const MINILM_SENTENCE: Line = Line {
    coverage_weight: 0.0,
    sentence_weight: 1.0,
    threshold: 0.55,
    slope: 20.0,
};

/// all-MiniLM-L6-v2's sentence match plus term coverage.
const MINILM_BOTH: Line = Line {
    coverage_weight: 0.5,
    sentence_weight: 1.0,
    threshold: 0.81,
    slope: 20.0,
};

/// Term coverage alone, for any embedder (the keyword store's analysis and
/// weights do not depend on it).
const COVERAGE: Line = Line {
    coverage_weight: 1.0,
    sentence_weight: 0.0,
    threshold: 0.37,
    slope: 10.0,
};

/// Whether the passages found answer a question, from two signals that need
/// no language model: the best cosine between the question and one sentence
/// of the passages ([`SentenceMatch`], where the embedder was measured and
/// reads the question's language), and how much of the question's rare words
/// (with the recent user turns') one passage holds ([`term_coverage`], where
/// the keyword store can weigh terms). A passage that only shares the
/// question's topic matches it loosely and holds its common words, not the
/// rare ones that say what is asked.
///
/// The score is logistic around the measured threshold: ½ there, towards 1
/// for passages that answer. [`Answerability::THRESHOLD`] is the measured
/// point for every combination.
pub struct Answerability {
    sentences: SentenceMatch,
    /// Whether the embedder's sentence cosines were measured (else only
    /// coverage is read).
    measured: bool,
    terms: Option<Arc<dyn KeywordStore>>,
}

impl Answerability {
    /// The measured threshold, whatever the parts read.
    pub const THRESHOLD: f32 = 0.5;

    /// Answerability with `embedder` (the index's) and, where given, the
    /// keyword store's term weights.
    pub fn new(embedder: Arc<dyn Embedder>, terms: Option<Arc<dyn KeywordStore>>) -> Self {
        let measured = SentenceMatch::threshold_for(embedder.model_id()).is_some();
        Self {
            sentences: SentenceMatch::new(embedder),
            measured,
            terms,
        }
    }

    /// Whether any question can be scored (else every question is answered).
    pub fn can_score(&self) -> bool {
        self.measured || self.terms.is_some()
    }

    /// The two signals for `question` after `history`, over `hits`.
    pub async fn parts(
        &self,
        question: &str,
        history: &[ChatMessage],
        hits: &[Hit],
    ) -> Result<AnswerabilityParts> {
        let sentence = if self.measured && self.sentences.reads(question) {
            let texts = passage_sentences(hits);
            Some(
                self.sentences
                    .best_cosine(question, history, &texts)
                    .await?,
            )
        } else {
            None
        };
        let coverage = match &self.terms {
            Some(store) => {
                let turns = crate::conversation::recent_user_turns(history);
                let asked = crate::conversation::joined_query(&turns, question.trim());
                term_coverage(store.as_ref(), &asked, &first_passages(hits))
            }
            None => None,
        };
        Ok(AnswerabilityParts { sentence, coverage })
    }

    /// The score of `parts`: `None` where neither part was read.
    pub fn combine(&self, parts: AnswerabilityParts) -> Option<f32> {
        let (line, s, c) = match (parts.sentence, parts.coverage) {
            (Some(s), Some(c)) => (MINILM_BOTH, s, c),
            (Some(s), None) => (MINILM_SENTENCE, s, 0.0),
            (None, Some(c)) => (COVERAGE, 0.0, c),
            (None, None) => return None,
        };
        let x = line.sentence_weight * s + line.coverage_weight * c;
        Some(1.0 / (1.0 + (-line.slope * (x - line.threshold)).exp()))
    }
}

#[async_trait]
impl AnswerabilityScorer for Answerability {
    fn name(&self) -> &str {
        "answerability"
    }

    async fn score(
        &self,
        question: &str,
        history: &[ChatMessage],
        hits: &[Hit],
    ) -> Result<Option<f32>> {
        let parts = self.parts(question, history, hits).await?;
        Ok(self.combine(parts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::HashingEmbedder;

    #[test]
    fn each_combination_is_one_half_at_its_measured_threshold() {
        // combining reads only the parts: any scorer will do
        let both = Answerability::new(Arc::new(HashingEmbedder::new(64)), None);
        let at = |s: Option<f32>, c: Option<f32>| {
            both.combine(AnswerabilityParts {
                sentence: s,
                coverage: c,
            })
        };
        let half = |v: Option<f32>| (v.unwrap() - 0.5).abs() < 1e-6;
        assert!(half(at(Some(MINILM_SENTENCE.threshold), None)));
        let t = MINILM_BOTH.threshold;
        assert!(half(at(
            Some(t - MINILM_BOTH.coverage_weight * 0.2),
            Some(0.2)
        )));
        assert!(half(at(None, Some(COVERAGE.threshold))));
        assert_eq!(at(None, None), None);
        // more of either is more answerable
        assert!(at(Some(0.7), Some(0.5)) > at(Some(0.6), Some(0.5)));
        assert!(at(Some(0.6), Some(0.6)) > at(Some(0.6), Some(0.5)));
        assert!(at(None, Some(0.9)).unwrap() > 0.9 && at(None, Some(0.0)).unwrap() < 0.1);
    }

    #[tokio::test]
    async fn coverage_alone_scores_where_the_embedder_was_not_measured() {
        let (store, hits) = super::super::coverage::indexed(&[
            "Magpies recognise themselves in mirrors.",
            "Magpies build domed nests.",
            "Magpies eat beetles and grain.",
        ])
        .await;
        let a = Answerability::new(
            Arc::new(HashingEmbedder::new(64)),
            Some(Arc::new(store) as Arc<dyn KeywordStore>),
        );
        assert!(a.can_score());
        let parts = a.parts("magpies mirrors", &[], &hits).await.unwrap();
        assert_eq!(
            parts.sentence, None,
            "the hashing embedder was not measured"
        );
        assert!(parts.coverage.unwrap() > 0.99, "{parts:?}");
        let on = a
            .score("magpies mirrors", &[], &hits)
            .await
            .unwrap()
            .unwrap();
        let off = a
            .score("magpies volcanoes", &[], &hits)
            .await
            .unwrap()
            .unwrap();
        assert!(
            on > Answerability::THRESHOLD && off < Answerability::THRESHOLD,
            "{on} {off}"
        );
        // the conversation's words count: "volcanoes" was asked about before
        let history = [ChatMessage::new(crate::generate::Role::User, "volcanoes")];
        let follow = a.parts("mirrors", &history, &hits).await.unwrap();
        let alone = a.parts("mirrors", &[], &hits).await.unwrap();
        assert!(follow.coverage < alone.coverage, "{follow:?} {alone:?}");
        // neither signal: nothing to score with
        let none = Answerability::new(Arc::new(HashingEmbedder::new(64)), None);
        assert!(!none.can_score());
        assert_eq!(
            none.score("magpies mirrors", &[], &hits).await.unwrap(),
            None
        );
    }
}
