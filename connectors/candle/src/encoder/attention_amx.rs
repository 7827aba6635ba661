//! Attention on AMX tiles in bf16, for the int8 mode on CPUs with AMX-BF16.
//!
//! Per (sequence, head), 16 queries at a time: the scores Q·Kᵀ are
//! `tdpbf16ps` products (bf16 inputs, f32 sums) into a 16 × L block, the
//! softmax runs in f32 and writes its probabilities as bf16, and P·V is a
//! second product. Keys and values are packed once per head in the layout
//! the B tiles want (pairs of consecutive k side by side for 16 columns).
//! Its error is bf16's (8 significant bits on each factor), the same order
//! as the int8 linear layers' around it; the f32 mode keeps f32 attention.

// block and lane indices address several arrays at once
#![allow(clippy::needless_range_loop)]

use std::arch::asm;
use std::arch::x86_64::*;

/// C tiles `tmm$c0`, `tmm$c1` += P (`tmm4`) · the two V tiles at `$b0`,
/// `$b1` (bf16, 64-byte rows).
macro_rules! dot_pair {
    ($c0:literal, $c1:literal, $b0:expr, $b1:expr) => {
        asm!(
            "tileloadd tmm6, [{b0} + {ld}*1]",
            concat!("tdpbf16ps tmm", $c0, ", tmm4, tmm6"),
            "tileloadd tmm7, [{b1} + {ld}*1]",
            concat!("tdpbf16ps tmm", $c1, ", tmm4, tmm7"),
            b0 = in(reg) $b0,
            b1 = in(reg) $b1,
            ld = in(reg) 64usize,
            options(nostack, readonly),
        )
    };
}

/// Store C tiles `tmm$c0`, `tmm$c1` at `$p0`, `$p1`, rows `$ld` bytes apart.
macro_rules! store_pair {
    ($c0:literal, $c1:literal, $p0:expr, $p1:expr, $ld:expr) => {
        asm!(
            concat!("tilestored [{p0} + {ld}*1], tmm", $c0),
            concat!("tilestored [{p1} + {ld}*1], tmm", $c1),
            p0 = in(reg) $p0,
            p1 = in(reg) $p1,
            ld = in(reg) $ld,
            options(nostack),
        )
    };
}

use super::attention::HeadJob;
use super::int8;
use super::math::simd512;

/// True when attention with head width `d` can run here: AMX is granted
/// (the int8 mode asked), the CPU has AMX-BF16, and `d` is 32 or 64.
pub fn usable(d: usize) -> bool {
    static BF16: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let bf16 = *BF16.get_or_init(|| {
        std::env::var("MAGPIE_ATTENTION_AMX").as_deref() != Ok("0")
            && int8::amx_ready()
            // CPUID.(7,0):EDX bit 22 AMX-BF16
            && std::arch::x86_64::__cpuid_count(7, 0).edx & (1 << 22) != 0
    });
    bf16 && (d == 32 || d == 64)
}

/// Per-thread buffers, grown as needed.
#[derive(Default)]
pub struct Scratch {
    q: Vec<u16>,
    k: Vec<u16>,
    v: Vec<u16>,
    s: Vec<f32>,
    p: Vec<u16>,
    o: Vec<f32>,
}

fn sized<T: Copy + Default>(v: &mut Vec<T>, len: usize) -> &mut [T] {
    if v.len() < len {
        v.resize(len, T::default());
    }
    &mut v[..len]
}

/// One (sequence, head) of [`super::attention::attend`] in bf16 on AMX tiles.
///
/// # Safety
/// [`usable`]`(d)` is true, and no other thread writes `job`'s rows
/// `t0..t0+len` of `out` at columns `col..col+d`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn head(job: HeadJob<'_>, sc: &mut Scratch) {
    let (qkv, out, t0, len, hidden) = (job.qkv, job.out, job.t0, job.len, job.hidden);
    let (col, d) = (job.col, job.d);
    let row = 3 * hidden;
    let steps = d / 32; // k-steps of 32 over the head width
    let blocks = len.div_ceil(16); // 16 queries, or 16 keys
    let lp = len.div_ceil(32) * 32; // keys padded to P·V's k-steps
    let ksteps = lp / 32;
    let cblocks = d / 16; // output tiles of 16 columns

    // Q: rows of d bf16, padded with zero rows to a whole block.
    let q = sized(&mut sc.q, blocks * 16 * d);
    for t in 0..len {
        let x = qkv.as_ptr().add((t0 + t) * row + col);
        for c in (0..d).step_by(16) {
            let b = simd512::to_bf16(_mm512_loadu_ps(x.add(c)));
            _mm256_storeu_si256(q.as_mut_ptr().add(t * d + c) as *mut __m256i, b);
        }
    }
    q[len * d..].fill(0);
    // K: block j of 16 keys, k-step s: 16 rows (pairs of dims) × 16 keys ×
    // 2, i.e. in 32-bit pairs, key n's pair r at row r, lane n: a key's
    // row of pairs is scattered down a column.
    let kblocks = lp / 16;
    let k = sized(&mut sc.k, kblocks * steps * 512);
    k[len / 16 * steps * 512..].fill(0);
    let down = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(16),
    );
    for t in 0..len {
        let x = qkv.as_ptr().add((t0 + t) * row + hidden + col);
        let (j, n) = (t / 16, t % 16);
        for s in 0..steps {
            let lo = simd512::bf16_lanes(_mm512_loadu_ps(x.add(s * 32)));
            let hi = simd512::bf16_lanes(_mm512_loadu_ps(x.add(s * 32 + 16)));
            // pairs (2r, 2r+1) as 32-bit lanes: dims 0..16 then 16..32
            let pairs = _mm512_cvtepi32_epi16(lo);
            let pairs2 = _mm512_cvtepi32_epi16(hi);
            let all = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(pairs), pairs2);
            let base = k.as_mut_ptr().add((j * steps + s) * 512 + n * 2) as *mut i32;
            _mm512_i32scatter_epi32::<4>(base as *mut _, down, all);
        }
    }
    // V: column block cb of 16, k-step kt of 32 keys: 16 rows (pairs of
    // keys) × 16 columns × 2: two key rows interleaved per 64-byte row.
    let v = sized(&mut sc.v, cblocks * ksteps * 512);
    let vrow = |t: usize, c: usize| {
        if t < len {
            simd512::bf16_lanes(_mm512_loadu_ps(
                qkv.as_ptr().add((t0 + t) * row + 2 * hidden + col + c),
            ))
        } else {
            _mm512_setzero_si512()
        }
    };
    for kt in 0..ksteps {
        for r in 0..16 {
            let t = kt * 32 + 2 * r;
            for cb in 0..cblocks {
                let pair = _mm512_or_si512(
                    vrow(t, cb * 16),
                    _mm512_slli_epi32::<16>(vrow(t + 1, cb * 16)),
                );
                let dst = v.as_mut_ptr().add(((cb * ksteps + kt) * 16 + r) * 32);
                _mm512_storeu_si512(dst as *mut _, pair);
            }
        }
    }
    let s = sized(&mut sc.s, 16 * lp);
    let p = sized(&mut sc.p, 16 * lp);
    let o = sized(&mut sc.o, 16 * d);
    let (qp, kp, vp, sp, pp, op) = (
        q.as_ptr(),
        k.as_ptr(),
        v.as_ptr(),
        s.as_mut_ptr(),
        p.as_mut_ptr(),
        o.as_mut_ptr(),
    );
    let mut inv_sum = [0f32; 16];
    int8::amx_begin();
    for qb in 0..blocks {
        let rows = 16.min(len - qb * 16);
        // scores: Q block in tmm4 (and tmm5 for d = 64), one key block at a time in tmm0
        asm!("tileloadd tmm4, [{a} + {ld}*1]", a = in(reg) qp.add(qb * 16 * d), ld = in(reg) d * 2, options(nostack, readonly));
        if steps == 2 {
            asm!("tileloadd tmm5, [{a} + {ld}*1]", a = in(reg) qp.add(qb * 16 * d + 32), ld = in(reg) d * 2, options(nostack, readonly));
        }
        // two key blocks at a time (tmm0, tmm1), so one product runs while
        // the other is stored
        for j in (0..kblocks).step_by(2) {
            let b = kp.add(j * steps * 512);
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tileloadd tmm6, [{b0} + {ld}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{b1} + {ld}*1]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                b0 = in(reg) b,
                b1 = in(reg) b.add(steps * 512),
                ld = in(reg) 64usize,
                options(nostack, readonly),
            );
            if steps == 2 {
                asm!(
                    "tileloadd tmm6, [{b0} + {ld}*1]",
                    "tdpbf16ps tmm0, tmm5, tmm6",
                    "tileloadd tmm7, [{b1} + {ld}*1]",
                    "tdpbf16ps tmm1, tmm5, tmm7",
                    b0 = in(reg) b.add(512),
                    b1 = in(reg) b.add(3 * 512),
                    ld = in(reg) 64usize,
                    options(nostack, readonly),
                );
            }
            asm!(
                "tilestored [{c0} + {ld}*1], tmm0",
                "tilestored [{c1} + {ld}*1], tmm1",
                c0 = in(reg) sp.add(j * 16),
                c1 = in(reg) sp.add(j * 16 + 16),
                ld = in(reg) lp * 4,
                options(nostack),
            );
        }
        // softmax of each real row into bf16 probabilities, zero past the keys
        for r in 0..16 {
            let pr = std::slice::from_raw_parts_mut(pp.add(r * lp), lp);
            if r < rows {
                let sr = std::slice::from_raw_parts(sp.add(r * lp), len);
                let max = simd512::max(sr);
                inv_sum[r] = 1.0 / simd512::exp_to_bf16(sr, max, pr);
                pr[len..].fill(0);
            } else {
                pr.fill(0);
            }
        }
        // P·V: output column blocks in tmm0..tmm3, P in tmm4, V in tmm6
        asm!("tilezero tmm0", "tilezero tmm1", options(nostack, nomem));
        if cblocks == 4 {
            asm!("tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
        }
        for kt in 0..ksteps {
            asm!("tileloadd tmm4, [{a} + {ld}*1]", a = in(reg) pp.add(kt * 32), ld = in(reg) lp * 2, options(nostack, readonly));
            let b = |cb: usize| vp.add((cb * ksteps + kt) * 512);
            dot_pair!("0", "1", b(0), b(1));
            if cblocks == 4 {
                dot_pair!("2", "3", b(2), b(3));
            }
        }
        store_pair!("0", "1", op, op.add(16), d * 4);
        if cblocks == 4 {
            store_pair!("2", "3", op.add(32), op.add(48), d * 4);
        }
        for r in 0..rows {
            let dst = out.add((t0 + qb * 16 + r) * hidden + col);
            let inv = _mm512_set1_ps(inv_sum[r]);
            for c in (0..d).step_by(16) {
                let x = _mm512_loadu_ps(op.add(r * d + c));
                _mm512_storeu_ps(dst.add(c), _mm512_mul_ps(x, inv));
            }
        }
    }
    int8::amx_end();
}

#[cfg(test)]
mod tests {
    use super::super::attention::attend;
    use super::super::gemm::Isa;
    use super::*;

    /// Against f32 attention on random inputs: ragged sequence lengths
    /// (1, 15, 16, 17, 33, 200), head widths 32 and 64. The error is bf16's.
    #[test]
    fn bf16_attention_matches_f32() {
        let mut seed = 7u64;
        let mut rnd = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        };
        for d in [32, 64] {
            if !usable(d) {
                eprintln!("SKIPPED: no AMX-BF16 on this CPU; the f32 attention is used");
                return;
            }
            let heads = 3;
            let hidden = heads * d;
            let lens = [1usize, 15, 16, 17, 33, 200];
            let mut starts = vec![0];
            for l in lens {
                starts.push(starts.last().unwrap() + l);
            }
            let total = *starts.last().unwrap();
            // values in [-2, 2], queries scaled by 1/√d as the encoder does
            let scale = 1.0 / (d as f32).sqrt();
            let qkv: Vec<f32> = (0..total * 3 * hidden)
                .map(|i| {
                    rnd()
                        * 2.0
                        * if i % (3 * hidden) < hidden {
                            scale
                        } else {
                            1.0
                        }
                })
                .collect();
            let mut want = vec![0f32; total * hidden];
            let mut got = vec![0f32; total * hidden];
            attend(
                &qkv,
                &mut want,
                &starts,
                hidden,
                heads,
                Isa::detect(None),
                false,
            );
            attend(
                &qkv,
                &mut got,
                &starts,
                hidden,
                heads,
                Isa::detect(None),
                true,
            );
            let mut worst = 0f32;
            for (w, g) in want.iter().zip(&got) {
                assert!(g.is_finite());
                worst = worst.max((w - g).abs());
            }
            // outputs are averages of values in [-2, 2]; bf16 keeps 8 bits
            assert!(worst < 0.02, "d {d}: worst difference {worst}");
            eprintln!("d {d}: worst difference {worst}");
        }
    }
}
