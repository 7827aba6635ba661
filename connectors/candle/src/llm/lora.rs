//! LoRA adapters in the GGUF format llama.cpp writes (`convert_lora_to_gguf.py`):
//! `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`, and
//! for each adapted matrix `W` the pair `W.lora_a` (`rank × in`) and
//! `W.lora_b` (`out × rank`), of any type the file stores.
//!
//! They are applied unmerged, `W·x + s·B·(A·x)` with `s = scale·alpha/rank`
//! (`scale` alone when the file has no alpha), so any number of adapters sit
//! on one base at once and each call picks its own set and scales.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use super::gguf::ModelFile;
use super::LlmError;

type CResult<T> = candle_core::Result<T>;

/// One factor of a pair, multiplied as llama.cpp multiplies it: a quantized
/// one against activations quantized to its dot-product type (candle's
/// quantized matmul does that), an f16 one against activations rounded to
/// f16, an f32 one in f32.
enum Factor {
    /// Quantized blocks.
    Q(QMatMul),
    /// Float weights (f16 ones widened: the same values); whether the
    /// activations are rounded to f16 first.
    Float(Tensor, bool),
}

impl Factor {
    fn new(q: QTensor) -> CResult<Self> {
        let f16 = matches!(q.dtype(), GgmlDType::F16 | GgmlDType::BF16);
        if f16 || q.dtype() == GgmlDType::F32 {
            let w = q.dequantize(&q.device())?.to_dtype(DType::F32)?;
            return Ok(Factor::Float(w, f16));
        }
        Ok(Factor::Q(QMatMul::from_arc(Arc::new(q))?))
    }

    /// `x · Wᵀ` for `x` of `[rows, in]`; only output columns `cols` of it
    /// (a slice of a fused matrix) when given.
    fn mul(&self, x: &Tensor, cols: Option<(usize, usize)>) -> CResult<Tensor> {
        match self {
            Factor::Q(q) => {
                let y = q.forward(x)?;
                match cols {
                    Some((c0, n)) => y.narrow(1, c0, n),
                    None => Ok(y),
                }
            }
            Factor::Float(w, f16) => {
                let x = if *f16 {
                    x.to_dtype(DType::F16)?.to_dtype(DType::F32)?
                } else {
                    x.clone()
                };
                let w = match cols {
                    Some((c0, n)) => w.narrow(0, c0, n)?,
                    None => w.clone(),
                };
                x.matmul(&w.t()?)
            }
        }
    }
}

/// One adapted matrix: `A` (`rank × in`) and `B` (`out × rank`).
pub(super) struct LoraPair {
    a: Factor,
    b: Factor,
    rank: usize,
    /// Values in `A` and `B`.
    params: usize,
}

/// A LoRA adapter read from a GGUF file and checked against a base model.
pub struct LoraAdapter {
    /// The name requests use for it.
    pub name: String,
    /// Where it was read from.
    pub path: PathBuf,
    /// `adapter.lora.alpha` (0 when the file has none: the scale is used as is).
    pub alpha: f32,
    /// The base architecture it was trained for.
    pub arch: String,
    pairs: HashMap<String, LoraPair>,
    /// Unique per load (names can be reused after an adapter is dropped).
    id: u64,
    /// Bytes its tensors take in the file.
    pub file_bytes: u64,
}

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// What `model info` shows of an adapter.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdapterSummary {
    /// Name requests use.
    pub name: String,
    /// File it came from.
    pub path: String,
    /// Base architecture.
    pub arch: String,
    /// `adapter.lora.alpha`.
    pub alpha: f32,
    /// Ranks used (most adapters have one).
    pub ranks: Vec<usize>,
    /// Kinds of matrices adapted (`attn_q`, `ffn_down`, `output`, ...).
    pub targets: Vec<String>,
    /// Matrices adapted.
    pub tensors: usize,
    /// Parameters added.
    pub parameters: usize,
    /// Bytes of its tensors in the file.
    pub file_bytes: u64,
}

/// The matrices of a base model an adapter may target: name → (out, in).
pub(super) type TargetShapes = HashMap<String, (usize, usize)>;

fn bad(path: &Path, what: impl std::fmt::Display) -> LlmError {
    LlmError::BadFile(format!(
        "{} is not a usable LoRA adapter: {what}",
        path.display()
    ))
}

/// Open the adapter at `path`: its header read, every tensor checked against
/// the file's size (a truncated download is refused here), and its kind.
fn open_adapter(path: &Path) -> Result<ModelFile, LlmError> {
    let file = ModelFile::open(path).map_err(|e| match e {
        LlmError::BadFile(m) => LlmError::BadFile(
            m.replace("is not a usable GGUF model", "is not a usable LoRA adapter"),
        ),
        other => other,
    })?;
    // (key, the value it must have, what else it means)
    for (key, want, why) in [
        (
            "general.type",
            "adapter",
            "is this a model rather than an adapter?",
        ),
        ("adapter.type", "lora", "only LoRA adapters are supported"),
    ] {
        let have = file.metadata.string(key);
        if have != Some(want) {
            return Err(bad(
                path,
                format!(
                    "{key} is {:?}, not {want:?} ({why})",
                    have.unwrap_or("(none)")
                ),
            ));
        }
    }
    Ok(file)
}

/// Whether the GGUF file at `path` is an adapter rather than a model.
pub fn is_adapter(path: &Path) -> bool {
    ModelFile::open(path).is_ok_and(|f| f.metadata.string("general.type") == Some("adapter"))
}

/// What an adapted matrix is called in a summary: `attn_q` for
/// `blk.3.attn_q.weight`, `output` for `output.weight`.
fn target_kind(name: &str) -> String {
    let k = name.strip_suffix(".weight").unwrap_or(name);
    match k.strip_prefix("blk.") {
        Some(rest) => rest
            .split_once('.')
            .map(|x| x.1)
            .unwrap_or(rest)
            .to_string(),
        None => k.to_string(),
    }
}

/// Rank, targets and size of the adapter at `path` from its header alone
/// (no base model needed; it is named after the file).
pub fn adapter_info(path: &Path) -> Result<AdapterSummary, LlmError> {
    let file = open_adapter(path)?;
    let mut ranks = Vec::new();
    let mut targets = Vec::new();
    let (mut tensors, mut parameters, mut file_bytes) = (0, 0, 0u64);
    for (t, info) in &file.content.tensor_infos {
        let n = info.shape.elem_count();
        if let Some(base) = t.strip_suffix(".lora_a") {
            ranks.push(info.shape.dims().first().copied().unwrap_or(0));
            targets.push(target_kind(base));
            tensors += 1;
        } else if !t.ends_with(".lora_b") {
            continue;
        }
        parameters += n;
        file_bytes +=
            (n / info.ggml_dtype.block_size()) as u64 * info.ggml_dtype.type_size() as u64;
    }
    ranks.sort_unstable();
    ranks.dedup();
    targets.sort();
    targets.dedup();
    let md = &file.metadata;
    Ok(AdapterSummary {
        name: path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        path: path.display().to_string(),
        arch: md
            .string("general.architecture")
            .unwrap_or("(none)")
            .to_string(),
        alpha: md.f32("adapter.lora.alpha").unwrap_or(0.0),
        ranks,
        targets,
        tensors,
        parameters,
        file_bytes,
    })
}

impl LoraAdapter {
    /// Read the adapter at `path` for a base of architecture `arch` whose
    /// adaptable matrices are `targets`, onto `device`.
    pub(super) fn load(
        name: &str,
        path: &Path,
        arch: &str,
        targets: &TargetShapes,
        device: &Device,
    ) -> Result<Self, LlmError> {
        let file = open_adapter(path)?;
        let md = &file.metadata;
        let file_arch = md.string("general.architecture").unwrap_or("(none)");
        if file_arch != arch {
            return Err(LlmError::InvalidInput(format!(
                "{}: the adapter was made for a {file_arch} model, but the base model is {arch}: load it on the base it was trained on",
                path.display()
            )));
        }
        let alpha = md.f32("adapter.lora.alpha").unwrap_or(0.0);
        if !alpha.is_finite() || alpha < 0.0 {
            return Err(bad(path, format!("adapter.lora.alpha is {alpha}")));
        }
        // pair up the tensors
        let mut halves: BTreeMap<String, (Option<String>, Option<String>)> = BTreeMap::new();
        for t in file.content.tensor_infos.keys() {
            if let Some(base) = t.strip_suffix(".lora_a") {
                halves.entry(base.to_string()).or_default().0 = Some(t.clone());
            } else if let Some(base) = t.strip_suffix(".lora_b") {
                halves.entry(base.to_string()).or_default().1 = Some(t.clone());
            } else if t.ends_with("_norm.weight") {
                // llama.cpp skips adapted norm vectors too
                tracing::warn!(
                    "{}: {t} is ignored (norm adapters are not applied)",
                    path.display()
                );
            } else {
                return Err(bad(
                    path,
                    format!("tensor {t} is neither a .lora_a nor a .lora_b"),
                ));
            }
        }
        if halves.is_empty() {
            return Err(bad(path, "it holds no lora_a/lora_b tensors"));
        }
        let mut reader =
            std::io::BufReader::new(std::fs::File::open(path).map_err(|e| bad(path, e))?);
        let mut read = |t: &str| -> Result<QTensor, LlmError> {
            file.content
                .tensor(&mut reader, t, device)
                .map_err(|e| bad(path, format!("tensor {t}: {e}")))
        };
        let mut pairs = HashMap::new();
        let mut file_bytes = 0u64;
        for (base, (a, b)) in &halves {
            let (Some(a), Some(b)) = (a, b) else {
                return Err(bad(
                    path,
                    format!("{base} has only one of lora_a and lora_b"),
                ));
            };
            let Some(&(out, inp)) = targets.get(base) else {
                let why = if base.starts_with("token_embd") {
                    "adapters of the token embedding are not applied by magpie yet".to_string()
                } else {
                    "the base model has no such matrix (is this adapter for another model?)"
                        .to_string()
                };
                return Err(LlmError::InvalidInput(format!(
                    "{}: it adapts {base}, but {why}",
                    path.display()
                )));
            };
            for t in [a, b] {
                let info = &file.content.tensor_infos[t];
                file_bytes += (info.shape.elem_count() / info.ggml_dtype.block_size()) as u64
                    * info.ggml_dtype.type_size() as u64;
            }
            let (ta, tb) = (read(a)?, read(b)?);
            let (Ok((ra, ia)), Ok((ob, rb))) = (ta.shape().dims2(), tb.shape().dims2()) else {
                return Err(bad(
                    path,
                    format!("{base}: lora_a and lora_b must be matrices"),
                ));
            };
            if ia != inp || ob != out {
                return Err(LlmError::InvalidInput(format!(
                    "{}: {base} is {out}×{inp} in the base model, but the adapter's pair is for {ob}×{ia}: it was made for another model",
                    path.display()
                )));
            }
            if ra != rb || ra == 0 {
                return Err(bad(
                    path,
                    format!("{base}: lora_a has rank {ra} but lora_b has rank {rb}"),
                ));
            }
            let params = ta.shape().elem_count() + tb.shape().elem_count();
            let factor = |q: QTensor| Factor::new(q).map_err(|e| bad(path, format!("{base}: {e}")));
            pairs.insert(
                base.clone(),
                LoraPair {
                    a: factor(ta)?,
                    b: factor(tb)?,
                    rank: ra,
                    params,
                },
            );
        }
        Ok(Self {
            name: name.to_string(),
            path: path.to_path_buf(),
            alpha,
            arch: arch.to_string(),
            pairs,
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            file_bytes,
        })
    }

    /// The factor `B·(A·x)` is multiplied by for a request `scale`.
    fn factor(&self, pair: &LoraPair, scale: f32) -> f64 {
        if self.alpha != 0.0 {
            (scale * self.alpha / pair.rank as f32) as f64
        } else {
            scale as f64
        }
    }

    /// Rank, targets and size, for `model info`.
    pub fn summary(&self) -> AdapterSummary {
        let mut ranks: Vec<usize> = self.pairs.values().map(|p| p.rank).collect();
        ranks.sort_unstable();
        ranks.dedup();
        let mut targets: Vec<String> = self.pairs.keys().map(|k| target_kind(k)).collect();
        targets.sort();
        targets.dedup();
        AdapterSummary {
            name: self.name.clone(),
            path: self.path.display().to_string(),
            arch: self.arch.clone(),
            alpha: self.alpha,
            ranks,
            targets,
            tensors: self.pairs.len(),
            parameters: self.pairs.values().map(|p| p.params).sum(),
            file_bytes: self.file_bytes,
        }
    }
}

/// The adapters of one call, each with its scale.
pub type ActiveLoras = [(Arc<LoraAdapter>, f32)];

/// `y + Σ s·B[rows]·(A·x)` over the adapters that adapt `name`; `rows` picks
/// the slice of a fused matrix (q, k and v of one `attn_qkv`) this output is.
pub(super) fn apply(
    y: Tensor,
    x: &Tensor,
    name: &str,
    rows: Option<(usize, usize)>,
    loras: &ActiveLoras,
) -> CResult<Tensor> {
    let mut y = y;
    for (ad, scale) in loras {
        let Some(p) = ad.pairs.get(name) else {
            continue;
        };
        let dims = x.dims().to_vec();
        let inp = *dims.last().unwrap_or(&0);
        let lead: usize = dims[..dims.len().saturating_sub(1)].iter().product();
        let x2 = x.reshape((lead, inp))?.contiguous()?;
        let ax = p.a.mul(&x2, None)?; // [lead, rank]
        let d = (p.b.mul(&ax, rows)? * ad.factor(p, *scale))?;
        let mut out_dims = dims;
        if let Some(l) = out_dims.last_mut() {
            *l = d.dim(1)?;
        }
        let d = d.reshape(out_dims)?.to_dtype(y.dtype())?;
        y = (y + d)?;
    }
    Ok(y)
}

/// A stable key of an adapter set, for the prefix cache: two calls share
/// cached positions only when their adapters and scales are the same.
pub(super) fn set_key(loras: &ActiveLoras) -> Vec<(u64, u32)> {
    loras.iter().map(|(a, s)| (a.id, s.to_bits())).collect()
}
