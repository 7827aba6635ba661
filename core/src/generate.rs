//! Text generation: the [`Generator`] trait, its options, the sampler every
//! local model shares, and the stop-sequence filter for streamed text.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use crate::adapters::AdapterChoice;
use crate::error::{Error, Result};

/// Cancels a generation from another task or thread; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }
    /// Ask the generation to stop at the next token.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Who speaks in a chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions.
    System,
    /// The person asking.
    User,
    /// The model (a message may hold a tool call).
    Assistant,
    /// A tool's result; it belongs to the assistant message before it.
    Tool,
}

impl Role {
    /// The lowercase name chat templates expect.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// The speaker.
    pub role: Role,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message from `role`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// What the model continues: raw text (base models) or a chat (rendered with
/// the model's chat template).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Prompt {
    /// Plain completion.
    Text(String),
    /// Messages, oldest first.
    Chat(Vec<ChatMessage>),
}

/// Sampling and length options. The defaults sample (greedy decoding of small
/// models loops on repeated text); `temperature = 0` decodes greedily.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerationOptions {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Softmax temperature; 0 means greedy.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1 = off).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one (0 = off).
    pub min_p: f32,
    /// Divide (or multiply, when negative) the logits of recent tokens by this (1 = off).
    pub repeat_penalty: f32,
    /// How many recent tokens the repetition penalty looks at.
    pub repeat_last_n: usize,
    /// Seed for reproducible sampling; a random one when `None`.
    pub seed: Option<u64>,
    /// Generation ends before any of these strings; they are never streamed.
    pub stop: Vec<String>,
    /// Tokens at the start of the prompt kept when the context window slides;
    /// `None` keeps the system message of a chat, or only the start-of-text token.
    pub n_keep: Option<usize>,
    /// A context window smaller than the model's.
    pub context_window: Option<usize>,
    /// Keep generating past the model's end-of-text tokens (benchmarks, tests).
    pub ignore_eos: bool,
    /// LoRA adapters to apply to this call, by the names the generator
    /// loaded them under, each with its scale (empty: the base model alone).
    pub adapters: Vec<AdapterChoice>,
    /// Stop early when this is cancelled.
    #[serde(skip)]
    pub cancel: Option<CancelToken>,
}

impl Default for GenerationOptions {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            temperature: 0.7,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.1,
            repeat_last_n: 64,
            seed: None,
            stop: Vec::new(),
            n_keep: None,
            context_window: None,
            ignore_eos: false,
            adapters: Vec::new(),
            cancel: None,
        }
    }
}

impl GenerationOptions {
    /// Greedy decoding (temperature 0, no repetition penalty).
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            repeat_penalty: 1.0,
            ..Self::default()
        }
    }

    /// Check the options make sense.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidInput(m));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!(
                "temperature must be 0 or more, got {}",
                self.temperature
            ));
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return bad(format!("top_p must be in 0..=1, got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("min_p must be in 0..=1, got {}", self.min_p));
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite()) {
            return bad(format!(
                "repeat_penalty must be above 0, got {}",
                self.repeat_penalty
            ));
        }
        if self.stop.iter().any(|s| s.is_empty()) {
            return bad("a stop sequence is empty".into());
        }
        for a in &self.adapters {
            if a.name.trim().is_empty() {
                return bad("an adapter name is empty".into());
            }
            if !a.scale.is_finite() {
                return bad(format!("adapter {:?} has scale {}", a.name, a.scale));
            }
        }
        Ok(())
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A stop sequence or the model's end-of-text token.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// Cancelled through the [`CancelToken`] or by dropping the stream.
    Cancelled,
    /// The model kept calling tools past the per-answer limit.
    ToolLimit,
}

/// Token counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens of the prompt as encoded.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Sum of both.
    pub total_tokens: usize,
}

/// Where the time went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Prompt processing, milliseconds.
    pub prompt_ms: f64,
    /// From the call to the first generated token, milliseconds.
    pub time_to_first_token_ms: f64,
    /// Generation after the first token, milliseconds.
    pub generation_ms: f64,
    /// Prompt tokens per second (over the tokens run, not those reused from the cache).
    pub prompt_tokens_per_sec: f64,
    /// Generated tokens per second (after the first).
    pub tokens_per_sec: f64,
    /// How many times the context window slid.
    pub context_shifts: usize,
}

/// The end of a generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationSummary {
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Token counts.
    pub usage: Usage,
    /// Timings.
    pub timings: Timings,
}

/// One item of a generation stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GenerationEvent {
    /// New text (one token or more; held back while it could start a stop sequence).
    Delta {
        /// The text.
        text: String,
    },
    /// The last event.
    Done(GenerationSummary),
}

/// Streamed output of [`Generator::generate`]; dropping it cancels the generation.
pub type GenerationStream = Pin<Box<dyn Stream<Item = Result<GenerationEvent>> + Send>>;

/// A whole generation, collected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// The generated text (stop sequence excluded).
    pub text: String,
    /// How it ended, counts and timings.
    #[serde(flatten)]
    pub summary: GenerationSummary,
}

/// A text generator (a local LLM, a remote API, a scripted stand-in in tests).
#[async_trait]
pub trait Generator: Send + Sync {
    /// Identifies the model.
    fn model_id(&self) -> &str;
    /// Most tokens the model attends to.
    fn context_length(&self) -> usize;
    /// Number of tokens `text` encodes to.
    fn count_tokens(&self, text: &str) -> Result<usize>;
    /// Whether chat prompts use a template from the model (otherwise a plain transcript).
    fn has_chat_template(&self) -> bool;
    /// The text a chat renders to (the model's template, ending where the
    /// assistant's reply starts), for callers that continue the reply as plain
    /// text; `None` when the generator only takes messages.
    fn render_chat(&self, messages: &[ChatMessage]) -> Result<Option<String>> {
        let _ = messages;
        Ok(None)
    }
    /// Names of the LoRA adapters a call may name in
    /// [`GenerationOptions::adapters`] (none for generators without them).
    fn adapters(&self) -> Vec<String> {
        Vec::new()
    }
    /// Start generating; events arrive on the stream.
    async fn generate(
        &self,
        prompt: Prompt,
        options: GenerationOptions,
    ) -> Result<GenerationStream>;

    /// Generate and collect the whole text.
    async fn complete(&self, prompt: Prompt, options: GenerationOptions) -> Result<Completion> {
        let mut stream = self.generate(prompt, options).await?;
        let mut text = String::new();
        while let Some(ev) = stream.next().await {
            match ev? {
                GenerationEvent::Delta { text: t } => text.push_str(&t),
                GenerationEvent::Done(summary) => return Ok(Completion { text, summary }),
            }
        }
        Err(Error::stage(
            "generator",
            "the stream ended without a summary",
        ))
    }
}

/// Small, fast, seedable random numbers (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    /// A generator seeded from the clock.
    pub fn from_time() -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9);
        Self(t ^ (std::process::id() as u64) << 32)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Picks the next token from logits: repetition penalty, temperature, top-k,
/// top-p, min-p, in that order; greedy (after the penalty) at temperature 0.
#[derive(Debug, Clone)]
pub struct Sampler {
    opts: GenerationOptions,
    rng: Rng,
    // scratch: (token, logit) candidates
    cand: Vec<(u32, f32)>,
}

impl Sampler {
    /// A sampler for these options.
    pub fn new(opts: &GenerationOptions) -> Self {
        let rng = match opts.seed {
            Some(s) => Rng::new(s),
            None => Rng::from_time(),
        };
        Self {
            opts: opts.clone(),
            rng,
            cand: Vec::new(),
        }
    }

    /// Apply the repetition penalty to `logits` for tokens in the last
    /// `repeat_last_n` of `history` (each token once).
    pub fn apply_penalty(&self, logits: &mut [f32], history: &[u32]) {
        let p = self.opts.repeat_penalty;
        if p == 1.0 || self.opts.repeat_last_n == 0 {
            return;
        }
        let start = history.len().saturating_sub(self.opts.repeat_last_n);
        let mut seen = std::collections::HashSet::new();
        for &t in &history[start..] {
            if !seen.insert(t) {
                continue;
            }
            if let Some(l) = logits.get_mut(t as usize) {
                *l = if *l > 0.0 { *l / p } else { *l * p };
            }
        }
    }

    /// Choose a token; `history` is every token so far (prompt and output).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        self.apply_penalty(logits, history);
        if self.opts.temperature <= 0.0 {
            return argmax(logits);
        }
        let inv_t = 1.0 / self.opts.temperature;
        self.cand.clear();
        self.cand.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| l.is_finite())
                .map(|(i, &l)| (i as u32, l * inv_t)),
        );
        if self.cand.is_empty() {
            return argmax(logits);
        }
        // top-k (partial sort keeps this cheap on 262k-token vocabularies)
        let k = if self.opts.top_k == 0 {
            self.cand.len()
        } else {
            self.opts.top_k.min(self.cand.len())
        };
        if k < self.cand.len() {
            self.cand
                .select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
            self.cand.truncate(k);
        }
        self.cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        // softmax over the survivors
        let max = self.cand[0].1;
        let mut probs: Vec<f64> = self
            .cand
            .iter()
            .map(|c| ((c.1 - max) as f64).exp())
            .collect();
        let sum: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= sum);
        // top-p: smallest prefix reaching top_p
        let mut keep = probs.len();
        if self.opts.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= self.opts.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
        }
        // min-p: relative to the most likely token
        if self.opts.min_p > 0.0 {
            let floor = probs[0] * self.opts.min_p as f64;
            keep = keep.min(probs.iter().take_while(|&&p| p >= floor).count().max(1));
        }
        let total: f64 = probs[..keep].iter().sum();
        let mut r = self.rng.next_f64() * total;
        for (p, c) in probs[..keep].iter().zip(&self.cand) {
            r -= p;
            if r <= 0.0 {
                return c.0;
            }
        }
        self.cand[keep - 1].0
    }
}

/// Index of the largest finite value (0 when there is none).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut bv = f32::NEG_INFINITY;
    for (i, &x) in v.iter().enumerate() {
        if x > bv {
            bv = x;
            best = i;
        }
    }
    best as u32
}

/// Holds back streamed text while it could still turn into a stop sequence.
#[derive(Debug, Clone, Default)]
pub struct StopFilter {
    stops: Vec<String>,
    pending: String,
}

/// What [`StopFilter::push`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopOutput {
    /// Text safe to emit now.
    pub emit: String,
    /// A stop sequence matched: generation ends; the rest is discarded.
    pub stopped: bool,
}

impl StopFilter {
    /// A filter for these stop sequences.
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Add generated text.
    pub fn push(&mut self, delta: &str) -> StopOutput {
        self.pending.push_str(delta);
        // earliest complete match
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(pos) = hit {
            let emit = self.pending[..pos].to_string();
            self.pending.clear();
            return StopOutput {
                emit,
                stopped: true,
            };
        }
        // hold back the longest suffix that is a prefix of some stop sequence
        let mut hold = 0;
        for s in &self.stops {
            let max = s.len().saturating_sub(1).min(self.pending.len());
            for n in (1..=max).rev() {
                let start = self.pending.len() - n;
                if self.pending.is_char_boundary(start) && s.starts_with(&self.pending[start..]) {
                    hold = hold.max(n);
                    break;
                }
            }
        }
        let cut = self.pending.len() - hold;
        let emit = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        StopOutput {
            emit,
            stopped: false,
        }
    }

    /// Generation ended without a stop: release what was held back.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(t: f32) -> GenerationOptions {
        GenerationOptions {
            temperature: t,
            seed: Some(7),
            ..GenerationOptions::default()
        }
    }

    #[test]
    fn greedy_takes_the_max() {
        let mut s = Sampler::new(&GenerationOptions::greedy());
        let mut l = vec![0.1, 3.0, 2.9, -1.0];
        assert_eq!(s.sample(&mut l, &[]), 1);
    }

    #[test]
    fn penalty_changes_the_greedy_choice() {
        let o = GenerationOptions {
            repeat_penalty: 1.5,
            ..GenerationOptions::greedy()
        };
        let mut s = Sampler::new(&o);
        let mut l = vec![0.1, 3.0, 2.9, -1.0];
        // token 1 was just produced: 3.0 / 1.5 = 2.0 < 2.9
        assert_eq!(s.sample(&mut l, &[1]), 2);
        // negative logits are pushed further down
        let mut l = vec![-1.0, -2.0];
        s.apply_penalty(&mut l, &[0]);
        assert_eq!(l[0], -1.5);
    }

    #[test]
    fn same_seed_same_tokens_and_top_k_one_is_greedy() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 37) % 101) as f32 / 10.0).collect();
        let run = |seed| {
            let mut s = Sampler::new(&GenerationOptions {
                seed: Some(seed),
                repeat_penalty: 1.0,
                ..opts(1.0)
            });
            (0..50)
                .map(|_| s.sample(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
        let mut s = Sampler::new(&GenerationOptions {
            top_k: 1,
            repeat_penalty: 1.0,
            ..opts(5.0)
        });
        let best = argmax(&logits);
        for _ in 0..20 {
            assert_eq!(s.sample(&mut logits.clone(), &[]), best);
        }
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        // two likely tokens, many unlikely ones
        let mut logits = vec![-10.0f32; 100];
        logits[3] = 5.0;
        logits[9] = 4.9;
        for (name, o) in [
            (
                "top_p",
                GenerationOptions {
                    top_k: 0,
                    top_p: 0.9,
                    min_p: 0.0,
                    repeat_penalty: 1.0,
                    ..opts(1.0)
                },
            ),
            (
                "min_p",
                GenerationOptions {
                    top_k: 0,
                    top_p: 1.0,
                    min_p: 0.5,
                    repeat_penalty: 1.0,
                    ..opts(1.0)
                },
            ),
        ] {
            let mut s = Sampler::new(&o);
            let mut seen = std::collections::HashSet::new();
            for _ in 0..300 {
                seen.insert(s.sample(&mut logits.clone(), &[]));
            }
            assert_eq!(seen, [3u32, 9].into_iter().collect(), "{name}");
        }
    }

    #[test]
    fn temperature_flattens() {
        let logits = vec![1.0f32, 0.0];
        let count = |t| {
            let mut s = Sampler::new(&GenerationOptions {
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                repeat_penalty: 1.0,
                ..opts(t)
            });
            (0..4000)
                .filter(|_| s.sample(&mut logits.clone(), &[]) == 1)
                .count()
        };
        let (cold, hot) = (count(0.25), count(4.0));
        // p(1) = 1/(1+e^4) = 0.018 at t=0.25, 1/(1+e^0.25) = 0.44 at t=4
        assert!(cold < 200, "{cold}");
        assert!(hot > 1500, "{hot}");
    }

    #[test]
    fn stop_sequences_are_held_back_then_cut() {
        let mut f = StopFilter::new(&["\nQuestion:".to_string()]);
        let mut out = String::new();
        for d in ["Paris", " is", "\n", "Que", "st"] {
            let o = f.push(d);
            assert!(!o.stopped);
            out.push_str(&o.emit);
        }
        assert_eq!(out, "Paris is");
        let o = f.push("ion: what");
        assert!(o.stopped);
        assert_eq!(o.emit, "");
        // a false start is released
        let mut f = StopFilter::new(&["\nQ:".to_string()]);
        assert_eq!(f.push("a\n").emit, "a");
        assert_eq!(f.push("b").emit, "\nb");
        assert_eq!(f.push("\n").emit, "");
        assert_eq!(f.finish(), "\n");
    }

    #[test]
    fn stop_filter_respects_char_boundaries() {
        let mut f = StopFilter::new(&["é!".to_string()]);
        let o = f.push("café");
        assert_eq!(o.emit, "caf");
        let o = f.push("?");
        assert_eq!(o.emit, "é?");
    }

    #[test]
    fn bad_options_are_refused() {
        for o in [
            GenerationOptions {
                temperature: -1.0,
                ..Default::default()
            },
            GenerationOptions {
                top_p: 1.5,
                ..Default::default()
            },
            GenerationOptions {
                stop: vec![String::new()],
                ..Default::default()
            },
        ] {
            assert!(o.validate().is_err());
        }
        GenerationOptions::default().validate().unwrap();
    }
}
