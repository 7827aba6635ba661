//! The block layouts of GGUF's quantized types, and a plain dequantizer for
//! each (the reference the kernels are tested against).

use candle_core::quantized::GgmlDType;
use half::f16;

/// A quantized type magpie multiplies in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum QType {
    /// 32 values: f16 scale, 4-bit codes − 8.
    Q4_0,
    /// 32 values: f16 scale and minimum, 4-bit codes.
    Q4_1,
    /// 32 values: f16 scale, 5-bit codes − 16 (high bits in a u32).
    Q5_0,
    /// 32 values: f16 scale and minimum, 5-bit codes.
    Q5_1,
    /// 32 values: f16 scale, 8-bit codes.
    Q8_0,
    /// 256 values: 8 sub-blocks with 6-bit scales and minimums, 4-bit codes.
    Q4_K,
    /// 256 values: as Q4_K with a fifth bit.
    Q5_K,
    /// 256 values: 16 sub-blocks with 8-bit scales, 6-bit codes − 32.
    Q6_K,
}

impl QType {
    /// The type of a GGML tensor, when magpie has kernels for it.
    pub fn from_ggml(t: GgmlDType) -> Option<Self> {
        Some(match t {
            GgmlDType::Q4_0 => Self::Q4_0,
            GgmlDType::Q4_1 => Self::Q4_1,
            GgmlDType::Q5_0 => Self::Q5_0,
            GgmlDType::Q5_1 => Self::Q5_1,
            GgmlDType::Q8_0 => Self::Q8_0,
            GgmlDType::Q4K => Self::Q4_K,
            GgmlDType::Q5K => Self::Q5_K,
            GgmlDType::Q6K => Self::Q6_K,
            _ => return None,
        })
    }

    /// The GGML type.
    pub fn ggml(self) -> GgmlDType {
        match self {
            Self::Q4_0 => GgmlDType::Q4_0,
            Self::Q4_1 => GgmlDType::Q4_1,
            Self::Q5_0 => GgmlDType::Q5_0,
            Self::Q5_1 => GgmlDType::Q5_1,
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q4_K => GgmlDType::Q4K,
            Self::Q5_K => GgmlDType::Q5K,
            Self::Q6_K => GgmlDType::Q6K,
        }
    }

    /// Values per block.
    pub fn block(self) -> usize {
        if self.is_k() {
            256
        } else {
            32
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q4_K => 144,
            Self::Q5_K => 176,
            Self::Q6_K => 210,
        }
    }

    /// True for the 256-value types (their activations are `Act256`).
    pub fn is_k(self) -> bool {
        matches!(self, Self::Q4_K | Self::Q5_K | Self::Q6_K)
    }

    /// Bytes of one row of `cols` values.
    pub fn row_bytes(self, cols: usize) -> usize {
        cols / self.block() * self.block_bytes()
    }
}

pub(super) fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Scale and minimum of sub-block `j` (0..8) from a K block's 12 packed bytes.
pub(super) fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// The low and high codes of 64-value chunk `j` of a Q4_K/Q5_K block at lane
/// `l` (values 64j + l and 64j + 32 + l); `qh` is empty for Q4_K.
pub(super) fn q45k_codes(qs: &[u8], qh: &[u8], j: usize, l: usize) -> (u8, u8) {
    let byte = qs[32 * j + l];
    let (mut lo, mut hi) = (byte & 0xf, byte >> 4);
    if !qh.is_empty() {
        lo |= ((qh[l] >> (2 * j)) & 1) << 4;
        hi |= ((qh[l] >> (2 * j + 1)) & 1) << 4;
    }
    (lo, hi)
}

/// Each value of a Q6_K block (its 210 bytes) as (index 0..256, code −32..32).
pub(super) fn q6k_values(b: &[u8], mut f: impl FnMut(usize, i32)) {
    let (ql, qh) = (&b[0..128], &b[128..192]);
    for n in 0..2 {
        let (ql, qh) = (&ql[64 * n..], &qh[32 * n..]);
        for l in 0..32 {
            for (k, q) in q6k_codes(ql, qh, l).iter().enumerate() {
                f(128 * n + 32 * k + l, *q as i32 - 32);
            }
        }
    }
}

/// The four 6-bit codes (0..64, stored + 32) of a Q6_K half-block at lane
/// `l`: values l, l + 32, l + 64 and l + 96.
fn q6k_codes(ql: &[u8], qh: &[u8], l: usize) -> [u8; 4] {
    [
        (ql[l] & 0xf) | ((qh[l] & 3) << 4),
        (ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4),
        (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
        (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
    ]
}

/// The 5-bit code `i` (0..32) of a Q5_0/Q5_1 block from its nibbles and high bits.
fn q5(qs: &[u8], qh: u32, i: usize) -> u8 {
    let nib = if i < 16 { qs[i] & 0xf } else { qs[i - 16] >> 4 };
    nib | (((qh >> i) & 1) as u8) << 4
}

/// One row of `ty` (its bytes) to f32.
pub fn dequantize_row(ty: QType, w: &[u8], out: &mut [f32]) {
    let bs = ty.block_bytes();
    for (b, y) in w.chunks_exact(bs).zip(out.chunks_exact_mut(ty.block())) {
        match ty {
            QType::Q4_0 => {
                let d = f16_at(b, 0);
                for i in 0..32 {
                    let q = if i < 16 {
                        b[2 + i] & 0xf
                    } else {
                        b[2 + i - 16] >> 4
                    };
                    y[i] = (q as i32 - 8) as f32 * d;
                }
            }
            QType::Q4_1 => {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                for i in 0..32 {
                    let q = if i < 16 {
                        b[4 + i] & 0xf
                    } else {
                        b[4 + i - 16] >> 4
                    };
                    y[i] = q as f32 * d + m;
                }
            }
            QType::Q5_0 => {
                let d = f16_at(b, 0);
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                for (i, v) in y.iter_mut().enumerate() {
                    *v = (q5(&b[6..], qh, i) as i32 - 16) as f32 * d;
                }
            }
            QType::Q5_1 => {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                for (i, v) in y.iter_mut().enumerate() {
                    *v = q5(&b[8..], qh, i) as f32 * d + m;
                }
            }
            QType::Q8_0 => {
                let d = f16_at(b, 0);
                for (i, v) in y.iter_mut().enumerate() {
                    *v = b[2 + i] as i8 as f32 * d;
                }
            }
            QType::Q4_K | QType::Q5_K => {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let scales = &b[4..16];
                let (qh, qs) = if ty == QType::Q5_K {
                    (&b[16..48], &b[48..176])
                } else {
                    (&b[0..0], &b[16..144])
                };
                for j in 0..4 {
                    let (sc0, m0) = scale_min_k4(2 * j, scales);
                    let (sc1, m1) = scale_min_k4(2 * j + 1, scales);
                    for l in 0..32 {
                        let (lo, hi) = q45k_codes(qs, qh, j, l);
                        y[64 * j + l] = d * sc0 as f32 * lo as f32 - dmin * m0 as f32;
                        y[64 * j + 32 + l] = d * sc1 as f32 * hi as f32 - dmin * m1 as f32;
                    }
                }
            }
            QType::Q6_K => {
                let (sc, d) = (&b[192..208], f16_at(b, 208));
                q6k_values(b, |idx, q| {
                    y[idx] = d * sc[idx / 16] as i8 as f32 * q as f32
                });
            }
        }
    }
}
