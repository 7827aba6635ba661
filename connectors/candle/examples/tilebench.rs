//! Prompt tiles: magpie's quantized matrix product on a 2,048 × 640 matrix
//! (Gemma 3 270M's feed-forward shape) against 256 tokens, in Q5_0 and Q8_0,
//! with the best kernels this CPU has (`MAGPIE_LLM_KERNELS=avx2|portable`
//! to compare): the best of 30 runs, in multiply-adds per second.
//! `cargo run -p magpie-candle --example tilebench`
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use magpie_candle::llm::quant::{Kernels, QMatrix};
use std::sync::Arc;
use std::time::Instant;
fn main() {
    let (rows, cols, t) = (2048usize, 640usize, 256usize);
    let w = Tensor::randn(0f32, 1.0, (rows, cols), &Device::Cpu).unwrap();
    for (name, g) in [("q5_0", GgmlDType::Q5_0), ("q8_0", GgmlDType::Q8_0)] {
        let q = Arc::new(QTensor::quantize(&w, g).unwrap());
        let plain = QMatrix::from_qtensor(q).ok().unwrap();
        let packed = plain.packed().unwrap();
        for (layout, m) in [("file layout", &plain), ("packed", &packed)] {
            let x: Vec<f32> = (0..t * cols).map(|i| (i as f32 * 0.37).sin()).collect();
            let mut out = vec![0f32; t * rows];
            let mut best = f64::MAX;
            for _ in 0..30 {
                let s = Instant::now();
                m.matmul_with(Kernels::detect(), &x, t, &mut out);
                best = best.min(s.elapsed().as_secs_f64());
            }
            println!(
                "{name} {layout} {rows}x{cols} x {t} tokens: {:.2} ms, {:.1} GMAC/s",
                best * 1e3,
                (rows * cols * t) as f64 / best / 1e9
            );
        }
    }
}
