//! Retrieval-augmented answers: pack the best chunks into the model's token
//! budget, prompt, generate, and map `[n]` citations back to their sources.

use std::collections::HashSet;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::abstain::{reply_for, unresolved_reference, AbstentionPolicy, Decision};
use crate::error::{Error, Result};
use crate::generate::{
    ChatMessage, FinishReason, GenerationOptions, GenerationSummary, Generator, Prompt, Role,
    Timings, Usage,
};
use crate::retrieve::QueryPipeline;
use crate::tools::ToolLoop;
use crate::types::{Hit, Span};

/// A passage given to the model, numbered as the prompt shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    /// The number the answer cites (`[1]`).
    pub number: usize,
    /// Chunk id.
    pub chunk_id: String,
    /// Document id.
    pub doc_id: String,
    /// Where the document came from (path, URL).
    pub source: String,
    /// Where in the document.
    pub span: Span,
    /// Headings above the chunk.
    pub heading_path: Vec<String>,
    /// Retrieval score.
    pub score: f32,
    /// The passage text.
    pub text: String,
}

/// An answer with its sources.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// The question asked.
    pub question: String,
    /// The generated answer.
    pub text: String,
    /// Sources the answer cites, in citation order.
    pub citations: Vec<Source>,
    /// Every passage the model was given.
    pub sources: Vec<Source>,
    /// Why generation ended.
    pub finish_reason: FinishReason,
    /// Token counts.
    pub usage: Usage,
    /// Generation timings.
    pub timings: Timings,
    /// Retrieval time, milliseconds.
    pub retrieval_ms: f64,
    /// Tools the model called while answering, in order.
    #[serde(default)]
    pub tool_calls: Vec<crate::tools::ToolCall>,
    /// Whether the model answered, or the pipeline said the documents do not
    /// cover the question, or asked what the question refers to.
    #[serde(default)]
    pub decision: Decision,
}

/// How answers are built.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AnswerOptions {
    /// Chunks retrieved before packing.
    pub k: usize,
    /// Most tokens of passages in the prompt (besides the model's budget).
    pub max_context_tokens: usize,
    /// Include a worked example so a base model answers from the passages.
    pub few_shot: bool,
    /// Generation options; stop sequences for the prompt shape are added.
    pub generation: GenerationOptions,
    /// The conversation before the question (user and assistant turns,
    /// oldest first): the recent turns go into the prompt within a third of
    /// the room left for passages; older ones drop whole.
    pub history: Vec<ChatMessage>,
    /// Ask what a pronoun refers to ("What was the theme of it?") when the
    /// question opens a conversation and names nothing it could be, instead
    /// of answering about whatever the search found.
    pub clarify: bool,
    /// Say the documents do not cover the question when the passages found
    /// score below this policy (see [`AbstentionPolicy`]); `None` always
    /// answers, and so does an answer with tools (a tool may know).
    #[serde(skip)]
    pub abstention: Option<AbstentionPolicy>,
}

impl Default for AnswerOptions {
    fn default() -> Self {
        Self {
            k: 8,
            max_context_tokens: 1500,
            few_shot: true,
            generation: GenerationOptions {
                max_tokens: 200,
                temperature: 0.2,
                ..GenerationOptions::default()
            },
            history: Vec::new(),
            clarify: true,
            abstention: None,
        }
    }
}

/// A question with its packed passages and prompt, ready to generate.
#[derive(Debug, Clone)]
pub struct PreparedAnswer {
    /// The question.
    pub question: String,
    /// Passages in the prompt.
    pub sources: Vec<Source>,
    /// What the model is given.
    pub prompt: Prompt,
    /// Generation options, with the prompt's stop sequences.
    pub options: GenerationOptions,
    /// Retrieval time, milliseconds.
    pub retrieval_ms: f64,
    /// Whether to generate at all (anything else is answered without the model).
    pub decision: Decision,
}

const INSTRUCTIONS: &str = "Answer the question using only the numbered passages. \
Cite the passages you use with their numbers in brackets, like [1]. \
If the passages do not contain the answer, say that you don't know.";

const EXAMPLE: &str = "Passages:\n[1] (notes/birds.md) The Eurasian magpie is one of the few \
animals known to recognise itself in a mirror.\n[2] (notes/garden.md) Water the tomatoes \
every morning in summer.\n\nQuestion: Which bird recognises itself in a mirror?\nAnswer: \
[1] The Eurasian magpie recognises itself in a mirror.\n\n";

fn passage_block(sources: &[Source]) -> String {
    let mut s = String::from("Passages:\n");
    for src in sources {
        s.push_str(&format!(
            "[{}] ({}) {}\n",
            src.number,
            src.source,
            src.text.split_whitespace().collect::<Vec<_>>().join(" ")
        ));
    }
    s
}

/// The prompt for `question` over `sources`, plain or chat.
pub fn build_prompt(question: &str, sources: &[Source], chat: bool, few_shot: bool) -> Prompt {
    build_prompt_in_conversation(question, sources, chat, few_shot, &[])
}

/// [`build_prompt`] after earlier turns of a conversation (user and assistant
/// messages, oldest first): chat messages of their own for a chat model, a
/// transcript before the passages for a base model.
pub fn build_prompt_in_conversation(
    question: &str,
    sources: &[Source],
    chat: bool,
    few_shot: bool,
    history: &[ChatMessage],
) -> Prompt {
    let question = question.trim();
    let turns = history
        .iter()
        .filter(|m| matches!(m.role, Role::User | Role::Assistant) && !m.content.trim().is_empty());
    if chat {
        let mut user = passage_block(sources);
        user.push_str(&format!("\nQuestion: {question}"));
        let mut messages = vec![ChatMessage::new(Role::System, INSTRUCTIONS)];
        messages.extend(turns.cloned());
        messages.push(ChatMessage::new(Role::User, user));
        Prompt::Chat(messages)
    } else {
        let mut p = format!("{INSTRUCTIONS}\n\n");
        if few_shot {
            p.push_str(EXAMPLE);
        }
        let mut said = String::new();
        for m in turns {
            let who = if m.role == Role::User {
                "User"
            } else {
                "Assistant"
            };
            said.push_str(&format!("{who}: {}\n", m.content.trim()));
        }
        if !said.is_empty() {
            p.push_str("Conversation so far:\n");
            p.push_str(&said);
            p.push('\n');
        }
        p.push_str(&passage_block(sources));
        p.push_str(&format!("\nQuestion: {question}\nAnswer:"));
        Prompt::Text(p)
    }
}

/// The most recent user and assistant turns whose tokens fit in `budget`,
/// oldest first; older turns drop whole, a user turn with its answer.
fn recent_turns(
    history: &[ChatMessage],
    budget: usize,
    generator: &dyn Generator,
) -> Result<Vec<ChatMessage>> {
    let turns: Vec<&ChatMessage> = history
        .iter()
        .filter(|m| matches!(m.role, Role::User | Role::Assistant) && !m.content.trim().is_empty())
        .collect();
    let mut kept = Vec::new();
    let mut used = 0usize;
    for m in turns.iter().rev() {
        let cost = generator.count_tokens(&m.content)? + 8;
        if used + cost > budget {
            break;
        }
        used += cost;
        kept.push((*m).clone());
    }
    kept.reverse();
    // Never start on an answer whose question was dropped.
    while kept.first().is_some_and(|m| m.role == Role::Assistant) {
        kept.remove(0);
    }
    Ok(kept)
}

/// Stop sequences that end an answer to the plain prompt (a base model goes
/// on inventing further questions otherwise).
pub fn plain_stops() -> Vec<String> {
    ["\nQuestion:", "\nPassages:", "\n\n", "\n[", "\nQ:"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Keep hits in rank order, dropping repeats (same chunk or same text), while
/// their tokens fit in `budget`; number them from 1.
pub fn pack_sources(
    hits: &[Hit],
    budget: usize,
    count: &dyn Fn(&str) -> Result<usize>,
) -> Result<Vec<Source>> {
    let mut out = Vec::new();
    let mut seen_ids = HashSet::new();
    let mut seen_text = HashSet::new();
    let mut used = 0usize;
    for h in hits {
        let c = &h.chunk;
        let norm = c.text.split_whitespace().collect::<Vec<_>>().join(" ");
        if norm.is_empty() || !seen_ids.insert(c.id.clone()) || !seen_text.insert(norm.clone()) {
            continue;
        }
        // "[n] (source) " plus the text
        let cost = count(&norm)? + count(&c.source)? + 6;
        if used + cost > budget {
            continue; // a shorter passage further down may still fit
        }
        used += cost;
        out.push(Source {
            number: out.len() + 1,
            chunk_id: c.id.clone(),
            doc_id: c.doc_id.clone(),
            source: c.source.clone(),
            span: c.span,
            heading_path: c.heading_path.clone(),
            score: h.score,
            text: c.text.clone(),
        });
    }
    Ok(out)
}

/// The passage numbers `text` cites (`[1]`, `[2, 3]`, `[1][4]`), first mention first.
pub fn cited_numbers(text: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'[' {
            if let Some(end) = text[i + 1..].find(']') {
                let inner = &text[i + 1..i + 1 + end];
                let nums: Option<Vec<usize>> = inner
                    .split([',', ';'])
                    .map(|p| p.trim().parse::<usize>().ok())
                    .collect();
                if let Some(nums) = nums {
                    for n in nums {
                        if !out.contains(&n) {
                            out.push(n);
                        }
                    }
                }
                i += end + 2;
                continue;
            }
        }
        i += 1;
    }
    out
}

impl PreparedAnswer {
    /// Build the answer from the generated text.
    pub fn finish(self, text: String, summary: GenerationSummary) -> Answer {
        let text = text.trim().to_string();
        let citations = cited_numbers(&text)
            .into_iter()
            .filter_map(|n| self.sources.iter().find(|s| s.number == n).cloned())
            .collect();
        Answer {
            question: self.question,
            text,
            citations,
            sources: self.sources,
            finish_reason: summary.finish_reason,
            usage: summary.usage,
            timings: summary.timings,
            retrieval_ms: self.retrieval_ms,
            tool_calls: Vec::new(),
            decision: self.decision,
        }
    }

    /// The answer without the model, when the decision is not to answer:
    /// the reply says why, and lists the nearest passages.
    fn declined(self, on_text: &mut (dyn FnMut(&str) + Send)) -> Answer {
        let text = reply_for(&self.decision, &self.question, &self.sources);
        on_text(&text);
        let mut answer = self.finish(
            text,
            GenerationSummary {
                finish_reason: FinishReason::Stop,
                usage: Usage::default(),
                timings: Timings::default(),
            },
        );
        answer.citations.clear();
        answer
    }

    /// Generate the answer with tools: the model may call them (MOSS-style or
    /// JSON calls) while it answers; each call is recorded in the answer.
    /// `on_text` receives the answer text as it streams.
    pub async fn run_with_tools(
        mut self,
        tool_loop: &ToolLoop<'_>,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Answer> {
        // A tool may know what the documents do not ("what is 1234 × 5678?"):
        // with tools, only a clarifying question stops the model.
        if matches!(self.decision, Decision::Abstain { .. }) {
            self.decision = Decision::Answer;
        }
        if !self.decision.answers() {
            return Ok(self.declined(on_text));
        }
        let prompt = tool_loop.with_instructions(self.prompt.clone());
        let run = tool_loop.run(prompt, self.options.clone(), on_text).await?;
        let mut answer = self.finish(run.text, run.summary);
        answer.tool_calls = run.calls;
        Ok(answer)
    }

    /// Generate the answer with `generator`; `on_text` receives the text as
    /// it streams.
    pub async fn run(
        self,
        generator: &dyn Generator,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Answer> {
        use futures::StreamExt;
        if !self.decision.answers() {
            return Ok(self.declined(on_text));
        }
        let mut stream = generator
            .generate(self.prompt.clone(), self.options.clone())
            .await?;
        let mut text = String::new();
        while let Some(ev) = stream.next().await {
            match ev? {
                crate::generate::GenerationEvent::Delta { text: t } => {
                    on_text(&t);
                    text.push_str(&t);
                }
                crate::generate::GenerationEvent::Done(summary) => {
                    return Ok(self.finish(text, summary));
                }
            }
        }
        Err(Error::stage(
            "generator",
            "the stream ended without a summary",
        ))
    }
}

impl QueryPipeline {
    /// Retrieve for `question` and pack the passages into `generator`'s budget.
    pub async fn prepare_answer(
        &self,
        question: &str,
        generator: &dyn Generator,
        opts: &AnswerOptions,
    ) -> Result<PreparedAnswer> {
        if question.trim().is_empty() {
            return Err(Error::InvalidInput(
                "the question is empty: type what you want to know".into(),
            ));
        }
        opts.generation.validate()?;
        let t0 = Instant::now();
        let result = self.search(question).await?;
        let retrieval_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let chat = generator.has_chat_template();
        let window = opts
            .generation
            .context_window
            .unwrap_or(usize::MAX)
            .min(generator.context_length());
        let history = recent_turns(&opts.history, window / 4, generator)?;
        let skeleton = build_prompt_in_conversation(question, &[], chat, opts.few_shot, &history);
        let skeleton_tokens = match &skeleton {
            Prompt::Text(t) => generator.count_tokens(t)?,
            Prompt::Chat(m) => m
                .iter()
                .map(|m| generator.count_tokens(&m.content).map(|n| n + 8))
                .sum::<Result<usize>>()?,
        };
        let room = window
            .saturating_sub(skeleton_tokens)
            .saturating_sub(opts.generation.max_tokens);
        let budget = room.min(opts.max_context_tokens);
        let count = |t: &str| generator.count_tokens(t);
        let sources = pack_sources(&result.hits, budget, &count)?;
        let opens = !opts.history.iter().any(|m| m.role == Role::User);
        let decision = match unresolved_reference(question) {
            Some(pronoun) if opts.clarify && opens => Decision::Clarify { pronoun },
            _ => match &opts.abstention {
                Some(policy) => policy.decide(question, &opts.history, &result.hits).await?,
                None => Decision::Answer,
            },
        };
        let prompt =
            build_prompt_in_conversation(question, &sources, chat, opts.few_shot, &history);
        let mut options = opts.generation.clone();
        if !chat {
            for s in plain_stops() {
                if !options.stop.contains(&s) {
                    options.stop.push(s);
                }
            }
        }
        Ok(PreparedAnswer {
            question: question.trim().to_string(),
            sources,
            prompt,
            options,
            retrieval_ms,
            decision,
        })
    }

    /// Retrieve, prompt, generate: the whole answer.
    pub async fn answer(
        &self,
        question: &str,
        generator: &dyn Generator,
        opts: &AnswerOptions,
    ) -> Result<Answer> {
        self.answer_streaming(question, generator, opts, |_| {})
            .await
    }

    /// [`Self::answer`], calling `on_text` with each piece of text as the
    /// generator produces it.
    pub async fn answer_streaming(
        &self,
        question: &str,
        generator: &dyn Generator,
        opts: &AnswerOptions,
        mut on_text: impl FnMut(&str) + Send,
    ) -> Result<Answer> {
        let prepared = self.prepare_answer(question, generator, opts).await?;
        prepared.run(generator, &mut on_text).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::test_hit as hit;

    fn words(t: &str) -> Result<usize> {
        Ok(t.split_whitespace().count())
    }

    #[test]
    fn packing_dedupes_numbers_and_respects_the_budget() {
        let hits = vec![
            hit("a", "one two three"),
            hit("a", "one two three"),
            hit("b", "one  two\nthree"),
            hit("c", &"long ".repeat(50)),
            hit("d", "four five"),
        ];
        let s = pack_sources(&hits, 20, &words).unwrap();
        let ids: Vec<_> = s.iter().map(|s| s.chunk_id.as_str()).collect();
        assert_eq!(ids, ["a", "d"]);
        assert_eq!(s[1].number, 2);
    }

    #[test]
    fn citations_are_parsed() {
        assert_eq!(cited_numbers("x [2] y [1, 3][2] [a] [4"), vec![2, 1, 3]);
        assert!(cited_numbers("no citations").is_empty());
    }

    #[test]
    fn plain_prompt_ends_with_answer_cue() {
        let hits = vec![hit("a", "Magpies are corvids.")];
        let s = pack_sources(&hits, 100, &words).unwrap();
        let Prompt::Text(p) = build_prompt("What are magpies?", &s, false, true) else {
            panic!()
        };
        assert!(p.ends_with("Question: What are magpies?\nAnswer:"));
        assert!(p.contains("[1] (a.md) Magpies are corvids."));
    }
}
