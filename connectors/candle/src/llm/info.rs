//! `docqa model info`: what a GGUF file holds and the memory it needs.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::gguf::ModelFile;
use super::LlmError;

/// Memory at one precision.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryEstimate {
    /// Precision ("as stored", "fp16", "int8", "int4").
    pub precision: String,
    /// Weights, bytes.
    pub weights_bytes: u64,
    /// KV cache at the full context (f16, magpie's default), bytes.
    pub kv_cache_bytes: u64,
    /// Sum.
    pub total_bytes: u64,
}

/// What `docqa model info` prints.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// File path.
    pub path: String,
    /// Model name from the metadata.
    pub name: Option<String>,
    /// Architecture.
    pub architecture: String,
    /// Whether magpie runs it.
    pub supported: bool,
    /// Parameters.
    pub parameters: u64,
    /// Tensor count by quantization type.
    pub quantization: BTreeMap<String, usize>,
    /// Most common type, weighted by parameters.
    pub main_type: String,
    /// Trained context length.
    pub context_length: Option<usize>,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Tokenizer kind (llama = SentencePiece, gpt2 = byte-level BPE).
    pub tokenizer: Option<String>,
    /// Whether the file has a chat template.
    pub chat_template: bool,
    /// Layers, heads, key/value heads, head size.
    pub layers: Option<usize>,
    /// Query heads.
    pub heads: Option<usize>,
    /// Key/value heads.
    pub kv_heads: Option<usize>,
    /// Head size.
    pub head_dim: Option<usize>,
    /// File size, bytes.
    pub file_bytes: u64,
    /// Memory at the stored precision and at fp16, int8, int4.
    pub memory: Vec<MemoryEstimate>,
}

/// Read `path` and describe it.
pub fn model_info(path: &Path) -> Result<ModelInfo, LlmError> {
    let f = ModelFile::open(path)?;
    let md = &f.metadata;
    let arch = f.arch_name().unwrap_or("(none)").to_string();
    let cfg = f.config().ok();
    let mut quant = BTreeMap::new();
    let mut by_params: BTreeMap<String, u64> = BTreeMap::new();
    let mut params = 0u64;
    let mut weight_bytes = 0u64;
    for (_, dt, n) in f.tensors() {
        let name = format!("{dt:?}");
        *quant.entry(name.clone()).or_insert(0) += 1;
        *by_params.entry(name).or_insert(0) += n as u64;
        params += n as u64;
        weight_bytes += (n / dt.block_size()) as u64 * dt.type_size() as u64;
    }
    let main_type = by_params
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(k, _)| k.clone())
        .unwrap_or_default();
    let kv = cfg
        .as_ref()
        .map(|c| (c.n_layer * c.n_head_kv * c.head_dim * 2 * 2) as u64 * c.context_length as u64)
        .unwrap_or(0);
    let mem = |precision: &str, w: u64| MemoryEstimate {
        precision: precision.into(),
        weights_bytes: w,
        kv_cache_bytes: kv,
        total_bytes: w + kv,
    };
    let memory = vec![
        mem("as stored", weight_bytes),
        mem("fp16", params * 2),
        mem("int8", params + params / 16), // Q8_0: 34 bytes per 32 weights
        mem("int4", params / 2 + params / 16), // Q4_0: 18 bytes per 32 weights
    ];
    Ok(ModelInfo {
        path: path.display().to_string(),
        name: md.string("general.name").map(|s| s.to_string()),
        supported: cfg.is_some(),
        architecture: arch,
        parameters: params,
        quantization: quant,
        main_type,
        context_length: cfg.as_ref().map(|c| c.context_length),
        vocab_size: md
            .string_array("tokenizer.ggml.tokens")
            .map(|t| t.len())
            .unwrap_or(0),
        tokenizer: md.string("tokenizer.ggml.model").map(|s| s.to_string()),
        chat_template: md.string("tokenizer.chat_template").is_some(),
        layers: cfg.as_ref().map(|c| c.n_layer),
        heads: cfg.as_ref().map(|c| c.n_head),
        kv_heads: cfg.as_ref().map(|c| c.n_head_kv),
        head_dim: cfg.as_ref().map(|c| c.head_dim),
        file_bytes: f.file_size,
        memory,
    })
}
