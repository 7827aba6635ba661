//! Sentence embeddings with a BERT-family encoder: batched, length-sorted,
//! mean pooling over real tokens, L2-normalised (as sentence-transformers does).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::Config;
use candle_transformers::models::xlm_roberta::{Config as XlmrConfig, XLMRobertaModel};
use magpie_core::{Embedder, Error, LanguageSupport, Result, TokenCounter};
use tokenizers::{Tokenizer, TruncationParams};
use tracing::{debug, info};

use crate::candle_bert::CandleBert;
use crate::card::{card_languages, pooling_of, sentence_bert_max_len, Prompts};
use crate::device::select_device;
use crate::encoder::gemm::Isa;
use crate::encoder::int8::Int8Isa;
use crate::encoder::{BertEncoder, EncoderConfig, EncoderOptions, Pooling};
use crate::resolve::resolve_model_dir;
use crate::CandleError;

fn stage(e: impl Into<CandleError>) -> Error {
    Error::stage("embedder", e.into())
}

/// Configures and loads a [`BertEmbedder`].
#[derive(Debug, Clone)]
pub struct BertEmbedderBuilder {
    spec: String,
    max_tokens: Option<usize>,
    batch_size: usize,
    batch_tokens: Option<usize>,
    device: Option<Device>,
    generic: bool,
    kernels: Option<Isa>,
    int8: bool,
    languages: Option<LanguageSupport>,
    prompts: Option<Prompts>,
    f16: Option<bool>,
}

impl BertEmbedderBuilder {
    /// Longest input in tokens (default: the model's `max_seq_length`, else 256).
    pub fn max_tokens(mut self, n: usize) -> Self {
        self.max_tokens = Some(n);
        self
    }

    /// At most this many sentences per forward pass (default 256; the token
    /// budget usually closes a batch first).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// At most this many tokens per forward pass (default 512 on magpie's
    /// CPU encoder, where a batch's activations then stay in the caches, and
    /// 4,096 on candle's). Inputs are sorted by length and packed up to this
    /// budget, so a batch of short queries and one of long passages do about
    /// the same work per pass; an input longer than the budget goes alone.
    pub fn batch_tokens(mut self, n: usize) -> Self {
        self.batch_tokens = Some(n.max(1));
        self
    }

    /// Run on candle's generic BERT instead of magpie's own encoder (on a GPU
    /// that is the path anyway; on the CPU it is about 3× slower, kept for
    /// comparison). `MAGPIE_EMBEDDER=candle` does the same from outside.
    pub fn generic_bert(mut self, yes: bool) -> Self {
        self.generic = yes;
        self
    }

    /// Cap magpie's encoder at this kernel family (default: the best this CPU
    /// runs). For comparing kernels; vectors agree to rounding.
    pub fn kernels(mut self, isa: Isa) -> Self {
        self.kernels = Some(isa);
        self
    }

    /// Run the linear layers in int8 (weights quantized per output channel
    /// at load, activations per row) where the CPU has AVX-512 VNNI (on AMX
    /// tiles where it has AMX-INT8) or AVX2 without AVX-512; f32 elsewhere. On by default: about 1.5×
    /// faster with VNNI, 2× with AMX, and SciFact nDCG@10 within 0.004 of f32
    /// (BENCHMARKS.md). `int8(false)` gives sentence-transformers' vectors
    /// (cosine ≥ 0.9999).
    pub fn int8(mut self, yes: bool) -> Self {
        self.int8 = yes;
        self
    }

    /// Put these before queries and passages, over what the model's
    /// `config_sentence_transformers.json` says.
    pub fn prompts(mut self, p: Prompts) -> Self {
        self.prompts = Some(p);
        self
    }

    /// Declare the languages the model covers, over what its model card
    /// (README.md's `language:`) says.
    pub fn languages(mut self, l: LanguageSupport) -> Self {
        self.languages = Some(l);
        self
    }

    /// Run on this device instead of the automatic choice.
    pub fn device(mut self, d: Device) -> Self {
        self.device = Some(d);
        self
    }

    /// Run candle's BERT in f16 (weights and activations; pooling and the
    /// norm in f32). The default on a GPU, where it halves the weights read
    /// and runs on the tensor cores; on the CPU the default is f32 (or int8)
    /// on magpie's own encoder, and `f16(true)` there runs candle's BERT in
    /// f16 (slow; for checking the GPU's arithmetic on a machine without one).
    /// `f16(false)` keeps f32 on a GPU.
    pub fn f16(mut self, yes: bool) -> Self {
        self.f16 = Some(yes);
        self
    }

    /// Load the model.
    pub fn build(self) -> Result<BertEmbedder> {
        let dir = resolve_model_dir(&self.spec).map_err(stage)?;
        let file = |name: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            if p.exists() {
                Ok(p)
            } else {
                Err(stage(CandleError::Model(format!(
                    "{} has no {name}; a BERT embedding model needs config.json, tokenizer.json and model.safetensors",
                    dir.display()
                ))))
            }
        };
        let config_path = file("config.json")?;
        let tokenizer_path = file("tokenizer.json")?;
        let weights = file("model.safetensors")?;
        let bad_config = |e: serde_json::Error| {
            stage(CandleError::Model(format!(
                "{}: {e}",
                config_path.display()
            )))
        };
        let raw: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&config_path)
                .map_err(|e| Error::io(config_path.display().to_string(), e))?,
        )
        .map_err(bad_config)?;
        let config: Config = serde_json::from_value(raw.clone()).map_err(bad_config)?;
        let roberta = crate::encoder::is_roberta(&raw);
        // RoBERTa models number positions from the padding index + 1.
        let usable_positions = if roberta {
            config
                .max_position_embeddings
                .saturating_sub(config.pad_token_id + 1)
        } else {
            config.max_position_embeddings
        };
        let max_tokens = self
            .max_tokens
            .or_else(|| sentence_bert_max_len(&dir))
            .unwrap_or(256)
            .min(usable_positions)
            .max(1);
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path).map_err(|e| {
            stage(CandleError::Tokenizer(format!(
                "{}: {e}",
                tokenizer_path.display()
            )))
        })?;
        // tokenizer.json files often fix padding/truncation at 128: we pad per batch
        // to the longest input and truncate at the model's sequence length.
        tokenizer.with_padding(None);
        let mut counter_tok = tokenizer.clone();
        counter_tok
            .with_truncation(None)
            .map_err(|e| stage(CandleError::Tokenizer(e.to_string())))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(|e| stage(CandleError::Tokenizer(e.to_string())))?;
        let device = self.device.unwrap_or_else(select_device);
        let pooling = pooling_of(&dir);
        let dtype = if self.f16.unwrap_or(!device.is_cpu()) {
            DType::F16
        } else {
            DType::F32
        };
        let backend = load_backend(
            &raw,
            &weights,
            &config,
            device,
            self.generic || dtype == DType::F16,
            dtype,
            EncoderOptions {
                kernels: self.kernels,
                int8: self.int8,
            },
        )?;
        // magpie's encoder keeps a batch's activations in the cores' caches
        // at 512 tokens (1.7× the rate of 4,096 on 250-token passages, see
        // BENCHMARKS.md); a padded GPU batch wants more
        let batch_tokens = self.batch_tokens.unwrap_or(match backend {
            Backend::Owned(_) => 512,
            Backend::Candle { .. } => 4096,
        });
        let model_id = model_id_for(&self.spec);
        let prompts = self.prompts.unwrap_or_else(|| Prompts::of(&dir, &model_id));
        if !prompts.query.is_empty() || !prompts.passage.is_empty() {
            info!(query = %prompts.query, passage = %prompts.passage, "the model's prompts");
        }
        info!(
            model = %model_id,
            dim = config.hidden_size,
            max_tokens,
            ?pooling,
            backend = backend.name(),
            "embedding model loaded"
        );
        let languages = self.languages.unwrap_or_else(|| card_languages(&dir));
        info!(model = %model_id, ?languages, "declared languages");
        Ok(BertEmbedder {
            languages,
            inner: Arc::new(Inner {
                backend,
                tokenizer,
                pooling,
                pad_id: config.pad_token_id as u32,
                prompts,
                batch_size: self.batch_size,
                batch_tokens,
            }),
            counter: Arc::new(HfTokenCounter::new(counter_tok)),
            model_id,
            dim: config.hidden_size,
            max_tokens,
        })
    }
}

/// The model's tensors in `dtype`, with each linear layer's weight `W` (out × in) stored as
/// a transposed view of a contiguous `Wᵀ`. `Linear` multiplies by `W.t()`,
/// which is then contiguous: the matrix product reads the weights in order
/// instead of repacking a strided matrix on every call (70% of a short
/// query's embedding time went to that repacking).
fn linear_weights_transposed(
    weights: &Path,
    device: &Device,
    dtype: DType,
) -> Result<std::collections::HashMap<String, Tensor>> {
    let mut tensors = candle_core::safetensors::load(weights, device).map_err(stage)?;
    for (name, t) in tensors.iter_mut() {
        let is_linear = name.ends_with(".weight") && t.rank() == 2 && !name.contains("embeddings");
        if is_linear {
            let converted = t.to_dtype(dtype).map_err(stage)?;
            *t = converted
                .t()
                .and_then(|x| x.contiguous())
                .and_then(|x| x.t())
                .map_err(stage)?;
        }
    }
    Ok(tensors)
}

/// A hub id names the model as given; a directory by its last component.
fn model_id_for(spec: &str) -> String {
    if spec.contains('/') && !Path::new(spec).exists() {
        return spec.to_string();
    }
    Path::new(spec.trim_end_matches('/'))
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| spec.to_string())
}

/// Which forward pass runs the model.
enum Backend {
    /// magpie's own CPU encoder ([`crate::encoder`]).
    Owned(BertEncoder),
    /// candle's generic BERT or XLM-R (GPUs, and models the own pass does
    /// not cover).
    Candle {
        model: CandleModel,
        device: Device,
        f16: bool,
    },
}

impl Backend {
    fn name(&self) -> &'static str {
        match self {
            Backend::Owned(e) => match (e.isa(), e.int8_isa()) {
                (_, Some(Int8Isa::Amx)) => "magpie-int8-amx",
                (_, Some(Int8Isa::Vnni)) => "magpie-int8-vnni",
                (_, Some(Int8Isa::Avx2)) => "magpie-int8-avx2",
                (Isa::Avx512, None) => "magpie-avx512",
                (Isa::Avx2, None) => "magpie-avx2",
                (Isa::Portable, None) => "magpie-portable",
            },
            Backend::Candle { f16: true, .. } => "candle-f16",
            Backend::Candle { .. } => "candle",
        }
    }
}

/// The own encoder on the CPU unless `MAGPIE_EMBEDDER=candle` or the model is
/// outside what it covers (then candle, with the reason logged).
fn load_backend(
    raw: &serde_json::Value,
    weights: &Path,
    config: &Config,
    device: Device,
    generic: bool,
    dtype: DType,
    opts: EncoderOptions,
) -> Result<Backend> {
    let want_candle = generic || std::env::var("MAGPIE_EMBEDDER").as_deref() == Ok("candle");
    if device.is_cpu() && !want_candle {
        match EncoderConfig::from_json(raw) {
            Ok(cfg) => {
                let tensors =
                    candle_core::safetensors::load(weights, &Device::Cpu).map_err(stage)?;
                let mut plain = std::collections::HashMap::new();
                for (name, t) in tensors {
                    if name.ends_with("position_ids") {
                        continue;
                    }
                    let dims = t.dims().to_vec();
                    let v = t
                        .to_dtype(DType::F32)
                        .and_then(|t| t.flatten_all())
                        .and_then(|t| t.to_vec1::<f32>())
                        .map_err(stage)?;
                    plain.insert(name, (dims, v));
                }
                let enc = BertEncoder::new(cfg, plain, opts).map_err(|e| {
                    stage(CandleError::Model(format!("{}: {e}", weights.display())))
                })?;
                return Ok(Backend::Owned(enc));
            }
            Err(why) => info!("embedding on candle's BERT: {why}"),
        }
    }
    let tensors = linear_weights_transposed(weights, &device, dtype)?;
    let roberta_prefix = tensors.keys().any(|k| k.starts_with("roberta."));
    let vb = VarBuilder::from_tensors(tensors, dtype, &device);
    let model = if crate::encoder::is_roberta(raw) {
        let vb = if roberta_prefix { vb.pp("roberta") } else { vb };
        CandleModel::Xlmr(XLMRobertaModel::new(&xlmr_config(config), vb).map_err(stage)?)
    } else {
        CandleModel::Bert(CandleBert::load(vb, config).map_err(stage)?)
    };
    Ok(Backend::Candle {
        model,
        device,
        f16: dtype == DType::F16,
    })
}

/// candle's XLM-R configuration from the fields BERT's shares (configs
/// saved by recent transformers omit some fields candle's own parser needs).
fn xlmr_config(c: &Config) -> XlmrConfig {
    XlmrConfig {
        hidden_size: c.hidden_size,
        layer_norm_eps: c.layer_norm_eps,
        attention_probs_dropout_prob: 0.0,
        hidden_dropout_prob: 0.0,
        num_attention_heads: c.num_attention_heads,
        position_embedding_type: "absolute".into(),
        intermediate_size: c.intermediate_size,
        hidden_act: candle_nn::Activation::Gelu,
        num_hidden_layers: c.num_hidden_layers,
        vocab_size: c.vocab_size,
        max_position_embeddings: c.max_position_embeddings,
        type_vocab_size: c.type_vocab_size,
        pad_token_id: c.pad_token_id as u32,
    }
}

/// candle's generic models.
enum CandleModel {
    Bert(CandleBert),
    Xlmr(XLMRobertaModel),
}

struct Inner {
    backend: Backend,
    tokenizer: Tokenizer,
    pooling: Pooling,
    pad_id: u32,
    prompts: Prompts,
    batch_size: usize,
    batch_tokens: usize,
}

/// A BERT-family sentence embedder on candle.
#[derive(Clone)]
pub struct BertEmbedder {
    languages: LanguageSupport,
    inner: Arc<Inner>,
    counter: Arc<HfTokenCounter>,
    model_id: String,
    dim: usize,
    max_tokens: usize,
}

impl std::fmt::Debug for BertEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertEmbedder")
            .field("model", &self.model_id)
            .field("dim", &self.dim)
            .finish()
    }
}

impl BertEmbedder {
    /// Start configuring an embedder for a model directory or hub id.
    pub fn builder(spec: impl Into<String>) -> BertEmbedderBuilder {
        BertEmbedderBuilder {
            spec: spec.into(),
            max_tokens: None,
            batch_size: 256,
            batch_tokens: None,
            device: None,
            generic: false,
            kernels: None,
            int8: true,
            languages: None,
            prompts: None,
            f16: None,
        }
    }

    /// Load with defaults.
    pub fn load(spec: impl Into<String>) -> Result<Self> {
        Self::builder(spec).build()
    }

    /// A token counter with this model's tokenizer (for sizing chunks).
    pub fn token_counter(&self) -> Arc<HfTokenCounter> {
        self.counter.clone()
    }

    /// The forward pass in use: `magpie-avx512`, `magpie-avx2`,
    /// `magpie-portable` (magpie's encoder), `candle` or `candle-f16`.
    pub fn backend(&self) -> &'static str {
        self.inner.backend.name()
    }

    /// Longest input in tokens; longer inputs are truncated.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Embed passages synchronously (the async trait method runs this on a
    /// blocking thread).
    pub fn embed_blocking(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        self.inner
            .embed(&with_prefix(&self.inner.prompts.passage, texts))
    }

    /// The prompts put before queries and passages.
    pub fn prompts(&self) -> &Prompts {
        &self.inner.prompts
    }

    async fn run_blocking(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.embed(&texts))
            .await
            .map_err(|e| Error::stage("embedder", e))?
    }
}

impl Inner {
    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.iter().map(|s| s.as_str()).collect::<Vec<_>>(), true)
            .map_err(|e| stage(CandleError::Tokenizer(e.to_string())))?;
        let lens: Vec<usize> = encodings.iter().map(|e| e.get_ids().len().max(1)).collect();
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        for group in token_batches(&lens, self.batch_size, self.batch_tokens) {
            let vectors = match &self.backend {
                Backend::Owned(enc) => {
                    let seqs: Vec<&[u32]> = group.iter().map(|&i| encodings[i].get_ids()).collect();
                    enc.encode(&seqs, self.pooling)
                }
                Backend::Candle { model, device, .. } => {
                    candle_forward(model, device, &encodings, &group, self.pooling, self.pad_id)
                        .map_err(stage)?
                }
            };
            for (row, &i) in group.iter().enumerate() {
                out[i] = vectors[row].clone();
            }
        }
        debug!(count = texts.len(), "embedded");
        Ok(out)
    }
}

fn with_prefix(prefix: &str, texts: &[String]) -> Vec<String> {
    if prefix.is_empty() {
        texts.to_vec()
    } else {
        texts.iter().map(|t| format!("{prefix}{t}")).collect()
    }
}

/// Inputs sorted longest first and cut into batches of at most `max_count`
/// inputs and `max_tokens` tokens (a longer input goes alone). Padded
/// backends waste little, and every batch is about the same work.
pub fn token_batches(lens: &[usize], max_count: usize, max_tokens: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lens[i]));
    let mut batches = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    let mut tokens = 0;
    for i in order {
        if !cur.is_empty() && (cur.len() >= max_count || tokens + lens[i] > max_tokens) {
            batches.push(std::mem::take(&mut cur));
            tokens = 0;
        }
        tokens += lens[i];
        cur.push(i);
    }
    if !cur.is_empty() {
        batches.push(cur);
    }
    batches
}

/// One padded batch through candle's BERT.
fn candle_forward(
    model: &CandleModel,
    device: &Device,
    encodings: &[tokenizers::Encoding],
    group: &[usize],
    pooling: Pooling,
    pad_id: u32,
) -> candle_core::Result<Vec<Vec<f32>>> {
    let longest = group
        .iter()
        .map(|&i| encodings[i].get_ids().len())
        .max()
        .unwrap_or(0)
        .max(1);
    let n = group.len();
    let mut ids = vec![pad_id; n * longest];
    let mut mask = vec![0u32; n * longest];
    for (row, &i) in group.iter().enumerate() {
        let e = &encodings[i];
        for (col, (&id, &m)) in e.get_ids().iter().zip(e.get_attention_mask()).enumerate() {
            ids[row * longest + col] = id;
            mask[row * longest + col] = m;
        }
    }
    let input_ids = Tensor::from_vec(ids, (n, longest), device)?;
    let mask = Tensor::from_vec(mask, (n, longest), device)?;
    let type_ids = input_ids.zeros_like()?;
    let hidden = match model {
        CandleModel::Bert(m) => m.forward(&input_ids, &type_ids, &mask)?,
        CandleModel::Xlmr(m) => m.forward(&input_ids, &mask, &type_ids, None, None, None)?,
    }; // (n, len, dim)
       // pooling and the norm in f32 whatever the model ran in
    let hidden = hidden.to_dtype(DType::F32)?;
    let pooled = match pooling {
        Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
        Pooling::Mean => {
            let maskf = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (n, len, 1)
            let summed = hidden.broadcast_mul(&maskf)?.sum(1)?; // (n, dim)
            let counts = maskf.sum(1)?.clamp(1e-9, f64::MAX)?; // (n, 1)
            summed.broadcast_div(&counts)?
        }
    };
    let norm = pooled
        .sqr()?
        .sum_keepdim(1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    pooled.broadcast_div(&norm)?.to_vec2::<f32>()
}

#[async_trait]
impl Embedder for BertEmbedder {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn dimension(&self) -> usize {
        self.dim
    }
    fn languages(&self) -> LanguageSupport {
        self.languages.clone()
    }
    fn token_coverage(&self, text: &str) -> Option<f32> {
        self.counter.known_share(text)
    }

    /// Queries get the model's query prompt (if any): one batched call.
    async fn embed_queries(&self, queries: &[String]) -> Result<Vec<Vec<f32>>> {
        let texts = with_prefix(&self.inner.prompts.query, queries);
        self.run_blocking(texts).await
    }

    async fn embed_query(&self, query: &str) -> Result<Vec<f32>> {
        let mut v = self.embed_queries(&[query.to_string()]).await?;
        v.pop()
            .ok_or_else(|| Error::stage("embedder", "no vector returned for the query"))
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let texts = with_prefix(&self.inner.prompts.passage, texts);
        self.run_blocking(texts).await
    }
}

/// Counts tokens with a Hugging Face tokenizer (no truncation, no special tokens).
pub struct HfTokenCounter {
    tokenizer: Tokenizer,
    unk: Option<u32>,
}

impl HfTokenCounter {
    fn new(tokenizer: Tokenizer) -> Self {
        let unk = ["[UNK]", "<unk>"]
            .iter()
            .find_map(|t| tokenizer.token_to_id(t));
        Self { tokenizer, unk }
    }

    /// Share of `text`'s tokens that are not the unknown token (`None`
    /// without an unknown token or without tokens).
    pub fn known_share(&self, text: &str) -> Option<f32> {
        let unk = self.unk?;
        let enc = self.tokenizer.encode(text, false).ok()?;
        let ids = enc.get_ids();
        if ids.is_empty() {
            return None;
        }
        let known = ids.iter().filter(|&&id| id != unk).count();
        Some(known as f32 / ids.len() as f32)
    }

    /// A counter from a tokenizer.json file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let mut tokenizer = Tokenizer::from_file(path.as_ref())
            .map_err(|e| stage(CandleError::Tokenizer(e.to_string())))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| stage(CandleError::Tokenizer(e.to_string())))?;
        Ok(Self::new(tokenizer))
    }
}

impl TokenCounter for HfTokenCounter {
    fn token_offsets(&self, text: &str) -> Vec<(usize, usize)> {
        match self.tokenizer.encode(text, false) {
            Ok(enc) => enc
                .get_offsets()
                .iter()
                .copied()
                .filter(|(a, b)| b > a)
                .collect(),
            Err(e) => {
                tracing::warn!("tokenizer failed ({e}); counting words instead");
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::token_batches;

    #[test]
    fn batches_respect_both_budgets_and_cover_every_input_once() {
        let lens = [5, 300, 12, 12, 7, 80, 1, 40, 40, 40];
        for (count, tokens) in [(4, 100), (2, 1000), (100, 64), (1, 1)] {
            let batches = token_batches(&lens, count, tokens);
            let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
            seen.sort();
            assert_eq!(seen, (0..lens.len()).collect::<Vec<_>>());
            for b in &batches {
                assert!(b.len() <= count, "{b:?} over {count} inputs");
                let sum: usize = b.iter().map(|&i| lens[i]).sum();
                assert!(
                    b.len() == 1 || sum <= tokens,
                    "{b:?}: {sum} tokens over {tokens}"
                );
                // longest first: a batch never holds an input longer than one before it
                assert!(b.windows(2).all(|w| lens[w[0]] >= lens[w[1]]));
            }
        }
    }
}
