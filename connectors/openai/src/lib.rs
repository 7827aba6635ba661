//! A client for servers with the OpenAI API (docqa serve, llama.cpp's server,
//! vLLM, Ollama, OpenAI itself): a remote [`Generator`] over
//! `/chat/completions` (streamed) and a remote [`Embedder`] over `/embeddings`.
#![warn(missing_docs)]

use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use magpie_core::{
    Embedder, Error, FinishReason, GenerationEvent, GenerationOptions, GenerationStream,
    GenerationSummary, Generator, Prompt, Result, Timings, Usage,
};
use serde_json::{json, Value};
use url::Url;

/// Where the API is and how to reach it.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// Base URL including the version path, e.g. `http://127.0.0.1:8080/v1`.
    pub base_url: String,
    /// Sent as `Authorization: Bearer <key>` when set.
    pub api_key: Option<String>,
    /// The model name the server knows.
    pub model: String,
    /// Time for one whole request (a streamed answer: until its end).
    pub timeout: Duration,
    /// Tokens the model attends to (the API does not say; used for prompt budgets).
    pub context_length: usize,
}

impl OpenAiConfig {
    /// Settings for `base_url` and `model`, no key, 5 minute timeout, 8192-token context.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            api_key: None,
            model: model.into(),
            timeout: Duration::from_secs(300),
            context_length: 8192,
        }
    }

    /// With an API key.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }
}

#[derive(Debug, Clone)]
struct Client {
    http: reqwest::Client,
    base: Url,
    key: Option<String>,
}

impl Client {
    fn new(cfg: &OpenAiConfig) -> Result<Self> {
        let mut base = Url::parse(&cfg.base_url)
            .map_err(|e| Error::InvalidInput(format!("{:?} is not a URL: {e}", cfg.base_url)))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(Error::InvalidInput(format!(
                "{} is not an http(s) URL",
                cfg.base_url
            )));
        }
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("magpie/", env!("CARGO_PKG_VERSION")))
            .timeout(cfg.timeout)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::stage("openai", e))?;
        Ok(Self {
            http,
            base,
            key: cfg.api_key.clone(),
        })
    }

    async fn post(&self, path: &str, body: &Value) -> Result<reqwest::Response> {
        let url = self
            .base
            .join(path)
            .map_err(|e| Error::stage("openai", e))?;
        let mut req = self
            .http
            .post(url.clone())
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(k) = &self.key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.map_err(|e| {
            Error::stage(
                "openai",
                format!("cannot reach {url}: {}", magpie_core::error_chain(&e)),
            )
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let retry = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(|s| format!(" (retry after {s} s)"))
            .unwrap_or_default();
        let text = resp.text().await.unwrap_or_default();
        let msg = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| text.chars().take(300).collect());
        let hint = match status.as_u16() {
            401 | 403 => " (check the API key)",
            404 => " (check the base URL: it usually ends in /v1)",
            _ => "",
        };
        Err(Error::stage(
            "openai",
            format!("{url} answered {status}: {msg}{retry}{hint}"),
        ))
    }
}

/// A model behind an OpenAI-compatible `/chat/completions`.
pub struct OpenAiGenerator {
    client: Client,
    cfg: OpenAiConfig,
}

impl OpenAiGenerator {
    /// A generator for `cfg` (no request is made yet).
    pub fn new(cfg: OpenAiConfig) -> Result<Self> {
        Ok(Self {
            client: Client::new(&cfg)?,
            cfg,
        })
    }
}

/// Server-sent events split out of a byte stream, whatever the chunking.
#[derive(Default)]
struct SseLines {
    buf: Vec<u8>,
}

impl SseLines {
    /// Complete `data:` payloads in what has arrived so far.
    fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if let Some(d) = line.strip_prefix("data:") {
                out.push(d.strip_prefix(' ').unwrap_or(d).to_string());
            }
        }
        out
    }
}

#[async_trait]
impl Generator for OpenAiGenerator {
    fn model_id(&self) -> &str {
        &self.cfg.model
    }

    fn context_length(&self) -> usize {
        self.cfg.context_length
    }

    /// An estimate (4 bytes a token): the API has no tokenizer endpoint.
    fn count_tokens(&self, text: &str) -> Result<usize> {
        Ok(text.len().div_ceil(4))
    }

    fn has_chat_template(&self) -> bool {
        true
    }

    async fn generate(
        &self,
        prompt: Prompt,
        options: GenerationOptions,
    ) -> Result<GenerationStream> {
        options.validate()?;
        if !options.adapters.is_empty() {
            // the chat completions API has no per-request adapters: servers
            // that host LoRA adapters (vLLM, docqa serve) name them as models
            return Err(Error::InvalidInput(format!(
                "{} is served over the OpenAI API, which applies no per-request LoRA adapters: name the adapted model instead (for docqa serve: \"{}+{}\")",
                self.cfg.model,
                self.cfg.model,
                options.adapters.iter().map(|a| a.name.as_str()).collect::<Vec<_>>().join("+")
            )));
        }
        let messages: Vec<Value> = match &prompt {
            Prompt::Text(t) => vec![json!({"role": "user", "content": t})],
            Prompt::Chat(m) => m
                .iter()
                .map(|m| json!({"role": m.role.as_str(), "content": m.content}))
                .collect(),
        };
        let mut body = json!({
            "model": self.cfg.model,
            "messages": messages,
            "stream": true,
            "stream_options": {"include_usage": true},
            "max_tokens": options.max_tokens,
            "temperature": options.temperature,
        });
        if options.top_p < 1.0 {
            body["top_p"] = json!(options.top_p);
        }
        if let Some(s) = options.seed {
            body["seed"] = json!(s);
        }
        if !options.stop.is_empty() {
            // the API takes at most four
            body["stop"] = json!(options.stop.iter().take(4).collect::<Vec<_>>());
        }
        let t0 = Instant::now();
        let resp = self.client.post("chat/completions", &body).await?;
        let cancel = options.cancel.clone();
        let bytes = resp.bytes_stream();
        struct St<S> {
            bytes: S,
            lines: SseLines,
            pending: std::collections::VecDeque<Result<GenerationEvent>>,
            finish: Option<FinishReason>,
            usage: Usage,
            t0: Instant,
            first: Option<Instant>,
            deltas: usize,
            done: bool,
            cancel: Option<magpie_core::CancelToken>,
        }
        let st = St {
            bytes,
            lines: SseLines::default(),
            pending: Default::default(),
            finish: None,
            usage: Usage::default(),
            t0,
            first: None,
            deltas: 0,
            done: false,
            cancel,
        };
        let stream = futures::stream::unfold(st, |mut st| async move {
            loop {
                if let Some(ev) = st.pending.pop_front() {
                    return Some((ev, st));
                }
                if st.done {
                    return None;
                }
                let cancelled = st.cancel.as_ref().is_some_and(|c| c.is_cancelled());
                let chunk = if cancelled {
                    st.finish = Some(FinishReason::Cancelled);
                    None
                } else {
                    st.bytes.next().await
                };
                let payloads = match chunk {
                    Some(Ok(b)) => st.lines.push(&b),
                    Some(Err(e)) => {
                        st.done = true;
                        return Some((
                            Err(Error::stage(
                                "openai",
                                format!(
                                    "the answer stream broke: {}",
                                    magpie_core::error_chain(&e)
                                ),
                            )),
                            st,
                        ));
                    }
                    // The connection ended: normal after a finish reason, else cut short.
                    None if st.finish.is_some() || cancelled => vec!["[DONE]".to_string()],
                    None => {
                        st.done = true;
                        return Some((
                            Err(Error::stage(
                                "openai",
                                "the answer stream ended before the model finished",
                            )),
                            st,
                        ));
                    }
                };
                for p in payloads {
                    if st.done {
                        break;
                    }
                    if p.trim() == "[DONE]" {
                        st.done = true;
                        let gen_ms = st
                            .first
                            .map(|f| f.elapsed().as_secs_f64() * 1e3)
                            .unwrap_or(0.0);
                        let mut usage = st.usage;
                        if usage.completion_tokens == 0 {
                            usage.completion_tokens = st.deltas;
                            usage.total_tokens = usage.prompt_tokens + st.deltas;
                        }
                        let ttft = st
                            .first
                            .map(|f| (f - st.t0).as_secs_f64() * 1e3)
                            .unwrap_or(0.0);
                        st.pending
                            .push_back(Ok(GenerationEvent::Done(GenerationSummary {
                                finish_reason: st.finish.unwrap_or(FinishReason::Stop),
                                usage,
                                timings: Timings {
                                    prompt_ms: ttft,
                                    time_to_first_token_ms: ttft,
                                    generation_ms: gen_ms,
                                    prompt_tokens_per_sec: 0.0,
                                    tokens_per_sec: if gen_ms > 0.0 && usage.completion_tokens > 1 {
                                        (usage.completion_tokens - 1) as f64 / (gen_ms / 1e3)
                                    } else {
                                        0.0
                                    },
                                    context_shifts: 0,
                                },
                            })));
                        break;
                    }
                    let v: Value = match serde_json::from_str(&p) {
                        Ok(v) => v,
                        Err(e) => {
                            st.done = true;
                            st.pending.push_back(Err(Error::stage(
                                "openai",
                                format!("the server sent an event that is not JSON ({e}): {p}"),
                            )));
                            break;
                        }
                    };
                    if let Some(m) = v["error"]["message"].as_str() {
                        st.done = true;
                        st.pending.push_back(Err(Error::stage(
                            "openai",
                            format!("the server stopped the answer: {m}"),
                        )));
                        break;
                    }
                    if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                        let n = |k: &str| u[k].as_u64().unwrap_or(0) as usize;
                        st.usage = Usage {
                            prompt_tokens: n("prompt_tokens"),
                            completion_tokens: n("completion_tokens"),
                            total_tokens: n("total_tokens"),
                        };
                    }
                    if let Some(choice) = v["choices"].get(0) {
                        if let Some(t) = choice["delta"]["content"].as_str() {
                            if !t.is_empty() {
                                st.first.get_or_insert_with(Instant::now);
                                st.deltas += 1;
                                st.pending.push_back(Ok(GenerationEvent::Delta {
                                    text: t.to_string(),
                                }));
                            }
                        }
                        if let Some(f) = choice["finish_reason"].as_str() {
                            st.finish = Some(match f {
                                "length" => FinishReason::Length,
                                _ => FinishReason::Stop,
                            });
                        }
                    }
                }
                if cancelled && !st.done {
                    st.done = true;
                    st.pending
                        .push_back(Ok(GenerationEvent::Done(GenerationSummary {
                            finish_reason: FinishReason::Cancelled,
                            usage: st.usage,
                            timings: Timings::default(),
                        })));
                }
            }
        });
        Ok(Box::pin(stream))
    }
}

/// Most texts sent in one `/embeddings` request.
const EMBED_BATCH: usize = 64;

/// An embedding model behind an OpenAI-compatible `/embeddings`.
pub struct OpenAiEmbedder {
    client: Client,
    cfg: OpenAiConfig,
    dimension: usize,
}

impl OpenAiEmbedder {
    /// Connect and learn the vectors' length from one probe request.
    pub async fn connect(cfg: OpenAiConfig) -> Result<Self> {
        let client = Client::new(&cfg)?;
        let mut this = Self {
            client,
            cfg,
            dimension: 0,
        };
        let probe = this.embed(&["dimension probe".to_string()]).await?;
        this.dimension = probe.first().map(Vec::len).unwrap_or(0);
        if this.dimension == 0 {
            return Err(Error::stage(
                "openai",
                "the server returned an empty embedding",
            ));
        }
        Ok(this)
    }
}

#[async_trait]
impl Embedder for OpenAiEmbedder {
    fn model_id(&self) -> &str {
        &self.cfg.model
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(texts.len());
        for batch in texts.chunks(EMBED_BATCH) {
            let body = json!({"model": self.cfg.model, "input": batch, "encoding_format": "float"});
            let resp = self.client.post("embeddings", &body).await?;
            let v: Value = resp.json().await.map_err(|e| {
                Error::stage("openai", format!("the embeddings answer is not JSON: {e}"))
            })?;
            let data = v["data"]
                .as_array()
                .ok_or_else(|| Error::stage("openai", "the embeddings answer has no data"))?;
            let mut got: Vec<(usize, Vec<f32>)> = data
                .iter()
                .map(|d| {
                    let i = d["index"].as_u64().unwrap_or(0) as usize;
                    let e = d["embedding"]
                        .as_array()
                        .map(|a| a.iter().map(|x| x.as_f64().unwrap_or(0.0) as f32).collect())
                        .unwrap_or_default();
                    (i, e)
                })
                .collect();
            got.sort_by_key(|(i, _)| *i);
            if got.len() != batch.len() || got.iter().enumerate().any(|(k, (i, _))| k != *i) {
                return Err(Error::stage(
                    "openai",
                    format!("asked for {} embeddings, got {}", batch.len(), got.len()),
                ));
            }
            if self.dimension > 0 && got.iter().any(|(_, e)| e.len() != self.dimension) {
                return Err(Error::stage(
                    "openai",
                    "the server returned vectors of another length than before",
                ));
            }
            out.extend(got.into_iter().map(|(_, e)| e));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_found_whatever_the_chunking() {
        let text = b"data: {\"a\":1}\r\n\r\ndata:{\"b\":2}\n\n: keep-alive\n\ndata: [DONE]\n\n";
        for cut in 1..text.len() {
            let mut s = SseLines::default();
            let mut got = s.push(&text[..cut]);
            got.extend(s.push(&text[cut..]));
            assert_eq!(
                got,
                vec!["{\"a\":1}", "{\"b\":2}", "[DONE]"],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn bad_base_urls_are_refused() {
        assert!(OpenAiGenerator::new(OpenAiConfig::new("not a url", "m")).is_err());
        assert!(OpenAiGenerator::new(OpenAiConfig::new("ftp://x/v1", "m")).is_err());
        assert!(OpenAiGenerator::new(OpenAiConfig::new("http://127.0.0.1:1/v1", "m")).is_ok());
    }
}
