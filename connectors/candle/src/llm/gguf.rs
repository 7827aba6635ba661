//! Reading GGUF files: metadata accessors, checks for truncated or corrupt
//! files, and the architecture-specific hyper-parameters.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;

use super::LlmError;

/// Architectures magpie runs.
pub const SUPPORTED_ARCHITECTURES: &[&str] =
    &["chatglm", "gemma3", "glm4", "llama", "qwen2", "qwen3"];

/// Typed access to GGUF metadata.
#[derive(Debug, Clone)]
pub struct Metadata(pub HashMap<String, Value>);

impl Metadata {
    /// A string value.
    pub fn string(&self, k: &str) -> Option<&str> {
        self.0.get(k)?.to_string().ok().map(|s| s.as_str())
    }
    /// An integer value as u32 (any integer type).
    pub fn u32(&self, k: &str) -> Option<u32> {
        let v = self.0.get(k)?;
        v.to_u32()
            .ok()
            .or_else(|| v.to_i32().ok().map(|x| x as u32))
            .or_else(|| v.to_u64().ok().map(|x| x as u32))
            .or_else(|| v.to_u16().ok().map(|x| x as u32))
            .or_else(|| v.to_u8().ok().map(|x| x as u32))
    }
    /// A float value.
    pub fn f32(&self, k: &str) -> Option<f32> {
        let v = self.0.get(k)?;
        v.to_f32()
            .ok()
            .or_else(|| v.to_f64().ok().map(|x| x as f32))
    }
    /// A boolean value.
    pub fn bool(&self, k: &str) -> Option<bool> {
        self.0.get(k)?.to_bool().ok()
    }
    /// An array of strings.
    pub fn string_array(&self, k: &str) -> Option<Vec<String>> {
        self.0
            .get(k)?
            .to_vec()
            .ok()?
            .iter()
            .map(|v| v.to_string().ok().cloned())
            .collect()
    }
    /// An array of floats.
    pub fn f32_array(&self, k: &str) -> Option<Vec<f32>> {
        self.0
            .get(k)?
            .to_vec()
            .ok()?
            .iter()
            .map(|v| v.to_f32().ok())
            .collect()
    }
    /// An array of integers.
    pub fn i32_array(&self, k: &str) -> Option<Vec<i32>> {
        self.0
            .get(k)?
            .to_vec()
            .ok()?
            .iter()
            .map(|v| {
                v.to_i32()
                    .ok()
                    .or_else(|| v.to_u32().ok().map(|x| x as i32))
            })
            .collect()
    }
}

/// Which block layout a model uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama 1/2/3, Mistral, TinyLlama, open_llama.
    Llama,
    /// Qwen 2 / 2.5 (biases on q, k, v).
    Qwen2,
    /// Qwen 3 (q/k norms).
    Qwen3,
    /// Gemma 3 (q/k norms, sandwich norms, GELU, local sliding-window layers).
    Gemma3,
    /// ChatGLM3 and GLM-4 (fused q/k/v with biases, gate and up fused in one
    /// matrix, RoPE on the first half of each head, interleaved pairs).
    ChatGlm,
    /// GLM-4-0414 (ChatGLM's layout plus sandwich norms after attention and MLP).
    Glm4,
}

impl Arch {
    /// The GGUF name.
    pub fn name(&self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma3 => "gemma3",
            Arch::ChatGlm => "chatglm",
            Arch::Glm4 => "glm4",
        }
    }
}

/// Hyper-parameters of a model.
#[derive(Debug, Clone)]
pub struct LlmConfig {
    /// Block layout.
    pub arch: Arch,
    /// Layers.
    pub n_layer: usize,
    /// Hidden size.
    pub n_embd: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads.
    pub n_head_kv: usize,
    /// Size of one head.
    pub head_dim: usize,
    /// Feed-forward size.
    pub n_ff: usize,
    /// RMS norm epsilon.
    pub rms_eps: f64,
    /// RoPE base of global layers.
    pub rope_base: f32,
    /// RoPE base of local (sliding-window) layers.
    pub rope_base_local: f32,
    /// Linear RoPE scaling factor of global layers (1 = none).
    pub rope_scale: f32,
    /// Rotated dimensions of each head (the first ones; the head size for
    /// most models, half of it for the GLM family).
    pub rope_dim: usize,
    /// Rotate halves (NeoX) rather than interleaved pairs (llama).
    pub rope_neox: bool,
    /// Context length the model was trained for.
    pub context_length: usize,
    /// Sliding window of local layers, if any.
    pub sliding_window: Option<usize>,
    /// Every `swa_pattern`-th layer is global, the others local (0 = all global).
    pub swa_pattern: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
}

impl LlmConfig {
    /// Whether layer `i` uses the sliding window.
    pub fn is_local(&self, i: usize) -> bool {
        self.sliding_window.is_some()
            && self.swa_pattern > 0
            && i % self.swa_pattern < self.swa_pattern - 1
    }
}

/// An opened GGUF file: metadata and tensor directory, checked against the file size.
pub struct ModelFile {
    /// Where it is.
    pub path: PathBuf,
    /// Parsed header.
    pub content: Content,
    /// Metadata.
    pub metadata: Metadata,
    /// Bytes on disk.
    pub file_size: u64,
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> LlmError {
    LlmError::BadFile(format!(
        "{} is not a usable GGUF model: {what}. Download it again, or check the download",
        path.display()
    ))
}

impl ModelFile {
    /// Open and check `path`.
    pub fn open(path: &Path) -> Result<Self, LlmError> {
        let f = File::open(path).map_err(|e| {
            LlmError::BadFile(format!(
                "cannot open {}: {e}. Give the path of a .gguf file",
                path.display()
            ))
        })?;
        let file_size = f.metadata().map(|m| m.len()).unwrap_or(0);
        let mut r = BufReader::new(f);
        let mut content = Content::read(&mut r).map_err(|e| corrupt(path, e))?;
        for (name, info) in &content.tensor_infos {
            let elems = info.shape.elem_count();
            let bs = info.ggml_dtype.block_size();
            if elems % bs != 0 {
                return Err(corrupt(
                    path,
                    format!("tensor {name} has a shape that does not fit its type"),
                ));
            }
            let bytes = (elems / bs) as u64 * info.ggml_dtype.type_size() as u64;
            let end = content.tensor_data_offset + info.offset + bytes;
            if end > file_size {
                return Err(corrupt(
                    path,
                    format!(
                        "it is truncated: tensor {name} ends at byte {end} but the file has {file_size}"
                    ),
                ));
            }
        }
        // moved, not copied: the vocabulary alone is 262,144 strings in Gemma 3
        let metadata = Metadata(std::mem::take(&mut content.metadata));
        Ok(Self {
            path: path.to_path_buf(),
            content,
            metadata,
            file_size,
        })
    }

    /// The architecture name the file declares.
    pub fn arch_name(&self) -> Option<&str> {
        self.metadata.string("general.architecture")
    }

    /// Hyper-parameters, or a clear error for an unsupported architecture.
    pub fn config(&self) -> Result<LlmConfig, LlmError> {
        let name = self.arch_name().unwrap_or("(none)");
        let arch = match name {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            "gemma3" => Arch::Gemma3,
            "chatglm" => Arch::ChatGlm,
            "glm4" => Arch::Glm4,
            other => {
                return Err(LlmError::Unsupported(format!(
                    "{}: architecture {other:?} is not supported; magpie runs {}",
                    self.path.display(),
                    SUPPORTED_ARCHITECTURES.join(", ")
                )))
            }
        };
        let md = &self.metadata;
        let key = |k: &str| format!("{name}.{k}");
        let need = |k: &str| {
            md.u32(&key(k))
                .map(|v| v as usize)
                .ok_or_else(|| corrupt(&self.path, format!("metadata {} is missing", key(k))))
        };
        let n_embd = need("embedding_length")?;
        let n_head = need("attention.head_count")?;
        if n_head == 0 || n_embd == 0 {
            return Err(corrupt(&self.path, "zero heads or zero width"));
        }
        let n_head_kv = md
            .u32(&key("attention.head_count_kv"))
            .map(|v| v as usize)
            .unwrap_or(n_head);
        if n_head_kv == 0 || n_head % n_head_kv != 0 {
            return Err(corrupt(
                &self.path,
                "query heads are not a multiple of key/value heads",
            ));
        }
        let head_dim = md
            .u32(&key("attention.key_length"))
            .map(|v| v as usize)
            .unwrap_or(n_embd / n_head);
        let gemma = arch == Arch::Gemma3;
        let vocab_size = md
            .string_array("tokenizer.ggml.tokens")
            .map(|t| t.len())
            .or_else(|| md.u32(&key("vocab_size")).map(|v| v as usize))
            .unwrap_or(0);
        let scale_type = md.string(&key("rope.scaling.type")).unwrap_or("none");
        let rope_scale = if scale_type == "linear" {
            md.f32(&key("rope.scaling.factor")).unwrap_or(1.0)
        } else {
            1.0
        };
        let rope_dim = md
            .u32(&key("rope.dimension_count"))
            .map(|v| v as usize)
            .unwrap_or(head_dim);
        if rope_dim == 0 || !rope_dim.is_multiple_of(2) || rope_dim > head_dim {
            return Err(corrupt(
                &self.path,
                format!("rope.dimension_count {rope_dim} does not fit heads of {head_dim}"),
            ));
        }
        Ok(LlmConfig {
            arch,
            n_layer: need("block_count")?,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            n_ff: need("feed_forward_length")?,
            rms_eps: md
                .f32(&key("attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-6) as f64,
            rope_base: md
                .f32(&key("rope.freq_base"))
                .unwrap_or(if gemma { 1e6 } else { 10_000.0 }),
            rope_base_local: 10_000.0,
            rope_scale: rope_scale.max(1e-6),
            rope_dim,
            // llama.cpp's rope type: interleaved pairs (NORM) for llama and
            // the GLM family, halves (NEOX) for the others
            rope_neox: !matches!(arch, Arch::Llama | Arch::ChatGlm | Arch::Glm4),
            context_length: md
                .u32(&key("context_length"))
                .map(|v| v as usize)
                .unwrap_or(2048),
            sliding_window: if gemma {
                Some(md.u32(&key("attention.sliding_window")).unwrap_or(512) as usize)
            } else {
                None
            },
            swa_pattern: if gemma {
                md.u32(&key("attention.sliding_window_pattern"))
                    .unwrap_or(6) as usize
            } else {
                0
            },
            vocab_size,
        })
    }

    /// Tensor names with their types and element counts.
    pub fn tensors(&self) -> Vec<(String, GgmlDType, usize)> {
        let mut v: Vec<_> = self
            .content
            .tensor_infos
            .iter()
            .map(|(n, i)| (n.clone(), i.ggml_dtype, i.shape.elem_count()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}
