//! Knowing when not to answer: a question whose "it" nothing before it names
//! gets a clarifying question, and one the passages do not hold gets "the
//! documents do not say", with the nearest passages, instead of an invention.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::answer::Source;
use crate::error::Result;
use crate::generate::ChatMessage;
use crate::types::Hit;

/// What to do with a question, decided before the model writes anything.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Decision {
    /// Answer from the passages.
    #[default]
    Answer,
    /// Say the documents do not cover the question (`confidence` fell below
    /// the policy's threshold), and list the nearest passages.
    Abstain {
        /// The answerability score that fell short.
        confidence: f32,
        /// The threshold it fell short of.
        threshold: f32,
    },
    /// Ask back what a pronoun refers to: the question opens a conversation
    /// and names nothing its "it" could be.
    Clarify {
        /// The pronoun nothing names.
        pronoun: String,
    },
}

impl Decision {
    /// Whether the model should answer.
    pub fn answers(&self) -> bool {
        matches!(self, Decision::Answer)
    }
}

/// How well the passages found answer a question: higher is more likely.
/// Implementations read the passages (and may embed them, or ask a model).
#[async_trait]
pub trait AnswerabilityScorer: Send + Sync {
    /// A name for logs.
    fn name(&self) -> &str;
    /// The score of `hits` (best first) for `question`, asked after
    /// `history`; `None` when the scorer cannot tell (a question in a language
    /// its model does not read), and the question is answered.
    async fn score(
        &self,
        question: &str,
        history: &[ChatMessage],
        hits: &[Hit],
    ) -> Result<Option<f32>>;
}

/// Abstain when a scorer's answerability falls below a threshold.
#[derive(Clone)]
pub struct AbstentionPolicy {
    scorer: Arc<dyn AnswerabilityScorer>,
    threshold: f32,
}

impl std::fmt::Debug for AbstentionPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AbstentionPolicy")
            .field("scorer", &self.scorer.name())
            .field("threshold", &self.threshold)
            .finish()
    }
}

impl AbstentionPolicy {
    /// Abstain when `scorer` gives less than `threshold`.
    pub fn new(scorer: Arc<dyn AnswerabilityScorer>, threshold: f32) -> Self {
        Self { scorer, threshold }
    }

    /// The threshold.
    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// Answer or abstain, for `question` after `history` with `hits` found.
    pub async fn decide(
        &self,
        question: &str,
        history: &[ChatMessage],
        hits: &[Hit],
    ) -> Result<Decision> {
        if hits.is_empty() {
            // nothing found: the lowest finite score (JSON has no −∞)
            return Ok(Decision::Abstain {
                confidence: f32::MIN,
                threshold: self.threshold,
            });
        }
        let Some(confidence) = self.scorer.score(question, history, hits).await? else {
            return Ok(Decision::Answer);
        };
        Ok(if confidence < self.threshold {
            Decision::Abstain {
                confidence,
                threshold: self.threshold,
            }
        } else {
            Decision::Answer
        })
    }
}

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
    const SENTENCES: usize = 24;

    /// Match with `embedder` (the index's, so the sentences embed as the
    /// passages did).
    pub fn new(embedder: Arc<dyn crate::traits::Embedder>) -> Self {
        Self { embedder }
    }

    /// The threshold measured for an embedding model (by its id), where one
    /// was: below it, abstaining refused at most 10% of answerable turns.
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
        // An English model puts any two Chinese sentences close together: its
        // cosines say nothing about a language it was not trained on.
        let support = self.embedder.languages();
        if support.coverage(crate::lang::detect(question).as_ref()).0 < 1.0 {
            return Ok(None);
        }
        let mut queries = vec![question.trim().to_string()];
        let turns = crate::conversation::recent_user_turns(history);
        if !turns.is_empty() {
            queries.push(crate::conversation::joined_query(&turns, question.trim()));
        }
        let mut seen = std::collections::HashSet::new();
        let mut texts: Vec<String> = Vec::new();
        for h in hits {
            if seen.len() == Self::PASSAGES {
                break;
            }
            if seen.insert(&h.chunk.id) {
                texts.extend(
                    sentences(&h.chunk.text)
                        .into_iter()
                        .take(Self::SENTENCES)
                        .map(str::to_string),
                );
            }
        }
        if texts.is_empty() {
            return Ok(Some(0.0));
        }
        let mut q = self.embedder.embed_queries(&queries).await?;
        let mut s = self.embedder.embed(&texts).await?;
        q.iter_mut().chain(s.iter_mut()).for_each(|v| normalize(v));
        let mut best = f32::NEG_INFINITY;
        for qv in &q {
            for sv in &s {
                best = best.max(qv.iter().zip(sv).map(|(a, b)| a * b).sum::<f32>());
            }
        }
        Ok(Some(best))
    }
}

/// English pronouns that point back at something named before.
const PRONOUNS: &[&str] = &[
    "it", "its", "they", "their", "them", "he", "his", "him", "she", "her",
];

/// "is it true", "it takes": an "it" that refers to nothing.
const DUMMY_IT: &[&str] = &[
    "it true",
    "it possible",
    "it necessary",
    "it important",
    "it worth",
    "it take",
    "it takes",
    "it took",
    "it mean",
    "it means",
];

/// Chinese pronouns (他们 and the like start with these).
const CJK_PRONOUNS: &[char] = &['它', '他', '她', '其'];

/// The pronoun in `question` that nothing before it names, when the question
/// is asked with no conversation before it: "What was the theme of it?", "他
/// 什么时候出生？". `None` when every pronoun follows a name ("How old was
/// John Elway when he retired?") or there is none.
///
/// Measured on scripts/make_chat_set.py's set: flags 75% of follow-ups asked
/// alone and 4% of first questions as SQuAD wrote them (some of which do lean
/// on a title the reader was shown).
pub fn unresolved_reference(question: &str) -> Option<String> {
    let q = question.trim();
    if let Some((i, c)) = q.char_indices().find(|(_, c)| CJK_PRONOUNS.contains(c)) {
        // A Chinese question that opens with its pronoun ("它的首都…", "他们
        // 为什么…"): nothing before it can be the name.
        let before = q[..i].chars().filter(|c| c.is_alphanumeric()).count();
        if before <= 2 && !(c == '其' && q[i..].starts_with("其他")) && !q[i..].starts_with("他人")
        {
            let end = q[i..]
                .char_indices()
                .nth(if q[i..].chars().nth(1) == Some('们') {
                    2
                } else {
                    1
                })
                .map_or(q.len(), |(j, _)| i + j);
            return Some(q[i..end].to_string());
        }
    }
    let words: Vec<&str> = q
        .split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '’' || c == '-'))
        .filter(|w| !w.is_empty())
        .collect();
    let lower = q.to_lowercase();
    if DUMMY_IT.iter().any(|d| contains_words(&lower, d)) {
        return None;
    }
    for (i, w) in words.iter().enumerate() {
        let lw = w.to_lowercase();
        if !PRONOUNS.contains(&lw.as_str()) {
            continue;
        }
        // A name (a capitalised word after the first, or a number) before
        // the pronoun may be what it refers to.
        let named = words[..i].iter().enumerate().any(|(j, w)| {
            let c = w.chars().next().unwrap_or(' ');
            (j > 0 && c.is_uppercase()) || c.is_ascii_digit()
        });
        return if named { None } else { Some(lw) };
    }
    None
}

fn contains_words(text: &str, phrase: &str) -> bool {
    text.match_indices(phrase).any(|(i, m)| {
        let before = text[..i].chars().next_back();
        let after = text[i + m.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

/// Whether `text` is mostly Chinese, Japanese or Korean script.
fn is_cjk(text: &str) -> bool {
    let (mut cjk, mut other) = (0usize, 0usize);
    for c in text.chars().filter(|c| c.is_alphanumeric()) {
        if matches!(c as u32, 0x3040..=0x30FF | 0x3400..=0x9FFF | 0xAC00..=0xD7AF | 0xF900..=0xFAFF)
        {
            cjk += 1;
        } else {
            other += 1;
        }
    }
    cjk > 0 && cjk * 2 >= other
}

/// The nearest passages, one per document, in order: "[n] source".
fn nearest(sources: &[Source], n: usize) -> Vec<String> {
    let mut seen: Vec<&str> = Vec::new();
    let mut out = Vec::new();
    for s in sources {
        if !seen.contains(&s.source.as_str()) {
            seen.push(&s.source);
            out.push(format!("[{}] {}", s.number, s.source));
        }
        if out.len() == n {
            break;
        }
    }
    out
}

/// The reply for a decision other than [`Decision::Answer`], in the
/// question's language; `sources` are the passages found.
pub fn reply_for(decision: &Decision, question: &str, sources: &[Source]) -> String {
    let zh = is_cjk(question);
    let near = nearest(sources, 3);
    let listed = |sep: &str| near.join(sep);
    match decision {
        Decision::Answer => String::new(),
        Decision::Abstain { .. } if zh => {
            if near.is_empty() {
                "文档中没有找到这个问题的答案。".to_string()
            } else {
                format!(
                    "文档中没有找到这个问题的答案。最接近的段落：{}。",
                    listed("；")
                )
            }
        }
        Decision::Abstain { .. } => {
            if near.is_empty() {
                "The documents do not cover this question.".to_string()
            } else {
                format!(
                    "The documents do not cover this question. The nearest passages: {}.",
                    listed("; ")
                )
            }
        }
        Decision::Clarify { pronoun } if zh => format!(
            "您说的“{pronoun}”指的是什么？请在问题里写出它的名字{}。",
            if near.is_empty() {
                String::new()
            } else {
                format!("（可能相关的文档：{}）", listed("；"))
            }
        ),
        Decision::Clarify { pronoun } => format!(
            "What does “{pronoun}” refer to? This question starts the conversation, so nothing \
             before it says; ask again with the name{}.",
            if near.is_empty() {
                String::new()
            } else {
                format!(" (documents that may be about it: {})", listed("; "))
            }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pronoun_nothing_names_is_unresolved() {
        for (q, p) in [
            ("What was the theme of it?", "it"),
            ("When did they conquer England?", "they"),
            ("What did he do with Wardenclyffe?", "he"),
            ("How old was she?", "she"),
            ("他什么时候出生的？", "他"),
            ("它们生活在哪里？", "它们"),
        ] {
            assert_eq!(unresolved_reference(q).as_deref(), Some(p), "{q}");
        }
        for q in [
            "How old was John Elway when he played in Super Bowl XXXIII?",
            "How many games did the Broncos lose during their 2015 season?",
            "Is it true that magpies recognise themselves?",
            "How long does it take to pay a car in cash?",
            "What do magpies eat?",
            "李白的诗中他最喜欢哪一首？",
            "其他国家怎么样？",
            "",
        ] {
            assert_eq!(unresolved_reference(q), None, "{q}");
        }
    }

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

    #[test]
    fn replies_speak_the_questions_language_and_list_the_nearest_documents() {
        let src = |n: usize, s: &str| Source {
            number: n,
            chunk_id: "c".into(),
            doc_id: "d".into(),
            source: s.into(),
            span: Default::default(),
            heading_path: vec![],
            score: 1.0,
            text: "t".into(),
        };
        let sources = [src(1, "a.md"), src(2, "a.md"), src(3, "b.md")];
        let abstain = Decision::Abstain {
            confidence: 0.1,
            threshold: 0.2,
        };
        let en = reply_for(&abstain, "What is the speed of light?", &sources);
        assert!(en.starts_with("The documents do not cover"), "{en}");
        assert!(en.contains("[1] a.md; [3] b.md"), "{en}");
        let zh = reply_for(&abstain, "光速是多少？", &sources);
        assert!(zh.starts_with("文档中没有"), "{zh}");
        let ask = Decision::Clarify {
            pronoun: "it".into(),
        };
        let c = reply_for(&ask, "What is it?", &[]);
        assert!(c.contains("“it”") && c.ends_with("name."), "{c}");
        assert!(!Decision::Abstain {
            confidence: 0.0,
            threshold: 1.0
        }
        .answers());
    }
}
