//! The attention tiles against one value at a time, f32 and f16, vector and
//! plain Rust.

use super::*;

fn vals(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 37 + seed * 11) % 23) as f32 - 11.0) / 7.0)
        .collect()
}

#[test]
fn dot_matches_a_plain_sum() {
    for n in [0, 1, 7, 16, 31, 64, 256, 259] {
        let (a, b) = (vals(n, 1), vals(n, 2));
        let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let got = dot(&a, &b) as f64;
        assert!(
            (got - want).abs() < 1e-3 * (1.0 + want.abs()),
            "{n}: {got} vs {want}"
        );
    }
}

/// The vector tiles and the plain-Rust ones give the same bits, on f32
/// and f16 keys.
#[test]
fn the_plain_tiles_equal_the_vector_ones() {
    for n in [3, 8, 64, 259] {
        let q: Vec<Vec<f32>> = (0..4).map(|r| vals(n, r + 1)).collect();
        let k: Vec<Vec<f32>> = (0..4).map(|r| vals(n, r + 9)).collect();
        let k16: Vec<Vec<f16>> = k
            .iter()
            .map(|r| r.iter().map(|v| f16::from_f32(*v)).collect())
            .collect();
        let qs: [&[f32]; 4] = std::array::from_fn(|i| &q[i][..]);
        let ks: [&[f32]; 4] = std::array::from_fn(|i| &k[i][..]);
        let ks16: [&[f16]; 4] = std::array::from_fn(|i| &k16[i][..]);
        let (a, b) = (tile(qs, ks, n), tile_portable(qs, ks, n));
        let (c, d) = (tile(qs, ks16, n), tile_portable(qs, ks16, n));
        for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
            assert_eq!(x.to_bits(), y.to_bits(), "{n}");
        }
        for (x, y) in c.iter().flatten().zip(d.iter().flatten()) {
            assert_eq!(x.to_bits(), y.to_bits(), "{n} f16");
        }
    }
}

/// Every tile gives each value what [`dot`] and [`axpy`] give alone; f16
/// keys and values give what their f32 widening gives.
#[test]
fn tiles_give_the_values_of_one_at_a_time() {
    for n in [5, 64, 259] {
        for (nr, span) in [(1, 1), (3, 5), (4, 8), (9, 13)] {
            let rows: Vec<Vec<f32>> = (0..nr).map(|r| vals(n, r + 3)).collect();
            // values an f16 holds exactly, so both caches hold the same
            let keys: Vec<f32> = vals(n * span, 7)
                .iter()
                .map(|v| f16::from_f32(*v).to_f32())
                .collect();
            let keys16: Vec<f16> = keys.iter().map(|v| f16::from_f32(*v)).collect();
            let refs: Vec<&[f32]> = rows.iter().map(|r| &r[..]).collect();
            for kv in [Kv::F32(&keys), Kv::F16(&keys16)] {
                let mut got = vec![0f32; nr * span];
                score_block(&refs, kv, n, span, 0.5, &mut got);
                for r in 0..nr {
                    let mut one = vec![0f32; span];
                    scores(&rows[r], kv, n, 0.5, &mut one);
                    for j in 0..span {
                        let want = dot(&rows[r], &keys[j * n..(j + 1) * n]) * 0.5;
                        assert_eq!(got[r * span + j].to_bits(), want.to_bits(), "{n} {r} {j}");
                        assert_eq!(one[j].to_bits(), want.to_bits(), "{n} {r} {j}");
                    }
                }
                let weights: Vec<f32> = (0..nr * span)
                    .map(|i| {
                        if i % 3 == 0 {
                            0.0
                        } else {
                            (i % 5) as f32 / 4.0
                        }
                    })
                    .collect();
                let mut outs: Vec<Vec<f32>> = vec![vec![0f32; n]; nr];
                let mut refs: Vec<&mut [f32]> = outs.iter_mut().map(|o| &mut o[..]).collect();
                weighted_block(&mut refs, &weights, kv, n, span);
                for (r, out) in outs.iter().enumerate() {
                    let mut want = vec![0f32; n];
                    for j in 0..span {
                        let w = weights[r * span + j];
                        if w != 0.0 {
                            for (o, v) in want.iter_mut().zip(&keys[j * n..(j + 1) * n]) {
                                *o = w.mul_add(*v, *o);
                            }
                        }
                    }
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(out), bits(&want), "{n} {nr} {span} row {r}");
                    let mut one = vec![0f32; n];
                    for j in 0..span {
                        let w = weights[r * span + j];
                        if w != 0.0 {
                            axpy(&mut one, w, kv.slice(j * n..(j + 1) * n));
                        }
                    }
                    assert_eq!(bits(&one), bits(&want), "axpy {n} row {r}");
                }
            }
        }
    }
}
