use candle_core::{DType, Device, Tensor};
use proptest::prelude::*;

use super::{AttentionKernel, FlashAttention, MAX_HEAD_DIM};

/// A small deterministic generator (xorshift), values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

struct Case {
    heads: usize,
    groups: usize,
    hd: usize,
    cap: usize,
    start: usize,
    t: usize,
    window: usize,
    half: bool,
}

/// Attention written out the plain way, in f64: every visible score, a
/// softmax, the weighted sum of values.
fn reference(c: &Case, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
    let scale = 1.0 / (c.hd as f64).sqrt();
    let round = |x: f32| {
        if c.half {
            half::f16::from_f32(x).to_f32()
        } else {
            x
        }
    };
    let mut out = vec![0f32; c.heads * c.t * c.hd];
    for h in 0..c.heads {
        let base = (h / c.groups) * c.cap;
        for i in 0..c.t {
            let row = h * c.t + i;
            let qp = c.start + i;
            let visible: Vec<usize> = (0..=qp)
                .filter(|&j| c.window == 0 || qp - j < c.window)
                .collect();
            let scores: Vec<f64> = visible
                .iter()
                .map(|&j| {
                    (0..c.hd)
                        .map(|d| round(q[row * c.hd + d]) as f64 * k[(base + j) * c.hd + d] as f64)
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let top = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - top).exp()).collect();
            let z: f64 = e.iter().sum();
            // an f16 cache's weights are rounded to f16 once normalised
            let w: Vec<f64> = e.iter().map(|x| round((x / z) as f32) as f64).collect();
            for d in 0..c.hd {
                let s: f64 = visible
                    .iter()
                    .zip(&w)
                    .map(|(&j, w)| w * v[(base + j) * c.hd + d] as f64)
                    .sum();
                out[row * c.hd + d] = s as f32;
            }
        }
    }
    out
}

/// How far the op may be from the reference: f32 rounding, and with an f16
/// cache one f16 step of a weight (≤ 2⁻¹¹ of it) where the two sides' f32
/// and f64 weights fall either side of a rounding boundary.
fn tolerance(c: &Case) -> f32 {
    if c.half {
        1e-3
    } else {
        2e-5
    }
}

/// The op against the reference; the largest difference.
fn check(c: &Case, seed: u64) -> f32 {
    let dev = Device::Cpu;
    let kvh = c.heads / c.groups;
    let q = values(c.heads * c.t * c.hd, seed);
    let mut k = values(kvh * c.cap * c.hd, seed + 1);
    let mut v = values(kvh * c.cap * c.hd, seed + 2);
    if c.half {
        // the cache holds f16: the reference reads the same rounded values
        for x in k.iter_mut().chain(v.iter_mut()) {
            *x = half::f16::from_f32(*x).to_f32();
        }
    }
    let want = reference(c, &q, &k, &v);
    let dtype = if c.half { DType::F16 } else { DType::F32 };
    let qt = Tensor::from_vec(q, (1, c.heads, c.t, c.hd), &dev).unwrap();
    let kt = Tensor::from_vec(k, (1, kvh, c.cap, c.hd), &dev).unwrap();
    let vt = Tensor::from_vec(v, (1, kvh, c.cap, c.hd), &dev).unwrap();
    let op = FlashAttention {
        start: c.start,
        window: c.window,
        groups: c.groups,
        scale: 1.0 / (c.hd as f32).sqrt(),
        half: c.half,
    };
    let got = op
        .attend(
            &qt,
            &kt.to_dtype(dtype).unwrap(),
            &vt.to_dtype(dtype).unwrap(),
        )
        .unwrap();
    assert_eq!(got.dims(), &[1, c.heads, c.t, c.hd]);
    let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    got.iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
}

#[test]
fn fused_attention_equals_attention_written_out() {
    let cases = [
        // one token at the start of a cache: seven of eight warps see no key
        (4, 1, 64, 16, 0, 1, 0, false),
        // one token late in a cache, grouped heads, f16
        (8, 4, 64, 300, 250, 1, 0, true),
        // a prompt from the start, causal
        (4, 2, 32, 40, 0, 33, 0, false),
        // a prompt continuing a cache, sliding window shorter than the prompt
        (4, 2, 256, 64, 10, 20, 7, true),
        // a head size that is no multiple of 32, window of one
        (2, 1, 40, 12, 3, 5, 1, false),
        // the largest head size the kernel takes
        (2, 2, MAX_HEAD_DIM, 9, 4, 5, 3, true),
    ];
    for (i, &(heads, groups, hd, cap, start, t, window, half)) in cases.iter().enumerate() {
        let c = Case {
            heads,
            groups,
            hd,
            cap,
            start,
            t,
            window,
            half,
        };
        let d = check(&c, 7 + i as u64);
        assert!(d < tolerance(&c), "case {i}: off by {d}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn fused_attention_holds_on_any_shape(
        kvh in 1usize..3,
        groups in 1usize..4,
        hd in 1usize..80,
        start in 0usize..40,
        t in 1usize..12,
        spare in 0usize..5,
        window in 0usize..20,
        half in any::<bool>(),
        seed in 0u64..1000,
    ) {
        let c = Case { heads: kvh * groups, groups, hd, cap: start + t + spare, start, t, window, half };
        let d = check(&c, seed);
        prop_assert!(d < tolerance(&c), "off by {}", d);
    }
}

#[test]
fn what_the_kernel_cannot_take_is_refused() {
    let dev = Device::Cpu;
    let op = FlashAttention {
        start: 0,
        window: 0,
        groups: 1,
        scale: 1.0,
        half: false,
    };
    let zeros = |s: &[usize], dt| Tensor::zeros(s, dt, &dev).unwrap();
    let err = |q: Tensor, k: Tensor, v: Tensor, op: &FlashAttention| {
        op.attend(&q, &k, &v).unwrap_err().to_string()
    };
    // a head larger than the kernel's shared memory holds
    let big = MAX_HEAD_DIM + 1;
    let e = err(
        zeros(&[1, 1, 1, big], DType::F32),
        zeros(&[1, 1, 4, big], DType::F32),
        zeros(&[1, 1, 4, big], DType::F32),
        &op,
    );
    assert!(e.contains("at most 256"), "{e}");
    // more rows than the cache holds from `start`
    let late = FlashAttention { start: 3, ..op };
    let e = err(
        zeros(&[1, 1, 2, 8], DType::F32),
        zeros(&[1, 1, 4, 8], DType::F32),
        zeros(&[1, 1, 4, 8], DType::F32),
        &late,
    );
    assert!(e.contains("cache of 4"), "{e}");
    // query heads that are not kv heads × groups
    let e = err(
        zeros(&[1, 3, 1, 8], DType::F32),
        zeros(&[1, 2, 4, 8], DType::F32),
        zeros(&[1, 2, 4, 8], DType::F32),
        &op,
    );
    assert!(e.contains("groups"), "{e}");
    // a q8_0 cache (bytes) is not read here
    let e = err(
        zeros(&[1, 1, 1, 8], DType::F32),
        zeros(&[1, 1, 4, 8], DType::U8),
        zeros(&[1, 1, 4, 8], DType::U8),
        &op,
    );
    assert!(e.contains("f16 or f32"), "{e}");
}

#[test]
fn the_attention_kernel_is_named_as_it_is_parsed() {
    for k in [AttentionKernel::Matmul, AttentionKernel::Fused] {
        assert_eq!(AttentionKernel::parse(k.name()).unwrap(), k);
    }
    assert_eq!(
        AttentionKernel::parse(" Flash ").unwrap(),
        AttentionKernel::Fused
    );
    let e = AttentionKernel::parse("xformers").unwrap_err().to_string();
    assert!(e.contains("matmul") && e.contains("fused"), "{e}");
}
