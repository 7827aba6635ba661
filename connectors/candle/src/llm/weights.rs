//! Weights as the forward pass holds them: each matrix on magpie's kernels
//! or candle's, the layers' tensors, the loader that reads them from a GGUF
//! file, and the fused decoder built over the same bytes.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use super::decode::{DecodeLayer, Decoder, Mat};
use super::gguf::ModelFile;
use super::lora::{ActiveLoras, TargetShapes};
use super::quant::{QMatrix, QType};
use super::LlmError;

type CResult<T> = candle_core::Result<T>;

pub(super) fn cerr(e: candle_core::Error) -> LlmError {
    LlmError::Runtime(e.to_string())
}

/// magpie's own kernels run this model: on the CPU, unless
/// `MAGPIE_LLM_KERNELS=candle` asks for candle's throughout, as on a GPU (the
/// GPU's code path, run on the CPU to check it where there is no GPU).
pub(super) fn own_kernels(device: &Device) -> bool {
    device.is_cpu() && std::env::var("MAGPIE_LLM_KERNELS").as_deref() != Ok("candle")
}

/// `m` with its rows packed by eight where this CPU's kernels read packed
/// rows (AVX2 or AVX-512 VNNI: Q4_0, Q5_0, Q8_0, Q4_K and Q6_K; prompt tiles
/// ~3.4× faster on the 32-value types with VNNI, `cargo run -p magpie-candle
/// --example tilebench`); `MAGPIE_LLM_PACK=0` keeps the file's layout, to compare.
fn for_kernels(m: QMatrix) -> QMatrix {
    if !packs() {
        return m;
    }
    m.packed().unwrap_or(m)
}

/// Whether matrices are packed ([`for_kernels`]): wherever the vector
/// kernels run (AVX-512 VNNI or AVX2); not on the plain-Rust path.
fn packs() -> bool {
    super::quant::Kernels::detect() != super::quant::Kernels::Portable
        && std::env::var("MAGPIE_LLM_PACK").as_deref() != Ok("0")
}

/// A weight matrix: on the CPU magpie's kernels read the file's bytes;
/// candle's QMatMul otherwise.
#[derive(Clone)]
pub(super) enum Weight {
    Q(QMatMul),
    /// magpie's kernels; for prompts of a K type, candle's tiled kernels
    /// over the same bytes (they measured faster there).
    Own(Arc<QMatrix>, Option<QMatMul>),
}

impl Weight {
    /// `t` on magpie's kernels where `own` and they read its type, else on candle's.
    pub(super) fn new(t: QTensor, own: bool) -> Result<Self, LlmError> {
        let t = Arc::new(t);
        if !own {
            return QMatMul::from_arc(t).map(Weight::Q).map_err(cerr);
        }
        match QMatrix::from_qtensor(t.clone()) {
            Ok(m) => {
                let m = for_kernels(m);
                let tiled = if m.qtype().is_k() && !m.is_packed() {
                    Some(QMatMul::from_arc(t).map_err(cerr)?)
                } else {
                    None
                };
                Ok(Weight::Own(Arc::new(m), tiled))
            }
            Err(t) => QMatMul::from_arc(t).map(Weight::Q).map_err(cerr),
        }
    }

    pub(super) fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        match self {
            Weight::Q(m) => m.forward(x),
            Weight::Own(m, Some(tiled)) if x.elem_count() > m.cols() => tiled.forward(x),
            Weight::Own(m, _) => m.forward(x),
        }
    }
}

/// The token embedding table (quantized, looked up row by row).
pub(super) enum Embedding {
    Q(Arc<QTensor>),
    Own(Arc<QMatrix>),
}

impl Embedding {
    /// Rows `ids` as f32: `[ids.len(), width]`.
    pub(super) fn lookup(&self, ids: &[u32], device: &Device) -> CResult<Tensor> {
        match self {
            Embedding::Q(q) => q.embedding(&Tensor::new(ids, device)?),
            Embedding::Own(m) => {
                let mut out = vec![0f32; ids.len() * m.cols()];
                for (&id, row) in ids.iter().zip(out.chunks_exact_mut(m.cols())) {
                    if id as usize >= m.rows() {
                        candle_core::bail!("token id {id} is outside the embedding table");
                    }
                    m.dequantize(id as usize, row);
                }
                Tensor::from_vec(out, (ids.len(), m.cols()), device)
            }
        }
    }
}

pub(super) struct Linear {
    pub(super) w: Weight,
    pub(super) b: Option<Tensor>,
    /// The file's tensor this matrix is (LoRA adapters name it).
    pub(super) name: String,
    /// The rows of that tensor it holds, when it is a slice of a fused one
    /// (q, k, v of `attn_qkv`; gate and up of a doubled `ffn_up`).
    pub(super) rows: Option<(usize, usize)>,
}

impl Linear {
    /// The matrix as magpie's kernels read it, for the fused decode step.
    fn mat(&self) -> CResult<Option<Mat>> {
        let m = match &self.w {
            Weight::Own(m, _) => m.clone(),
            Weight::Q(_) => return Ok(None),
        };
        let bias = match &self.b {
            Some(b) => Some(b.to_dtype(DType::F32)?.to_vec1::<f32>()?),
            None => None,
        };
        Ok(Some(Mat { m, bias }))
    }

    pub(super) fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let y = self.w.forward(x)?;
        match &self.b {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// The product with the adapters of a call added (`W·x + b + Σ s·B·A·x`).
    pub(super) fn forward_lora(&self, x: &Tensor, loras: &ActiveLoras) -> CResult<Tensor> {
        let y = self.forward(x)?;
        if loras.is_empty() {
            return Ok(y);
        }
        super::lora::apply(y, x, &self.name, self.rows, loras)
    }
}

pub(super) struct Layer {
    pub(super) attn_norm: Tensor,
    pub(super) q: Linear,
    pub(super) k: Linear,
    pub(super) v: Linear,
    pub(super) o: Linear,
    pub(super) q_norm: Option<Tensor>,
    pub(super) k_norm: Option<Tensor>,
    pub(super) post_attn_norm: Option<Tensor>,
    pub(super) ffn_norm: Tensor,
    pub(super) gate: Linear,
    pub(super) up: Linear,
    pub(super) down: Linear,
    pub(super) post_ffn_norm: Option<Tensor>,
    pub(super) local: bool,
}

pub(super) fn vec_of(t: &Tensor) -> CResult<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

pub(super) fn opt_vec(t: &Option<Tensor>) -> CResult<Option<Vec<f32>>> {
    t.as_ref().map(vec_of).transpose()
}

/// The fused decoder for these weights, when every matrix is one magpie's
/// kernels read and the model runs on the CPU.
pub(super) fn build_decoder(
    layers: &[Layer],
    out_norm: &Tensor,
    output: &Weight,
    embed: &Embedding,
    embed_scale: Option<f64>,
    own: bool,
) -> CResult<Option<Decoder>> {
    if !own {
        return Ok(None);
    }
    let mut dl = Vec::with_capacity(layers.len());
    for l in layers {
        let (Some(q), Some(k), Some(v), Some(o), Some(gate), Some(up), Some(down)) = (
            l.q.mat()?,
            l.k.mat()?,
            l.v.mat()?,
            l.o.mat()?,
            l.gate.mat()?,
            l.up.mat()?,
            l.down.mat()?,
        ) else {
            return Ok(None);
        };
        dl.push(DecodeLayer {
            attn_norm: vec_of(&l.attn_norm)?,
            q,
            k,
            v,
            o,
            q_norm: opt_vec(&l.q_norm)?,
            k_norm: opt_vec(&l.k_norm)?,
            post_attn_norm: opt_vec(&l.post_attn_norm)?,
            ffn_norm: vec_of(&l.ffn_norm)?,
            gate,
            up,
            down,
            post_ffn_norm: opt_vec(&l.post_ffn_norm)?,
            local: l.local,
        });
    }
    let output = match output {
        Weight::Own(m, _) => m.clone(),
        Weight::Q(_) => return Ok(None),
    };
    let embed = match embed {
        Embedding::Own(m) => m.clone(),
        Embedding::Q(t) => match QMatrix::from_qtensor(t.clone()) {
            Ok(m) => Arc::new(m),
            Err(_) => return Ok(None),
        },
    };
    Ok(Some(Decoder {
        layers: dl,
        out_norm: vec_of(out_norm)?,
        output,
        embed,
        embed_scale: embed_scale.map(|s| s as f32),
        kernels: super::quant::Kernels::detect(),
        threads: std::sync::atomic::AtomicUsize::new(0),
        scratch: Default::default(),
    }))
}

pub(super) struct WeightLoader<'a> {
    pub(super) file: &'a ModelFile,
    /// The file mapped into memory (on the CPU): the types magpie's kernels
    /// read are used in place from it.
    pub(super) map: Option<Arc<memmap2::Mmap>>,
    pub(super) arch: &'static str,
    pub(super) reader: std::io::BufReader<std::fs::File>,
    pub(super) device: &'a Device,
    /// magpie's kernels run the model ([`own_kernels`]).
    pub(super) own: bool,
    pub(super) requantized: Vec<(String, GgmlDType, GgmlDType)>,
    /// The matrices loaded as `Linear`s, with their shapes (out, in): what a
    /// LoRA adapter may adapt.
    pub(super) targets: TargetShapes,
}

impl WeightLoader<'_> {
    pub(super) fn raw(&mut self, name: &str) -> Result<QTensor, LlmError> {
        if !self.file.content.tensor_infos.contains_key(name) {
            return Err(LlmError::BadFile(format!(
                "{}: tensor {name} is missing; the file does not match its declared architecture {}",
                self.file.path.display(),
                self.arch
            )));
        }
        self.file
            .content
            .tensor(&mut self.reader, name, self.device)
            .map_err(|e| {
                LlmError::BadFile(format!("{}: tensor {name}: {e}", self.file.path.display()))
            })
    }

    /// A quantized tensor, as the file stores it: magpie's CPU kernels and
    /// candle's CUDA kernels read every GGUF type (`MAGPIE_LLM_WIDEN=1` turns
    /// Q5_0, Q5_1 and Q4_1 into Q8_0 at load as magpie once did, to compare;
    /// on a GPU that would read 1.5× the bytes per token and lose precision).
    pub(super) fn quantized(&mut self, name: &str) -> Result<QTensor, LlmError> {
        let t = self.raw(name)?;
        self.widened(name, t)
    }

    /// `t` (tensor `name`, or rows of it) as [`Self::quantized`] keeps it.
    fn widened(&mut self, name: &str, t: QTensor) -> Result<QTensor, LlmError> {
        if std::env::var("MAGPIE_LLM_WIDEN").as_deref() != Ok("1") {
            return Ok(t);
        }
        match t.dtype() {
            d @ (GgmlDType::Q5_0 | GgmlDType::Q5_1 | GgmlDType::Q4_1) => {
                let f = t.dequantize(self.device).map_err(cerr)?;
                self.requantized
                    .push((name.to_string(), d, GgmlDType::Q8_0));
                QTensor::quantize(&f, GgmlDType::Q8_0).map_err(cerr)
            }
            _ => Ok(t),
        }
    }

    /// The file mapped, where the model runs on the CPU (`None` elsewhere,
    /// or where mapping fails: the tensors are read then).
    pub(super) fn map_file(file: &ModelFile, own: bool) -> Option<Arc<memmap2::Mmap>> {
        if !own {
            return None;
        }
        let f = std::fs::File::open(&file.path).ok()?;
        // SAFETY: the mapping is read-only. As with llama.cpp's mmap, a file
        // changed on disk while loaded is the user's to avoid; its size was
        // checked against every tensor when it was opened.
        match unsafe { memmap2::Mmap::map(&f) } {
            Ok(m) => Some(Arc::new(m)),
            Err(e) => {
                tracing::debug!("{}: not mapped ({e}); reading it", file.path.display());
                None
            }
        }
    }

    /// A matrix of a 32-value type straight from the mapped file: no copy
    /// and no widening. K types go through candle (its tiled kernels run
    /// their prompts) and are `None` here.
    fn mapped(&self, name: &str) -> Result<Option<QMatrix>, LlmError> {
        self.mapped_rows(name, None)
    }

    /// [`Self::mapped`], of rows `r0..r0+n` only when `rows` is given.
    fn mapped_rows(
        &self,
        name: &str,
        rows: Option<(usize, usize)>,
    ) -> Result<Option<QMatrix>, LlmError> {
        let Some(map) = &self.map else {
            return Ok(None);
        };
        let Some(info) = self.file.content.tensor_infos.get(name) else {
            return Ok(None);
        };
        let Some(ty) = QType::from_ggml(info.ggml_dtype) else {
            return Ok(None);
        };
        let widen = std::env::var("MAGPIE_LLM_WIDEN").as_deref() == Ok("1")
            && matches!(ty, QType::Q5_0 | QType::Q5_1 | QType::Q4_1);
        let Ok((all, cols)) = info.shape.dims2() else {
            return Ok(None);
        };
        // K types in the file's layout run their prompts on candle's tiled
        // kernels, which read them from a tensor; packed, they are magpie's
        if (ty.is_k() && !packs()) || widen {
            return Ok(None);
        }
        let (r0, n) = rows.unwrap_or((0, all));
        let row_bytes = cols / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
        let offset =
            self.file.content.tensor_data_offset as usize + info.offset as usize + r0 * row_bytes;
        QMatrix::mapped(ty, n, cols, map.clone(), offset)
            .map(Some)
            .map_err(|e| {
                LlmError::BadFile(format!("{}: tensor {name}: {e}", self.file.path.display()))
            })
    }

    pub(super) fn matmul(&mut self, name: &str) -> Result<Weight, LlmError> {
        if let Some(m) = self.mapped(name)? {
            return Ok(Weight::Own(Arc::new(for_kernels(m)), None));
        }
        let t = self.quantized(name)?;
        Weight::new(t, self.own)
    }

    /// The token embedding table: mapped, or read.
    pub(super) fn embedding(&mut self, name: &str) -> Result<Embedding, LlmError> {
        if let Some(m) = self.mapped(name)? {
            return Ok(Embedding::Own(Arc::new(m)));
        }
        let t = Arc::new(self.quantized(name)?);
        if self.own {
            if let Ok(m) = QMatrix::from_qtensor(t.clone()) {
                return Ok(Embedding::Own(Arc::new(m)));
            }
        }
        Ok(Embedding::Q(t))
    }

    pub(super) fn vector(&mut self, name: &str) -> Result<Tensor, LlmError> {
        self.raw(name)?.dequantize(self.device).map_err(cerr)
    }

    /// `<prefix>.weight`, with `<prefix>.bias` when the file has one (qwen2).
    pub(super) fn linear(&mut self, prefix: &str) -> Result<Linear, LlmError> {
        let name = format!("{prefix}.weight");
        let w = self.matmul(&name)?;
        self.target(&name)?;
        Ok(Linear {
            w,
            b: self.optional(&format!("{prefix}.bias"))?,
            name,
            rows: None,
        })
    }

    fn target(&mut self, name: &str) -> Result<(usize, usize), LlmError> {
        let shape = self
            .file
            .content
            .tensor_infos
            .get(name)
            .and_then(|i| i.shape.dims2().ok())
            .ok_or_else(|| {
                LlmError::BadFile(format!(
                    "{}: tensor {name} is not a matrix",
                    self.file.path.display()
                ))
            })?;
        self.targets.insert(name.to_string(), shape);
        Ok(shape)
    }

    /// `<prefix>.weight` (and its bias) cut by rows into parts of `sizes`
    /// rows: the fused q/k/v and gate/up matrices of the GLM family, held as
    /// separate matrices over the file's bytes.
    pub(super) fn split_linear(
        &mut self,
        prefix: &str,
        sizes: &[usize],
    ) -> Result<Vec<Linear>, LlmError> {
        let name = format!("{prefix}.weight");
        let (rows, _) = self.target(&name)?;
        if sizes.iter().sum::<usize>() != rows {
            return Err(LlmError::BadFile(format!(
                "{}: {name} has {rows} rows, but the header asks for {} ({})",
                self.file.path.display(),
                sizes.iter().sum::<usize>(),
                sizes
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(" + ")
            )));
        }
        let bias = self.optional(&format!("{prefix}.bias"))?;
        let mut out = Vec::with_capacity(sizes.len());
        let mut r0 = 0;
        for &n in sizes {
            let b = match &bias {
                Some(b) => Some(
                    b.narrow(0, r0, n)
                        .map_err(cerr)?
                        .contiguous()
                        .map_err(cerr)?,
                ),
                None => None,
            };
            out.push(Linear {
                w: self.matmul_rows(&name, r0, n)?,
                b,
                name: name.clone(),
                rows: Some((r0, n)),
            });
            r0 += n;
        }
        Ok(out)
    }

    /// Rows `r0..r0+n` of a matrix as its own matrix: mapped, or read and
    /// kept as [`Self::matmul`] keeps a whole one.
    fn matmul_rows(&mut self, name: &str, r0: usize, n: usize) -> Result<Weight, LlmError> {
        if let Some(m) = self.mapped_rows(name, Some((r0, n)))? {
            return Ok(Weight::Own(Arc::new(for_kernels(m)), None));
        }
        let info = &self.file.content.tensor_infos[name];
        let (_, cols) = info.shape.dims2().map_err(cerr)?;
        let dt = info.ggml_dtype;
        let row_bytes = cols / dt.block_size() * dt.type_size();
        let start = self.file.content.tensor_data_offset + info.offset + (r0 * row_bytes) as u64;
        use std::io::{Read, Seek, SeekFrom};
        let mut bytes = vec![0u8; n * row_bytes];
        self.reader
            .seek(SeekFrom::Start(start))
            .and_then(|_| self.reader.read_exact(&mut bytes))
            .map_err(|e| {
                LlmError::BadFile(format!("{}: tensor {name}: {e}", self.file.path.display()))
            })?;
        let t = candle_core::quantized::ggml_file::qtensor_from_ggml(
            dt,
            &bytes,
            vec![n, cols],
            self.device,
        )
        .map_err(cerr)?;
        let t = self.widened(name, t)?;
        Weight::new(t, self.own)
    }

    pub(super) fn optional(&mut self, name: &str) -> Result<Option<Tensor>, LlmError> {
        if self.file.content.tensor_infos.contains_key(name) {
            self.vector(name).map(Some)
        } else {
            Ok(None)
        }
    }
}
