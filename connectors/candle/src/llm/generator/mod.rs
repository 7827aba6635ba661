//! [`LocalLlm`]: a GGUF model behind the [`Generator`] trait. Generation runs
//! on its own thread and streams text deltas; the KV cache is reused across
//! calls for the prompt prefix they share, and slides (keep `n_keep`, drop
//! half of the rest, re-rotate) when the window is full.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use candle_core::Device;
use magpie_core::{
    ChatMessage, Error, FinishReason, GenerationEvent, GenerationOptions, GenerationStream,
    GenerationSummary, Generator, Prompt, Role, Sampler, StopFilter, Timings, Usage,
};

use super::chat::{message_groups, ChatTemplate};
use super::gguf::ModelFile;
use super::lora::{set_key, LoraAdapter};
use super::model::{KvCache, KvCacheType, Transformer};
use super::vocab::GgufTokenizer;
use super::LlmError;

mod adapters;

/// How a [`LocalLlm`] is loaded.
#[derive(Debug, Clone)]
pub struct LlmOptions {
    /// Largest context the cache holds (default: the model's, at most 4096).
    pub context_window: Option<usize>,
    /// Where to run (default: the GPU with the `cuda` feature, else the CPU).
    pub device: Option<Device>,
    /// A tokenizer.json to use instead of the GGUF's vocabulary (default: one
    /// beside the model file, if present).
    pub tokenizer_json: Option<PathBuf>,
    /// Prompt tokens processed per forward pass.
    pub batch: usize,
    /// Slide the window by moving the cache (true) or by re-encoding the kept tokens.
    pub shift_in_place: bool,
    /// A Jinja chat template to use instead of the file's (base models have none).
    pub chat_template: Option<String>,
    /// candle's kernels throughout, as a GPU runs them, even on the CPU (where
    /// magpie's own are faster): for checking the GPU's code path without a
    /// GPU. `MAGPIE_LLM_KERNELS=candle` does the same from outside.
    pub candle_kernels: bool,
    /// What the KV cache holds keys and values in (default f16, as
    /// llama.cpp; f32, or q8_0 on the CPU; `MAGPIE_KV_CACHE` from outside).
    pub kv_cache: Option<KvCacheType>,
    /// How candle's path (a GPU's) attends: matrix products (the default) or
    /// one fused kernel (`MAGPIE_ATTENTION=fused` from outside). The CPU's own
    /// path has its own fused attention and ignores this.
    pub attention: Option<super::AttentionKernel>,
}

impl Default for LlmOptions {
    fn default() -> Self {
        Self {
            context_window: None,
            device: None,
            tokenizer_json: None,
            batch: 256,
            shift_in_place: true,
            chat_template: None,
            candle_kernels: false,
            kv_cache: None,
            attention: None,
        }
    }
}

struct State {
    cache: KvCache,
    /// Tokens whose keys/values the cache holds, in order.
    tokens: Vec<u32>,
    /// The adapter set (ids and scales) the cache was computed with: another
    /// set gives other keys and values, so nothing is reused across sets.
    adapters: Vec<(u64, u32)>,
    /// The cache was shifted: its content is not a plain encoding of `tokens`.
    shifted: bool,
}

struct Inner {
    model: Transformer,
    tok: GgufTokenizer,
    chat: ChatTemplate,
    id: String,
    window: usize,
    batch: usize,
    shift_in_place: bool,
    state: Mutex<State>,
    /// LoRA adapters loaded on this base, by name.
    adapters: std::sync::RwLock<std::collections::BTreeMap<String, Arc<LoraAdapter>>>,
}

/// A local GGUF model.
#[derive(Clone)]
pub struct LocalLlm {
    inner: Arc<Inner>,
}

impl LocalLlm {
    /// Load the model at `path` (a .gguf file).
    pub fn load(path: &Path, opts: LlmOptions) -> Result<Self, LlmError> {
        crate::uniform_cpu_kernels();
        let file = ModelFile::open(path)?;
        let cfg = file.config()?;
        let json = opts.tokenizer_json.clone().or_else(|| {
            let p = path.with_file_name("tokenizer.json");
            p.is_file().then_some(p)
        });
        let device = opts.device.clone().unwrap_or_else(crate::select_device);
        // the tokenizer (merges derived from a large vocabulary) builds while
        // the weights load
        let (tok, model) = std::thread::scope(|s| {
            let tok = s.spawn(|| {
                let t0 = std::time::Instant::now();
                let tok = match &json {
                    Some(j) => GgufTokenizer::with_json(j, &file.metadata),
                    None => GgufTokenizer::from_metadata(&file.metadata),
                };
                tracing::debug!(ms = t0.elapsed().as_millis() as u64, "tokenizer built");
                tok
            });
            let t0 = std::time::Instant::now();
            let model = Transformer::load_with(
                &file,
                &device,
                !opts.candle_kernels && super::weights::own_kernels(&device),
            );
            tracing::debug!(ms = t0.elapsed().as_millis() as u64, "weights loaded");
            let tok = tok.join().unwrap_or_else(|_| {
                Err(LlmError::Tokenizer(
                    "building the tokenizer panicked".into(),
                ))
            });
            (tok, model)
        });
        let (tok, model) = (tok?, model?);
        let tok_name = |id: Option<u32>| id.and_then(|i| tok.token_str(i)).unwrap_or_default();
        // the GLM family's format where the file brings no template
        let glm = matches!(
            cfg.arch,
            super::gguf::Arch::ChatGlm | super::gguf::Arch::Glm4
        )
        .then(|| super::chat::glm_template(tok.token_id("<sop>").is_some()));
        let chat = ChatTemplate::new(
            opts.chat_template
                .as_deref()
                .or(file.metadata.string("tokenizer.chat_template"))
                .or(glm.as_deref()),
            &tok_name(tok.special.bos),
            &tok_name(tok.special.eos),
        )?;
        let window = opts
            .context_window
            .unwrap_or(4096)
            .min(cfg.context_length)
            .max(8);
        let id = file
            .metadata
            .string("general.name")
            .map(|s| s.to_string())
            .unwrap_or_else(|| {
                path.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
        if let Some(kind) = opts.kv_cache {
            model.set_kv_cache(kind)?;
        }
        if let Some(kind) = opts.attention {
            model.set_attention(kind);
        }
        let cache = model.new_cache(window);
        // the parsed header (the vocabulary's strings), the tokenizer's
        // building and the K-type tensors read left freed heap behind: hand
        // it back, so the process holds what it uses
        drop(file);
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only releases free memory.
        unsafe {
            libc::malloc_trim(0);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                model,
                tok,
                chat,
                id,
                window,
                batch: opts.batch.max(1),
                shift_in_place: opts.shift_in_place,
                state: Mutex::new(State {
                    cache,
                    tokens: Vec::new(),
                    adapters: Vec::new(),
                    shifted: false,
                }),
                adapters: Default::default(),
            }),
        })
    }

    /// The model.
    pub fn model(&self) -> &Transformer {
        &self.inner.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &GgufTokenizer {
        &self.inner.tok
    }

    /// (positions cached, positions allocated) of the KV cache.
    pub fn cache_stats(&self) -> (usize, usize) {
        let st = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        (st.cache.len(), st.cache.capacity())
    }

    /// Context window of the cache.
    pub fn window(&self) -> usize {
        self.inner.window
    }

    /// Token ids for `text` as a prompt (start-of-text token added when the model wants one).
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, LlmError> {
        let mut ids = self.inner.tok.encode(text)?;
        if self.inner.tok.special.add_bos {
            if let Some(b) = self.inner.tok.special.bos {
                if ids.first() != Some(&b) {
                    ids.insert(0, b);
                }
            }
        }
        Ok(ids)
    }

    /// Logits of the next token after `tokens`, computed from an empty cache
    /// (used by parity tests and benchmarks).
    pub fn logits(&self, tokens: &[u32]) -> Result<Vec<f32>, LlmError> {
        self.logits_with(tokens, &[])
    }

    /// The rendered prompt and the number of leading tokens to keep when sliding.
    fn prepare(&self, prompt: &Prompt, opts: &GenerationOptions) -> Result<Prepared, LlmError> {
        match prompt {
            Prompt::Text(t) => {
                if t.is_empty() {
                    return Err(LlmError::InvalidInput("the prompt is empty".into()));
                }
                let ids = self.encode_prompt(t)?;
                let n_keep = opts
                    .n_keep
                    .unwrap_or(usize::from(self.inner.tok.special.add_bos));
                Ok(Prepared {
                    ids,
                    n_keep,
                    boundaries: Vec::new(),
                })
            }
            Prompt::Chat(messages) => self.prepare_chat(messages, opts),
        }
    }

    /// Render a chat; when it does not fit, drop the oldest turns after the
    /// system message (a tool result goes with its call), never mid-message.
    /// The token ids of a chat as the model sees it, how many leading tokens
    /// stay when the window slides, and where messages end (a slide cuts there).
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        opts: &GenerationOptions,
    ) -> Result<(Vec<u32>, usize, Vec<usize>), LlmError> {
        let p = self.prepare_chat(messages, opts)?;
        Ok((p.ids, p.n_keep, p.boundaries))
    }

    fn prepare_chat(
        &self,
        messages: &[ChatMessage],
        opts: &GenerationOptions,
    ) -> Result<Prepared, LlmError> {
        let window = opts
            .context_window
            .unwrap_or(self.inner.window)
            .min(self.inner.window);
        let budget = window
            .saturating_sub(opts.max_tokens.min(window / 2))
            .max(1);
        let sys_len = messages
            .iter()
            .take_while(|m| m.role == Role::System)
            .count();
        let groups = message_groups(&messages[sys_len..]);
        let mut from = 0; // first kept group
        loop {
            let mut kept: Vec<ChatMessage> = messages[..sys_len].to_vec();
            let start = groups
                .get(from)
                .map(|g| g.start + sys_len)
                .unwrap_or(messages.len());
            kept.extend_from_slice(&messages[start..]);
            let ids = self.encode_prompt(&self.inner.chat.render(&kept)?)?;
            if ids.len() <= budget || from + 1 >= groups.len() {
                let keep = match opts.n_keep {
                    Some(k) => k,
                    None if sys_len > 0 => {
                        // tokens of the rendered system part
                        let sys = self
                            .inner
                            .chat
                            .render_with(&messages[..sys_len], false)
                            .ok();
                        sys.and_then(|s| self.encode_prompt(&s).ok())
                            .map(|s| common_prefix(&s, &ids))
                            .unwrap_or(1)
                    }
                    None => usize::from(self.inner.tok.special.add_bos),
                };
                if from > 0 {
                    tracing::info!(
                        dropped_turns = from,
                        "chat longer than the window: oldest turns left out"
                    );
                }
                // token positions where a message group ends (a tool result
                // ends its call's group), when the template renders prefixes
                // as prefixes
                let mut boundaries = Vec::new();
                let kept_groups = message_groups(&kept[sys_len..]);
                for g in &kept_groups {
                    let part = self
                        .inner
                        .chat
                        .render_with(&kept[..sys_len + g.end], false)?;
                    let part = self.encode_prompt(&part)?;
                    if part.len() < ids.len() && common_prefix(&part, &ids) == part.len() {
                        boundaries.push(part.len());
                    }
                }
                return Ok(Prepared {
                    ids,
                    n_keep: keep,
                    boundaries,
                });
            }
            from += 1;
        }
    }
}

struct Prepared {
    ids: Vec<u32>,
    n_keep: usize,
    /// Token positions where chat messages end.
    boundaries: Vec<usize>,
}

/// How many tokens after `n_keep` to drop from a full cache of `len`: half of
/// them, moved forward to the next message boundary when there is one.
fn discard_count(len: usize, n_keep: usize, boundaries: &[usize]) -> usize {
    let half = ((len - n_keep) / 2).max(1);
    boundaries
        .iter()
        .copied()
        .find(|&b| b >= n_keep + half && b < len)
        .map(|b| b - n_keep)
        .unwrap_or(half)
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Counts and clocks of one generation, for its summary.
struct RunStats {
    prompt_tokens: usize,
    /// Prompt tokens run through the model (the rest came from the cache).
    prompt_processed: usize,
    generated: usize,
    t0: Instant,
    first_at: Option<Instant>,
    shifts: usize,
    prompt_ms: f64,
}

impl Default for RunStats {
    fn default() -> Self {
        Self {
            prompt_tokens: 0,
            prompt_processed: 0,
            generated: 0,
            t0: Instant::now(),
            first_at: None,
            shifts: 0,
            prompt_ms: 0.0,
        }
    }
}

type Tx = tokio::sync::mpsc::Sender<magpie_core::Result<GenerationEvent>>;

impl Inner {
    fn run(
        &self,
        mut prompt: Vec<u32>,
        n_keep: usize,
        mut boundaries: Vec<usize>,
        opts: GenerationOptions,
        tx: &Tx,
    ) -> Result<(), LlmError> {
        let t0 = Instant::now();
        let window = opts.context_window.unwrap_or(self.window).min(self.window);
        if window < 2 {
            return Err(LlmError::InvalidInput(
                "the context window must hold at least 2 tokens".into(),
            ));
        }
        if prompt.is_empty() {
            return Err(LlmError::InvalidInput(
                "the prompt encodes to no tokens: give some text".into(),
            ));
        }
        if n_keep >= window {
            return Err(LlmError::InvalidInput(format!(
                "n_keep ({n_keep}) must be smaller than the context window ({window}): keep fewer tokens or use a larger window"
            )));
        }
        let n_keep = n_keep.min(prompt.len());
        let prompt_tokens = prompt.len();
        // a prompt longer than the window: keep the first n_keep tokens and the
        // newest ones, leaving room to generate
        let room = opts.max_tokens.clamp(1, (window / 2).max(1));
        if prompt.len() + room > window && prompt.len() > n_keep {
            let keep_tail = window.saturating_sub(room).saturating_sub(n_keep).max(1);
            if prompt.len() > n_keep + keep_tail {
                let cut = prompt.len() - n_keep - keep_tail;
                tracing::warn!(
                    dropped = cut,
                    window,
                    "prompt longer than the context window: its middle is left out"
                );
                prompt.drain(n_keep..n_keep + cut);
                boundaries = boundaries
                    .iter()
                    .filter(|&&b| b > n_keep + cut)
                    .map(|b| b - cut)
                    .collect();
            }
        }
        let loras = self.resolve(&opts.adapters)?;
        let key = set_key(&loras);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let st = &mut *st;
        // reuse the cached prefix (never the whole prompt: the last token
        // must run), when it was computed with the same adapters
        let reuse = if st.shifted || st.cache.max_len() != self.window || st.adapters != key {
            0
        } else {
            common_prefix(&st.tokens, &prompt).min(prompt.len() - 1)
        };
        st.cache.truncate(reuse);
        st.tokens.truncate(reuse);
        st.shifted = false;
        st.adapters = key;
        let mut logits = None;
        for chunk in prompt[reuse..].chunks(self.batch) {
            if opts.cancel.as_ref().is_some_and(|c| c.is_cancelled()) || tx.is_closed() {
                let stats = RunStats {
                    prompt_tokens,
                    t0,
                    ..RunStats::default()
                };
                return self.finish(tx, FinishReason::Cancelled, &stats);
            }
            let l = self.model.forward_with(chunk, &mut st.cache, false, &loras);
            let l = match l {
                Ok(l) => l,
                Err(e) => {
                    st.cache.truncate(0);
                    st.tokens.clear();
                    return Err(e);
                }
            };
            st.tokens.extend_from_slice(chunk);
            logits = Some(l);
        }
        let prompt_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let mut logits = Transformer::to_vec(&logits.expect("prompt is not empty"))?;
        let mut sampler = Sampler::new(&opts);
        let mut stop = StopFilter::new(&opts.stop);
        let mut history = prompt.clone();
        // decode context: the last prompt token, so the first word keeps its space
        let mut ctx: Vec<u32> = prompt.last().copied().into_iter().collect();
        let (mut prefix, mut read) = (0usize, ctx.len());
        let mut generated = 0usize;
        let mut first_at: Option<Instant> = None;
        let mut shifts = 0usize;
        let reason = loop {
            if generated >= opts.max_tokens {
                break FinishReason::Length;
            }
            if opts.cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
                break FinishReason::Cancelled;
            }
            let tok = sampler.sample(&mut logits, &history);
            generated += 1;
            if first_at.is_none() {
                first_at = Some(Instant::now());
            }
            if !opts.ignore_eos && self.tok.special.end_of_generation.contains(&tok) {
                break FinishReason::Stop;
            }
            history.push(tok);
            ctx.push(tok);
            // emit whole characters only
            let before = self.tok.decode(&ctx[prefix..read])?;
            let now = self.tok.decode(&ctx[prefix..])?;
            if now.len() > before.len()
                && !now.ends_with('\u{FFFD}')
                && now.is_char_boundary(before.len())
            {
                let delta = &now[before.len()..];
                prefix = read;
                read = ctx.len();
                let out = stop.push(delta);
                if !out.emit.is_empty()
                    && tx
                        .blocking_send(Ok(GenerationEvent::Delta { text: out.emit }))
                        .is_err()
                {
                    break FinishReason::Cancelled;
                }
                if out.stopped {
                    break FinishReason::Stop;
                }
            }
            if generated >= opts.max_tokens {
                break FinishReason::Length;
            }
            // slide the window when it is full
            if st.cache.len() + 1 > window {
                let n_discard = discard_count(st.cache.len(), n_keep, &boundaries);
                boundaries = boundaries
                    .iter()
                    .filter(|&&b| b > n_keep + n_discard)
                    .map(|b| b - n_discard)
                    .collect();
                if self.shift_in_place {
                    self.model.shift(&mut st.cache, n_keep, n_discard)?;
                    st.tokens.drain(n_keep..n_keep + n_discard);
                    st.shifted = true;
                } else {
                    st.tokens.drain(n_keep..n_keep + n_discard);
                    st.cache.truncate(0);
                    let kept = st.tokens.clone();
                    self.model
                        .prefill_with(&kept, &mut st.cache, self.batch, &loras)?;
                }
                shifts += 1;
                tracing::debug!(n_keep, n_discard, "context window slid");
            }
            let l = self
                .model
                .forward_with(&[tok], &mut st.cache, false, &loras)?;
            st.tokens.push(tok);
            logits = Transformer::to_vec(&l)?;
        };
        if reason != FinishReason::Stop {
            let rest = stop.finish();
            if !rest.is_empty() {
                let _ = tx.blocking_send(Ok(GenerationEvent::Delta { text: rest }));
            }
        }
        let stats = RunStats {
            prompt_tokens,
            prompt_processed: prompt.len() - reuse,
            generated,
            t0,
            first_at,
            shifts,
            prompt_ms,
        };
        self.finish(tx, reason, &stats)
    }

    fn finish(&self, tx: &Tx, reason: FinishReason, st: &RunStats) -> Result<(), LlmError> {
        let (prompt_tokens, completion, shifts, prompt_ms) =
            (st.prompt_tokens, st.generated, st.shifts, st.prompt_ms);
        let ttft = st
            .first_at
            .map(|f| (f - st.t0).as_secs_f64() * 1000.0)
            .unwrap_or(0.0);
        let gen_ms = st
            .first_at
            .map(|f| f.elapsed().as_secs_f64() * 1000.0)
            .unwrap_or(0.0);
        let timings = Timings {
            prompt_ms,
            time_to_first_token_ms: ttft,
            generation_ms: gen_ms,
            prompt_tokens_per_sec: if prompt_ms > 0.0 {
                st.prompt_processed as f64 / (prompt_ms / 1000.0)
            } else {
                0.0
            },
            tokens_per_sec: if gen_ms > 0.0 && completion > 1 {
                (completion - 1) as f64 / (gen_ms / 1000.0)
            } else {
                0.0
            },
            context_shifts: shifts,
        };
        let _ = tx.blocking_send(Ok(GenerationEvent::Done(GenerationSummary {
            finish_reason: reason,
            usage: Usage {
                prompt_tokens,
                completion_tokens: completion,
                total_tokens: prompt_tokens + completion,
            },
            timings,
        })));
        Ok(())
    }
}

#[async_trait]
impl Generator for LocalLlm {
    fn model_id(&self) -> &str {
        &self.inner.id
    }

    fn context_length(&self) -> usize {
        self.inner.window
    }

    fn count_tokens(&self, text: &str) -> magpie_core::Result<usize> {
        Ok(self.inner.tok.encode(text).map_err(Error::from)?.len())
    }

    fn has_chat_template(&self) -> bool {
        self.inner.chat.has_template()
    }

    fn render_chat(&self, messages: &[ChatMessage]) -> magpie_core::Result<Option<String>> {
        Ok(Some(self.inner.chat.render(messages).map_err(Error::from)?))
    }

    fn adapters(&self) -> Vec<String> {
        self.inner
            .adapters
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    async fn generate(
        &self,
        prompt: Prompt,
        options: GenerationOptions,
    ) -> magpie_core::Result<GenerationStream> {
        options.validate()?;
        // an unknown adapter is the caller's mistake, told before any streaming
        self.inner.resolve(&options.adapters)?;
        let Prepared {
            ids,
            n_keep,
            boundaries,
        } = self.prepare(&prompt, &options)?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let inner = self.inner.clone();
        std::thread::Builder::new()
            .name("magpie-llm".into())
            .spawn(move || {
                if let Err(e) = inner.run(ids, n_keep, boundaries, options, &tx) {
                    let _ = tx.blocking_send(Err(e.into()));
                }
            })
            .map_err(|e| Error::stage("llm", format!("cannot start the generation thread: {e}")))?;
        let stream =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
        Ok(Box::pin(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::discard_count;

    #[test]
    fn slides_cut_at_message_boundaries_when_they_can() {
        // 100 cached, keep 10: half of the rest is 45, so the cut goes to 55 or beyond
        assert_eq!(discard_count(100, 10, &[20, 40, 60, 90]), 50);
        // no boundary past the half: plain half
        assert_eq!(discard_count(100, 10, &[20, 40]), 45);
        assert_eq!(discard_count(100, 10, &[]), 45);
        // a boundary at the very end leaves nothing to attend to: not used
        assert_eq!(discard_count(100, 10, &[100]), 45);
    }
}
