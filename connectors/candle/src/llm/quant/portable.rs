//! Plain-Rust dot products: integer sums per block, scaled in f32.

use super::formats::{f16_at, q45k_codes, q6k_values, scale_min_k4, QType};
use super::{Act256, Act32, Acts};

/// `w · x` for one weight row.
pub fn dot(ty: QType, w: &[u8], x: &Acts<'_>) -> f32 {
    match (ty, x) {
        (QType::Q4_K | QType::Q5_K | QType::Q6_K, Acts::B256(a)) => dot256(ty, w, a),
        (_, Acts::B32(a)) if !ty.is_k() => dot32(ty, w, a),
        _ => panic!("activations quantized for another block size than {ty:?}"),
    }
}

fn dot32(ty: QType, w: &[u8], a: &[Act32]) -> f32 {
    let bs = ty.block_bytes();
    let mut sum = 0f32;
    for (b, x) in w.chunks_exact(bs).zip(a) {
        let mut q = [0i32; 32];
        // codes as stored (minus the offset for the symmetric types)
        let (d, m) = match ty {
            QType::Q4_0 | QType::Q4_1 => {
                let off = if ty == QType::Q4_0 { 8 } else { 0 };
                let qs = &b[if ty == QType::Q4_0 { 2 } else { 4 }..];
                for i in 0..16 {
                    q[i] = (qs[i] & 0xf) as i32 - off;
                    q[i + 16] = (qs[i] >> 4) as i32 - off;
                }
                (
                    f16_at(b, 0),
                    if ty == QType::Q4_1 { f16_at(b, 2) } else { 0.0 },
                )
            }
            QType::Q5_0 | QType::Q5_1 => {
                let h = if ty == QType::Q5_0 { 2 } else { 4 };
                let qh = u32::from_le_bytes([b[h], b[h + 1], b[h + 2], b[h + 3]]);
                let qs = &b[h + 4..];
                let off = if ty == QType::Q5_0 { 16 } else { 0 };
                for i in 0..16 {
                    q[i] = ((qs[i] & 0xf) as u32 | ((qh >> i) & 1) << 4) as i32 - off;
                    q[i + 16] = ((qs[i] >> 4) as u32 | ((qh >> (i + 16)) & 1) << 4) as i32 - off;
                }
                (
                    f16_at(b, 0),
                    if ty == QType::Q5_1 { f16_at(b, 2) } else { 0.0 },
                )
            }
            QType::Q8_0 => {
                for (i, v) in q.iter_mut().enumerate() {
                    *v = b[2 + i] as i8 as i32;
                }
                (f16_at(b, 0), 0.0)
            }
            _ => unreachable!("a 32-value type"),
        };
        let isum: i32 = q.iter().zip(&x.q).map(|(w, a)| w * *a as i32).sum();
        sum += d * x.d * isum as f32 + m * x.s;
    }
    sum
}

fn dot256(ty: QType, w: &[u8], a: &[Act256]) -> f32 {
    let bs = ty.block_bytes();
    let mut sum = 0f32;
    for (b, x) in w.chunks_exact(bs).zip(a) {
        match ty {
            QType::Q4_K | QType::Q5_K => {
                let (d, dmin) = (f16_at(b, 0) * x.d, f16_at(b, 2) * x.d);
                let scales = &b[4..16];
                let (qh, qs) = if ty == QType::Q5_K {
                    (&b[16..48], &b[48..176])
                } else {
                    (&b[0..0], &b[16..144])
                };
                let (mut isum, mut msum) = (0i32, 0i32);
                for j in 0..4 {
                    let (sc0, m0) = scale_min_k4(2 * j, scales);
                    let (sc1, m1) = scale_min_k4(2 * j + 1, scales);
                    let (mut s0, mut s1) = (0i32, 0i32);
                    for l in 0..32 {
                        let (lo, hi) = q45k_codes(qs, qh, j, l);
                        s0 += lo as i32 * x.q[64 * j + l] as i32;
                        s1 += hi as i32 * x.q[64 * j + 32 + l] as i32;
                    }
                    isum += s0 * sc0 as i32 + s1 * sc1 as i32;
                    let bs0 = x.bsums[4 * j] as i32 + x.bsums[4 * j + 1] as i32;
                    let bs1 = x.bsums[4 * j + 2] as i32 + x.bsums[4 * j + 3] as i32;
                    msum += bs0 * m0 as i32 + bs1 * m1 as i32;
                }
                sum += d * isum as f32 - dmin * msum as f32;
            }
            QType::Q6_K => {
                let (sc, d) = (&b[192..208], f16_at(b, 208) * x.d);
                let mut g = [0i32; 16];
                q6k_values(b, |idx, q| g[idx / 16] += q * x.q[idx] as i32);
                let isum: i32 = g.iter().zip(sc).map(|(g, s)| g * *s as i8 as i32).sum();
                sum += d * isum as f32;
            }
            _ => unreachable!("a K type"),
        }
    }
    sum
}
