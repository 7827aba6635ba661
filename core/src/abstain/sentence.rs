//! Answerability by sentence: the best match between the question and one
//! sentence of the passages found.

use std::sync::Arc;

use async_trait::async_trait;

use super::AnswerabilityScorer;
use crate::error::Result;
use crate::generate::ChatMessage;
use crate::types::Hit;

/// Answerability as the best cosine between the question (alone, and joined
/// with the recent user turns) and any one sentence of the top passages. The
/// sentence that answers a question tends to match it closely; a passage that
/// only shares the question's topic matches it loosely in every sentence.
///
/// Calibrated on scripts/make_chat_set.py's set with all-MiniLM-L6-v2
/// (BENCHMARKS.md, "Conversations"): see [`SentenceMatch::threshold_for`].
pub struct SentenceMatch {
    embedder: Arc<dyn crate::traits::Embedder>,
}

impl SentenceMatch {
    /// Passages whose sentences are read.
    pub const PASSAGES: usize = 5;
    /// Sentences read per passage.
    pub const SENTENCES: usize = 24;

    /// Match with `embedder` (the index's, so the sentences embed as the
    /// passages did).
    pub fn new(embedder: Arc<dyn crate::traits::Embedder>) -> Self {
        Self { embedder }
    }

    /// The threshold measured for an embedding model (by its id), where one
    /// was: below it, abstaining refused at most 10% of answerable turns.
    /// (docqa abstains on [`super::Answerability`], which adds term coverage.)
    pub fn threshold_for(model_id: &str) -> Option<f32> {
        let id = model_id.to_lowercase();
        id.contains("all-minilm-l6-v2").then_some(MINILM_THRESHOLD)
    }
}

/// all-MiniLM-L6-v2's threshold (BENCHMARKS.md, "Conversations").
const MINILM_THRESHOLD: f32 = 0.55;

/// The sentences of `text`: cut after `.`, `!`, `?` before a space, after
/// `。！？；` and at line ends; fragments under 4 characters dropped.
pub fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let next = chars.peek().map(|&(_, n)| n);
        let end = match c {
            '。' | '！' | '？' | '；' | '\n' => true,
            '.' | '!' | '?' => next.is_none_or(char::is_whitespace),
            _ => false,
        };
        if end {
            let cut = i + c.len_utf8();
            let s = text[start..cut].trim();
            if s.chars().count() >= 4 {
                out.push(s);
            }
            start = cut;
        }
    }
    let s = text[start..].trim();
    if s.chars().count() >= 4 {
        out.push(s);
    }
    out
}

/// Scale `v` to unit length (a zero vector stays zero).
pub(crate) fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// The passages answerability reads: the first [`SentenceMatch::PASSAGES`]
/// distinct ones of `hits`.
pub fn first_passages(hits: &[Hit]) -> Vec<&str> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for h in hits {
        if seen.len() == SentenceMatch::PASSAGES {
            break;
        }
        if seen.insert(&h.chunk.id) {
            out.push(h.chunk.text.as_str());
        }
    }
    out
}

/// The sentences answerability reads: those of [`first_passages`], at most
/// [`SentenceMatch::SENTENCES`] from each.
pub fn passage_sentences(hits: &[Hit]) -> Vec<&str> {
    first_passages(hits)
        .into_iter()
        .flat_map(|p| sentences(p).into_iter().take(SentenceMatch::SENTENCES))
        .collect()
}

impl SentenceMatch {
    /// Whether the embedder reads the question's language: an English model
    /// puts any two Chinese sentences close together, and its cosines say
    /// nothing about a language it was not trained on.
    pub fn reads(&self, question: &str) -> bool {
        let support = self.embedder.languages();
        support.coverage(crate::lang::detect(question).as_ref()).0 >= 1.0
    }

    /// Each of `texts`' cosine with the question alone and with the question
    /// joined with the recent user turns of `history` (the same as alone
    /// without a history), in order.
    pub async fn cosines(
        &self,
        question: &str,
        history: &[ChatMessage],
        texts: &[&str],
    ) -> Result<Vec<[f32; 2]>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let mut queries = vec![question.trim().to_string()];
        let turns = crate::conversation::recent_user_turns(history);
        if !turns.is_empty() {
            queries.push(crate::conversation::joined_query(&turns, question.trim()));
        }
        let texts: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
        let mut q = self.embedder.embed_queries(&queries).await?;
        let mut s = self.embedder.embed(&texts).await?;
        q.iter_mut().chain(s.iter_mut()).for_each(|v| normalize(v));
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        let (alone, joined) = (&q[0], q.last().expect("one query at least"));
        Ok(s.iter()
            .map(|sv| [dot(alone, sv), dot(joined, sv)])
            .collect())
    }

    /// The best cosine between the question (alone, and joined with the
    /// recent user turns of `history`) and one of `texts`; 0 without texts.
    pub async fn best_cosine(
        &self,
        question: &str,
        history: &[ChatMessage],
        texts: &[&str],
    ) -> Result<f32> {
        if texts.is_empty() {
            return Ok(0.0);
        }
        let all = self.cosines(question, history, texts).await?;
        Ok(all
            .iter()
            .flatten()
            .fold(f32::NEG_INFINITY, |b, &c| b.max(c)))
    }
}

#[async_trait]
impl AnswerabilityScorer for SentenceMatch {
    fn name(&self) -> &str {
        "sentence-match"
    }

    async fn score(
        &self,
        question: &str,
        history: &[ChatMessage],
        hits: &[Hit],
    ) -> Result<Option<f32>> {
        if !self.reads(question) {
            return Ok(None);
        }
        let texts = passage_sentences(hits);
        Ok(Some(self.best_cosine(question, history, &texts).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_are_cut_at_their_ends_in_both_scripts() {
        assert_eq!(
            sentences("Magpies are corvids. They chatter!  v1.2 is out\nNext line? ok"),
            [
                "Magpies are corvids.",
                "They chatter!",
                "v1.2 is out",
                "Next line?"
            ]
        );
        assert_eq!(
            sentences("喜鹊是鸦科鸟类。它们会叫！对吗？"),
            ["喜鹊是鸦科鸟类。", "它们会叫！"]
        );
        assert!(sentences("  ").is_empty());
    }

    #[tokio::test]
    async fn the_passage_with_the_questions_sentence_scores_higher() {
        use crate::testing::HashingEmbedder;
        use crate::types::test_hit as hit;
        let m = SentenceMatch::new(Arc::new(HashingEmbedder::new(256)));
        let q = "when did magpies learn to recognise mirrors";
        let on = [hit(
            "a",
            "Cats sleep. Magpies learn to recognise mirrors early.",
        )];
        let off = [hit("b", "Cats sleep all day. Dogs bark at the postman.")];
        let a = m.score(q, &[], &on).await.unwrap().unwrap();
        let b = m.score(q, &[], &off).await.unwrap().unwrap();
        assert!(a > b + 0.2, "{a} vs {b}");
        // The earlier turns count: "it" alone matches nothing.
        let history = [ChatMessage::new(
            crate::generate::Role::User,
            "tell me about magpies and mirrors",
        )];
        let alone = m.score("how early", &[], &on).await.unwrap().unwrap();
        let with = m.score("how early", &history, &on).await.unwrap().unwrap();
        assert!(with > alone, "{with} vs {alone}");
        assert_eq!(m.score(q, &[], &[]).await.unwrap(), Some(0.0));
        assert_eq!(
            SentenceMatch::threshold_for("sentence-transformers/all-MiniLM-L6-v2"),
            Some(MINILM_THRESHOLD)
        );
        assert_eq!(SentenceMatch::threshold_for("intfloat/e5-small"), None);
    }
}
