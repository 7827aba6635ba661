//! `eval chat --answers`: turns answered end to end in their conversations.

use anyhow::Result;
use magpie_core::{ChatMessage, ConversationRetriever, HistoryMode};
use serde::Serialize;

use magpie::progress::bar;

use super::Turn;
use crate::Setup;

#[derive(Debug, Serialize)]
pub(super) struct Answered {
    pub answerable: usize,
    pub unanswerable: usize,
    pub f1: f64,
    pub abstain: f64,
    pub false_abstain: f64,
}

/// Whether an answer says the documents do not hold it (the prompt asks the
/// model to say it does not know).
fn says_unknown(text: &str) -> bool {
    let t = text.to_lowercase();
    [
        "don't know",
        "do not know",
        "don’t know",
        "not contain",
        "no information",
        "not mentioned",
        "cannot answer",
        "can't answer",
    ]
    .iter()
    .any(|p| t.contains(p))
}

/// Answer up to `n` turns (a third unanswerable where the set has them) in
/// their conversations, greedily.
pub(super) async fn answer_turns(
    setup: &dyn Setup,
    inner: &std::sync::Arc<dyn magpie_core::Retriever>,
    turns: &[Turn],
    n: usize,
    abstention: Option<magpie_core::AbstentionPolicy>,
    progress: bool,
) -> Result<Answered> {
    let llm = setup.generator()?;
    let unans: Vec<&Turn> = turns
        .iter()
        .filter(|t| t.answerability == "unanswerable")
        .take(n / 3)
        .collect();
    let ans: Vec<&Turn> = turns
        .iter()
        .filter(|t| t.answerability == "answerable" && !t.answers.is_empty())
        .take(n - unans.len())
        .collect();
    let pb = bar((unans.len() + ans.len()) as u64, "answering", progress);
    let (mut f1, mut false_abstain, mut abstain) = (0.0, 0usize, 0usize);
    for (t, answerable) in ans
        .iter()
        .map(|t| (*t, true))
        .chain(unans.iter().map(|t| (*t, false)))
    {
        pb.inc(1);
        let Some((last, retriever)) =
            ConversationRetriever::for_messages(inner.clone(), &t.messages, HistoryMode::default())
        else {
            continue;
        };
        let earlier: Vec<ChatMessage> = t.messages[..t.messages.len() - 1].to_vec();
        let opts = magpie_core::AnswerOptions {
            k: 6,
            max_context_tokens: 1000,
            few_shot: true,
            generation: magpie_core::GenerationOptions {
                max_tokens: 48,
                ..magpie_core::GenerationOptions::greedy()
            },
            history: earlier,
            clarify: true,
            abstention: abstention.clone(),
        };
        let answer = magpie_core::QueryPipeline::new(std::sync::Arc::new(retriever))
            .top_k(6)
            .answer(&last, llm.as_ref(), &opts)
            .await?;
        let unknown = !answer.decision.answers() || says_unknown(&answer.text);
        if answerable {
            false_abstain += unknown as usize;
            f1 += t
                .answers
                .iter()
                .map(|g| crate::qa::token_f1(&answer.text, g))
                .fold(0.0, f64::max);
        } else {
            abstain += unknown as usize;
        }
    }
    pb.finish_and_clear();
    Ok(Answered {
        answerable: ans.len(),
        unanswerable: unans.len(),
        f1: f1 / ans.len().max(1) as f64,
        abstain: abstain as f64 / unans.len().max(1) as f64,
        false_abstain: false_abstain as f64 / ans.len().max(1) as f64,
    })
}
