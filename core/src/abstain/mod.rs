//! Knowing when not to answer: a question whose "it" nothing before it names
//! gets a clarifying question, and one the passages do not hold gets "the
//! documents do not say", with the nearest passages, instead of an invention.

mod answerability;
mod clarify;
mod coverage;
mod sentence;

pub use answerability::{Answerability, AnswerabilityParts};
pub use clarify::unresolved_reference;
pub use coverage::term_coverage;
#[cfg(feature = "testing")]
pub(crate) use sentence::normalize;
pub use sentence::{passage_sentences, sentences, SentenceMatch};

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
