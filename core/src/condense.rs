//! Condensing a follow-up: asking the model for the question it stands for
//! ("When did they conquer England?" after "What did the Normans build in
//! Sicily?" → "When did the Normans conquer England?"), as LlamaIndex's
//! condense-question chat engine does. [`crate::HistoryMode::Condensed`]
//! searches with the rewrite; BENCHMARKS.md ("Condensing with the local
//! model") measures it against fusing the history.

use crate::error::Result;
use crate::generate::{ChatMessage, GenerationOptions, Generator, Prompt, Role};

/// The most characters of one turn a condensing prompt carries.
pub const TURN_CHARS: usize = 600;

/// The prompt that asks a model to rewrite `question`, asked after the user
/// turns `history` (oldest first), as a question that stands alone.
/// Each turn is cut to its first [`TURN_CHARS`] characters, so a pasted
/// document in the conversation cannot fill the model's context.
pub fn condense_prompt(history: &[String], question: &str) -> String {
    let line = |t: &str| {
        t.chars()
            .take(TURN_CHARS)
            .collect::<String>()
            .replace('\n', " ")
    };
    let mut p = String::from("Earlier questions:\n");
    for h in history {
        p.push_str("- ");
        p.push_str(&line(h));
        p.push('\n');
    }
    p.push_str("\nNew question: ");
    p.push_str(&line(question));
    p.push_str(
        "\n\nRewrite the new question so that it names what its \"it\", \"they\", \"he\" \
         or \"she\" refers to in the earlier questions. Reply with the rewritten question only.",
    );
    p
}

/// The standalone question in a model's reply to [`condense_prompt`]: its
/// first non-empty line, without a list mark, a label or quotes. `None`
/// where the reply holds nothing that could be one: empty, far longer than
/// the question, or one of the earlier questions copied back (what small
/// models do when they cannot resolve the reference).
pub fn standalone_from(reply: &str, question: &str, history: &[String]) -> Option<String> {
    let line = reply.lines().map(str::trim).find(|l| !l.is_empty())?;
    let line = line
        .trim_start_matches(['-', '*', '•'])
        .trim_start()
        .trim_start_matches("Standalone:")
        .trim_start_matches("New question:")
        .trim()
        .trim_matches(|c| c == '"' || c == '“' || c == '”')
        .trim();
    let limit = 3 * question.chars().count() + 80;
    let copied = history.iter().any(|h| h.trim() == line) && line != question.trim();
    (!line.is_empty() && line.chars().count() <= limit && !copied).then(|| line.to_string())
}

/// Ask `generator` (greedily) for the question `question` stands for after
/// the user turns `history`; `None` when there is no history or the reply
/// is no such question ([`standalone_from`]), so the caller searches as
/// it would without one.
pub async fn condense(
    generator: &dyn Generator,
    history: &[String],
    question: &str,
) -> Result<Option<String>> {
    if history.is_empty() {
        return Ok(None);
    }
    let prompt = Prompt::Chat(vec![ChatMessage::new(
        Role::User,
        condense_prompt(history, question),
    )]);
    let opts = GenerationOptions {
        max_tokens: 64,
        ..GenerationOptions::greedy()
    };
    let reply = generator.complete(prompt, opts).await?;
    Ok(standalone_from(&reply.text, question, history))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prompt_lists_the_turns_and_asks_for_the_last_one_alone() {
        let p = condense_prompt(&["Who were the Normans?".into()], "Where did they\nsettle?");
        assert!(
            p.starts_with("Earlier questions:\n- Who were the Normans?\n\nNew question: Where did they settle?\n"),
            "{p}"
        );
    }

    #[tokio::test]
    async fn the_model_is_asked_only_when_there_is_a_history() {
        let model = crate::testing::ScriptedGenerator::new([
            "When did the Normans conquer England?\nQ: more",
        ]);
        let q = "When did they conquer England?";
        assert_eq!(condense(&model, &[], q).await.unwrap(), None);
        assert!(model.prompts().is_empty());
        let history = ["What did the Normans build in Sicily?".to_string()];
        let got = condense(&model, &history, q).await.unwrap();
        assert_eq!(
            got.as_deref(),
            Some("When did the Normans conquer England?")
        );
        let Prompt::Chat(m) = &model.prompts()[0] else {
            panic!("a chat prompt")
        };
        assert_eq!(m[0].content, condense_prompt(&history, q));
    }

    #[test]
    fn a_pasted_document_does_not_fill_the_prompt() {
        let pasted = "长文".repeat(50_000);
        let p = condense_prompt(&[pasted.clone(), pasted.clone()], &pasted);
        assert!(p.chars().count() < 3 * TURN_CHARS + 400, "{}", p.len());
        assert!(p.ends_with("Reply with the rewritten question only."));
    }

    #[test]
    fn the_rewrite_is_the_reply_s_first_line_unless_it_is_none() {
        let q = "When did they conquer England?";
        let history = ["What did the Normans build in Sicily?".to_string()];
        let want = "When did the Normans conquer England?";
        for reply in [
            want.to_string(),
            format!("\n  {want}\nQ: and more"),
            format!("Standalone: \"{want}\""),
            format!("- {want}"),
            format!("“{want}”"),
        ] {
            assert_eq!(
                standalone_from(&reply, q, &history).as_deref(),
                Some(want),
                "{reply:?}"
            );
        }
        // the question itself, where nothing needed resolving
        assert_eq!(standalone_from(q, q, &history).as_deref(), Some(q));
        // nothing usable: empty, rambling, or an earlier question copied back
        assert_eq!(standalone_from("", q, &history), None);
        assert_eq!(standalone_from(" \n \"\" \n", q, &history), None);
        assert_eq!(standalone_from(&"words ".repeat(100), q, &history), None);
        assert_eq!(
            standalone_from(&format!("- {}", history[0]), q, &history),
            None
        );
    }
}
