//! What the KV cache holds keys and values in, and the moves between that
//! and the f32 the forward pass computes in.
//!
//! - f16 (the default, as llama.cpp): half the memory of f32. llama.cpp
//!   multiplies an f16 cache f16 by f16, so the queries are rounded to f16
//!   before their dot products with the keys and the attention weights before
//!   their sum over the values; magpie rounds them the same way.
//! - f32: full precision.
//! - q8_0 (on the CPU): 34 bytes per 32 values (an f16 scale and 32 signed
//!   codes, GGUF's Q8_0 block), 0.53 of f16. llama.cpp multiplies a q8_0 key
//!   cache by queries quantized to q8_0; magpie rounds the queries the same
//!   way (each block of 32 to its Q8_0 values) and reads keys and values
//!   widened to f32, which is exact.

use candle_core::{DType, Tensor};

use super::LlmError;

type CResult<T> = candle_core::Result<T>;

/// Bytes of one Q8_0 block of 32 values.
const Q8_BLOCK: usize = 34;

/// What a KV cache holds its keys and values in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvCacheType {
    /// Half precision, as llama.cpp keeps it by default: half the memory and
    /// half the bytes a long context's attention reads.
    #[default]
    F16,
    /// Full precision.
    F32,
    /// GGUF's Q8_0 blocks (CPU only; the head size a multiple of 32): about a
    /// quarter of f32.
    Q8_0,
}

impl KvCacheType {
    /// `f16`, `f32` or `q8_0`.
    pub fn parse(s: &str) -> Result<Self, LlmError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f16" => Ok(Self::F16),
            "f32" => Ok(Self::F32),
            "q8_0" | "q8" => Ok(Self::Q8_0),
            other => Err(LlmError::InvalidInput(format!(
                "KV cache type {other:?}: use f16 (the default), f32 or q8_0"
            ))),
        }
    }

    /// The cache tensors' element type.
    pub fn dtype(self) -> DType {
        match self {
            Self::F16 => DType::F16,
            Self::F32 => DType::F32,
            Self::Q8_0 => DType::U8,
        }
    }

    /// The type a cache tensor of `dtype` holds.
    pub fn of(dtype: DType) -> Self {
        match dtype {
            DType::F32 => Self::F32,
            DType::U8 => Self::Q8_0,
            _ => Self::F16,
        }
    }

    /// Elements of one cached row of `hd` values (one head at one position).
    pub fn row_len(self, hd: usize) -> usize {
        match self {
            Self::Q8_0 => hd / 32 * Q8_BLOCK,
            _ => hd,
        }
    }

    /// Bytes of one cached row of `hd` values.
    pub fn row_bytes(self, hd: usize) -> usize {
        self.row_len(hd) * self.dtype().size_in_bytes()
    }

    /// Whether a model with heads of `hd` values can keep this cache on a
    /// CPU (`cpu`) or elsewhere: an error that says what to use instead.
    pub fn check(self, hd: usize, cpu: bool) -> Result<(), LlmError> {
        if self != Self::Q8_0 {
            return Ok(());
        }
        if !cpu {
            return Err(LlmError::InvalidInput(
                "the q8_0 KV cache runs on the CPU only: use f16 on a GPU".into(),
            ));
        }
        if !hd.is_multiple_of(32) {
            return Err(LlmError::InvalidInput(format!(
                "the q8_0 KV cache needs heads of a multiple of 32 values; this model's have {hd}: use f16"
            )));
        }
        Ok(())
    }

    /// The queries as this cache multiplies them (module docs).
    pub(super) fn round_queries(self, q: &mut [f32]) {
        match self {
            Self::F16 => q.iter_mut().for_each(|v| *v = as_f16(*v)),
            Self::Q8_0 => round_to_q8(q),
            Self::F32 => {}
        }
    }

    /// An attention weight as this cache multiplies it (module docs).
    #[inline(always)]
    pub(super) fn round_weight(self, w: f32) -> f32 {
        if self == Self::F16 {
            as_f16(w)
        } else {
            w
        }
    }
}

impl std::str::FromStr for KvCacheType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s).map_err(|e| e.to_string())
    }
}

impl std::fmt::Display for KvCacheType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F16 => "f16",
            Self::F32 => "f32",
            Self::Q8_0 => "q8_0",
        })
    }
}

/// `x` rounded to the nearest f16.
#[inline(always)]
pub(super) fn as_f16(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

/// `x` (a multiple of 32 long) as Q8_0 blocks into `out` (34 bytes each),
/// as GGUF's Q8_0 quantizes: scale amax / 127 kept in f16, codes rounded.
pub(super) fn quantize_q8(x: &[f32], out: &mut [u8]) {
    for (b, o) in x.chunks_exact(32).zip(out.chunks_exact_mut(Q8_BLOCK)) {
        let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        o[..2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
        for (c, v) in o[2..].iter_mut().zip(b) {
            *c = ((v * id).round() as i8) as u8;
        }
    }
}

/// Q8_0 blocks back to f32 (each value its scale × its code: exact).
pub(super) fn dequantize_q8(b: &[u8], out: &mut Vec<f32>) {
    out.clear();
    for blk in b.chunks_exact(Q8_BLOCK) {
        let d = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
        out.extend(blk[2..].iter().map(|&c| d * c as i8 as f32));
    }
}

/// Each block of 32 of `v` replaced by its Q8_0 values.
fn round_to_q8(v: &mut [f32]) {
    let mut blk = [0u8; Q8_BLOCK];
    let mut back = Vec::with_capacity(32);
    for c in v.chunks_exact_mut(32) {
        quantize_q8(c, &mut blk);
        dequantize_q8(&blk, &mut back);
        c.copy_from_slice(&back);
    }
}

/// An f32 tensor `[.., hd]` as a cache of `kind` holds it.
pub(super) fn store(t: &Tensor, kind: KvCacheType) -> CResult<Tensor> {
    if kind != KvCacheType::Q8_0 {
        return t.to_dtype(kind.dtype());
    }
    let dims = t.dims().to_vec();
    let hd = *dims.last().unwrap_or(&0);
    let x = t.flatten_all()?.to_vec1::<f32>()?;
    let rb = kind.row_len(hd);
    let mut out = vec![0u8; x.len() / hd.max(1) * rb];
    for (row, o) in x.chunks_exact(hd).zip(out.chunks_exact_mut(rb)) {
        quantize_q8(row, o);
    }
    let mut shape = dims;
    if let Some(l) = shape.last_mut() {
        *l = rb;
    }
    Tensor::from_vec(out, shape, t.device())
}

/// Cache rows of `kind` (`[.., row_len(hd)]`) as an f32 tensor `[.., hd]`.
pub(super) fn load(t: &Tensor, kind: KvCacheType, hd: usize) -> CResult<Tensor> {
    if kind != KvCacheType::Q8_0 {
        return t.to_dtype(DType::F32);
    }
    let dims = t.dims().to_vec();
    let b = t.flatten_all()?.to_vec1::<u8>()?;
    let mut out = Vec::new();
    dequantize_q8(&b, &mut out);
    let mut shape = dims;
    if let Some(l) = shape.last_mut() {
        *l = hd;
    }
    Tensor::from_vec(out, shape, t.device())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_rows_round_trip_within_half_a_step() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 29) as f32 - 14.0) / 3.0)
            .collect();
        let mut b = vec![0u8; 68];
        quantize_q8(&x, &mut b);
        let mut back = Vec::new();
        dequantize_q8(&b, &mut back);
        for (blk, got) in x.chunks(32).zip(back.chunks(32)) {
            let step = blk.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            for (a, g) in blk.iter().zip(got) {
                assert!((a - g).abs() <= step * 0.51 + 1e-6, "{a} {g}");
            }
        }
        // rounding twice changes nothing
        let mut again = back.clone();
        round_to_q8(&mut again);
        assert_eq!(again, back);
        let t = Tensor::from_vec(x.clone(), (2, 32), &candle_core::Device::Cpu).unwrap();
        let s = store(&t, KvCacheType::Q8_0).unwrap();
        assert_eq!(s.dims(), &[2, 34]);
        let l = load(&s, KvCacheType::Q8_0, 32)
            .unwrap()
            .flatten_all()
            .unwrap();
        assert_eq!(l.to_vec1::<f32>().unwrap(), back);
    }

    #[test]
    fn cache_types_parse_and_say_what_to_use() {
        assert_eq!(KvCacheType::parse("Q8_0").unwrap(), KvCacheType::Q8_0);
        assert_eq!("f32".parse::<KvCacheType>().unwrap(), KvCacheType::F32);
        let e = KvCacheType::parse("q4").unwrap_err().to_string();
        assert!(e.contains("f16") && e.contains("q8_0"), "{e}");
        assert!(KvCacheType::Q8_0.check(64, false).is_err());
        assert!(KvCacheType::Q8_0.check(80, true).is_err());
        assert!(KvCacheType::Q8_0.check(256, true).is_ok());
        assert_eq!(KvCacheType::Q8_0.row_bytes(256), 272);
        assert_eq!(KvCacheType::F16.row_bytes(256), 512);
    }
}
