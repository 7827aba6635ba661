//! Every type's kernels against the dequantized reference, on random blocks
//! and odd shapes.

use super::*;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn unit(&mut self) -> f32 {
        self.next() as f32 / (1u64 << 31) as f32
    }
}

const ALL: [QType; 8] = [
    QType::Q4_0,
    QType::Q4_1,
    QType::Q5_0,
    QType::Q5_1,
    QType::Q8_0,
    QType::Q4_K,
    QType::Q5_K,
    QType::Q6_K,
];

/// Random codes, and scales of a sane size where the type keeps an f16.
fn random_row(ty: QType, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let mut row: Vec<u8> = (0..ty.row_bytes(cols)).map(|_| rng.next() as u8).collect();
    let f16 = |v: f32| half::f16::from_f32(v).to_le_bytes();
    for b in row.chunks_exact_mut(ty.block_bytes()) {
        let (d, m) = (0.001 + rng.unit() * 0.05, rng.unit() * 0.05 - 0.025);
        match ty {
            QType::Q6_K => b[208..210].copy_from_slice(&f16(d)),
            QType::Q4_1 | QType::Q5_1 | QType::Q4_K | QType::Q5_K => {
                b[0..2].copy_from_slice(&f16(d));
                b[2..4].copy_from_slice(&f16(m.abs()));
            }
            _ => b[0..2].copy_from_slice(&f16(d)),
        }
    }
    row
}

/// The activations as the kernels see them, back in f32.
fn dequantized_acts(ty: QType, x: &[f32]) -> Vec<f32> {
    if ty.is_k() {
        let mut a = Vec::new();
        quantize256(x, &mut a);
        a.iter()
            .flat_map(|b| b.q.iter().map(move |q| *q as f32 * b.d))
            .collect()
    } else {
        let mut a = Vec::new();
        quantize32(x, &mut a);
        a.iter()
            .flat_map(|b| b.q.iter().map(move |q| *q as f32 * b.d))
            .collect()
    }
}

fn kernels() -> Vec<Kernels> {
    let mut k = vec![Kernels::Portable];
    if Kernels::detect() != Kernels::Portable {
        // an AVX-512 CPU runs the AVX2 build too
        if Kernels::detect() == Kernels::Avx512 {
            k.push(Kernels::Avx2);
        }
        k.push(Kernels::detect());
    } else {
        eprintln!(
            "SKIPPED (vector kernels): this CPU has no AVX2+FMA; the portable path is tested"
        );
    }
    k
}

#[test]
fn every_type_matches_the_dequantized_reference() {
    let mut rng = Rng(11);
    for ty in ALL {
        for blocks in [1, 3] {
            let cols = blocks * ty.block();
            let (rows, t) = (7, 6); // tokens in a group of four, then two
            let data: Vec<u8> = (0..rows)
                .flat_map(|_| random_row(ty, cols, &mut rng))
                .collect();
            let m = QMatrix::new(ty, rows, cols, data.into()).unwrap();
            let x: Vec<f32> = (0..t * cols).map(|_| rng.unit() * 4.0 - 2.0).collect();
            for k in kernels() {
                let mut out = vec![0f32; t * rows];
                m.matmul_with(k, &x, t, &mut out);
                for ti in 0..t {
                    let xa = dequantized_acts(ty, &x[ti * cols..(ti + 1) * cols]);
                    for r in 0..rows {
                        let mut w = vec![0f32; cols];
                        m.dequantize(r, &mut w);
                        let want: f64 = w.iter().zip(&xa).map(|(a, b)| *a as f64 * *b as f64).sum();
                        let scale: f64 = w
                            .iter()
                            .zip(&xa)
                            .map(|(a, b)| (*a as f64 * *b as f64).abs())
                            .sum();
                        let got = out[ti * rows + r] as f64;
                        assert!(
                            (got - want).abs() <= 1e-4 * scale + 1e-6,
                            "{ty:?} {k:?} cols {cols} row {r} token {ti}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn the_vector_kernels_equal_the_portable_ones() {
    let mut rng = Rng(5);
    if Kernels::detect() == Kernels::Portable {
        eprintln!("SKIPPED: this CPU has no AVX2+FMA; nothing to compare");
        return;
    }
    for ty in ALL {
        let cols = 5 * ty.block();
        let rows = 33;
        let data: Vec<u8> = (0..rows)
            .flat_map(|_| random_row(ty, cols, &mut rng))
            .collect();
        let m = QMatrix::new(ty, rows, cols, data.into()).unwrap();
        let x: Vec<f32> = (0..cols).map(|_| rng.unit() * 2.0 - 1.0).collect();
        let (mut a, mut b) = (vec![0f32; rows], vec![0f32; rows]);
        m.matmul_with(Kernels::Portable, &x, 1, &mut a);
        m.matmul_with(Kernels::detect(), &x, 1, &mut b);
        for (p, v) in a.iter().zip(&b) {
            assert!(
                (p - v).abs() <= 1e-5 * p.abs().max(1.0),
                "{ty:?}: {p} vs {v}"
            );
        }
    }
}

#[test]
fn shapes_that_do_not_fit_are_refused() {
    assert!(QMatrix::new(QType::Q4_K, 2, 100, vec![0u8; 10].into()).is_err());
    assert!(QMatrix::new(QType::Q8_0, 2, 64, vec![0u8; 10].into()).is_err());
    assert!(QMatrix::new(QType::Q8_0, 2, 64, vec![0u8; 136].into()).is_ok());
}

/// The block layouts read as candle (and ggml) read them.
#[test]
fn dequantize_agrees_with_candle() {
    use candle_core::quantized::{QStorage, QTensor};
    use candle_core::Device;
    let mut rng = Rng(23);
    for ty in ALL {
        let (rows, cols) = (3, 2 * ty.block());
        let data: Vec<u8> = (0..rows)
            .flat_map(|_| random_row(ty, cols, &mut rng))
            .collect();
        let t = QStorage::from_data(std::borrow::Cow::Borrowed(&data), &Device::Cpu, ty.ggml())
            .and_then(|s| QTensor::new(s, (rows, cols)))
            .and_then(|q| q.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>())
            .unwrap();
        assert_eq!(t.len(), rows * cols, "{ty:?}");
        let m = QMatrix::new(ty, rows, cols, data.into()).unwrap();
        let mut mine = vec![0f32; cols];
        for r in 0..rows {
            m.dequantize(r, &mut mine);
            for (i, (a, b)) in mine.iter().zip(&t[r * cols..]).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                    "{ty:?} row {r} [{i}]: {a} vs {b}"
                );
            }
        }
    }
}

/// A prompt gives every token the values it gets alone, bit for bit, however
/// the rows fall into tiles (2 × 4 for the 32-value types, row by row with up
/// to four tokens otherwise): logits do not depend on how a prompt is split.
#[test]
fn tiles_give_each_token_its_values_alone() {
    let mut rng = Rng(23);
    for ty in ALL {
        let cols = 2 * ty.block();
        let rows = 37; // tiles and a remainder, across tasks of 12
        let data: Vec<u8> = (0..rows)
            .flat_map(|_| random_row(ty, cols, &mut rng))
            .collect();
        let m = QMatrix::new(ty, rows, cols, data.into()).unwrap();
        for t in [2, 5, 7, 9] {
            let x: Vec<f32> = (0..t * cols).map(|_| rng.unit() * 2.0 - 1.0).collect();
            for k in kernels() {
                let mut all = vec![0f32; t * rows];
                m.matmul_with(k, &x, t, &mut all);
                for ti in 0..t {
                    let mut one = vec![0f32; rows];
                    m.matmul_with(k, &x[ti * cols..(ti + 1) * cols], 1, &mut one);
                    assert_eq!(
                        &all[ti * rows..(ti + 1) * rows],
                        &one[..],
                        "{ty:?} {k:?} t {t} token {ti}"
                    );
                }
            }
        }
    }
}

/// The AVX-512 build of the prompt tiles gives the AVX2 build's values bit
/// for bit (the same instructions, more registers).
#[test]
fn the_avx512_tiles_equal_the_avx2_ones() {
    if Kernels::detect() != Kernels::Avx512 {
        eprintln!("SKIPPED: this CPU has no AVX-512 F/BW/VL; the AVX2 build is the one tested");
        return;
    }
    let mut rng = Rng(29);
    for ty in ALL.into_iter().filter(|t| !t.is_k()) {
        let cols = 3 * ty.block();
        let rows = 35;
        let data: Vec<u8> = (0..rows)
            .flat_map(|_| random_row(ty, cols, &mut rng))
            .collect();
        let m = QMatrix::new(ty, rows, cols, data.into()).unwrap();
        let t = 9;
        let x: Vec<f32> = (0..t * cols).map(|_| rng.unit() * 2.0 - 1.0).collect();
        let (mut a, mut b) = (vec![0f32; t * rows], vec![0f32; t * rows]);
        m.matmul_with(Kernels::Avx2, &x, t, &mut a);
        m.matmul_with(Kernels::Avx512, &x, t, &mut b);
        assert_eq!(a, b, "{ty:?}");
    }
}

const PACKABLE: [QType; 5] = [
    QType::Q4_0,
    QType::Q5_0,
    QType::Q8_0,
    QType::Q4_K,
    QType::Q6_K,
];

/// A matrix of `rows` random rows, in the file's layout and packed.
fn plain_and_packed(ty: QType, rows: usize, cols: usize, rng: &mut Rng) -> (QMatrix, QMatrix) {
    let data: Vec<u8> = (0..rows).flat_map(|_| random_row(ty, cols, rng)).collect();
    let m = QMatrix::new(ty, rows, cols, data.into()).unwrap();
    let p = m.packed().expect("packs");
    assert!(p.is_packed() && p.packed().is_none());
    // the same bytes, moved (Q4_K's scales a byte each: 4 more a row a block)
    let extra = if ty == QType::Q4_K {
        4 * rows * cols / 256
    } else {
        0
    };
    assert_eq!(p.bytes(), m.bytes() + extra, "{ty:?}");
    (m, p)
}

/// Packing moves the file's bytes (each row unpacks to what it was) and the
/// packed kernels give the file layout's products to rounding.
#[test]
fn packed_rows_hold_the_same_matrix() {
    let mut rng = Rng(31);
    for ty in PACKABLE {
        let cols = 3 * ty.block();
        let (m, p) = plain_and_packed(ty, 24, cols, &mut rng);
        let (mut a, mut b) = (vec![0f32; cols], vec![0f32; cols]);
        for r in 0..24 {
            m.dequantize(r, &mut a);
            p.dequantize(r, &mut b);
            assert_eq!(a, b, "{ty:?} row {r}");
        }
        let t = 11;
        let x: Vec<f32> = (0..t * cols).map(|_| rng.unit() * 4.0 - 2.0).collect();
        for k in kernels() {
            let (mut want, mut got) = (vec![0f32; t * 24], vec![0f32; t * 24]);
            m.matmul_with(k, &x, t, &mut want);
            p.matmul_with(k, &x, t, &mut got);
            for (i, (w, g)) in want.iter().zip(&got).enumerate() {
                // against the exact sum, within what either order of
                // rounding allows (Q4_K's minimums cancel much of the sum)
                let (ti, r) = (i / 24, i % 24);
                let xa = dequantized_acts(ty, &x[ti * cols..(ti + 1) * cols]);
                m.dequantize(r, &mut a);
                let exact: f64 = a.iter().zip(&xa).map(|(a, b)| *a as f64 * *b as f64).sum();
                let scale: f64 = a
                    .iter()
                    .zip(&xa)
                    .map(|(a, b)| (*a as f64 * *b as f64).abs())
                    .sum();
                let tol = 1e-5 * scale + 1e-6;
                assert!(
                    (*g as f64 - exact).abs() <= tol && (*w as f64 - exact).abs() <= tol,
                    "{ty:?} {k:?} [{i}]: packed {g}, file layout {w}, exact {exact}"
                );
            }
        }
        let seven: Vec<u8> = (0..7)
            .flat_map(|_| random_row(ty, cols, &mut rng))
            .collect();
        let seven = QMatrix::new(ty, 7, cols, seven.into()).unwrap();
        assert!(seven.packed().is_none(), "7 rows do not pack");
    }
    let k = QMatrix::new(QType::Q4_1, 8, 32, vec![0u8; 8 * 20].into()).unwrap();
    assert!(k.packed().is_none(), "Q4_1 does not pack");
}

/// On packed rows a prompt's tiles (8 tokens, 4, 1), a decode step's row
/// ranges (any start and end) and the plain-Rust path give every token the
/// same values, bit for bit.
#[test]
fn packed_tiles_ranges_and_portable_path_agree_bit_for_bit() {
    let mut rng = Rng(37);
    for ty in PACKABLE {
        let (rows, cols) = (40, 2 * ty.block());
        let (_, p) = plain_and_packed(ty, rows, cols, &mut rng);
        for t in [1, 5, 8, 13] {
            let x: Vec<f32> = (0..t * cols).map(|_| rng.unit() * 2.0 - 1.0).collect();
            let mut first: Option<Vec<f32>> = None;
            for k in kernels() {
                let mut all = vec![0f32; t * rows];
                p.matmul_with(k, &x, t, &mut all);
                for ti in 0..t {
                    let (mut a, mut b) = (Vec::new(), Vec::new());
                    let xt = &x[ti * cols..(ti + 1) * cols];
                    let acts = if ty.is_k() {
                        quantize256(xt, &mut b);
                        Acts::B256(&b)
                    } else {
                        quantize32(xt, &mut a);
                        Acts::B32(&a)
                    };
                    let mut one = vec![0f32; rows];
                    for (r0, r1) in [(0, 3), (3, 16), (16, 17), (17, 40)] {
                        p.dot_rows(k, acts, r0..r1, &mut one[r0..r1]);
                    }
                    assert_eq!(
                        &all[ti * rows..(ti + 1) * rows],
                        &one[..],
                        "{ty:?} {k:?} t {t} token {ti}"
                    );
                }
                match &first {
                    None => first = Some(all),
                    Some(f) => assert_eq!(f, &all, "{ty:?} {k:?} against the portable path"),
                }
            }
        }
    }
}
