//! Quantized matmul: magpie's kernels against candle's QMatMul on the Gemma 3
//! 270M output-layer shape (262,144 × 640), for a decoding step (one token)
//! and a prompt tile (64 tokens), in Q8_0 and Q5_0.
//! `cargo run --release -p magpie-candle --example qbench`
use std::sync::Arc;
use std::time::Instant;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use magpie_candle::llm::quant::QMatrix;

fn main() {
    let dev = Device::Cpu;
    let (rows, cols) = (262_144, 640);
    let w = Tensor::randn(0f32, 1.0, (rows, cols), &dev).unwrap();
    for ty in [GgmlDType::Q8_0, GgmlDType::Q5_0] {
        let q = Arc::new(QTensor::quantize(&w, ty).unwrap());
        let ours = QMatrix::from_qtensor(q.clone()).ok().unwrap();
        let theirs = QMatMul::from_arc(q).unwrap();
        for m in [1usize, 64] {
            let x = Tensor::randn(0f32, 1.0, (1, m, cols), &dev).unwrap();
            for round in 0..3 {
                let t = Instant::now();
                for _ in 0..10 {
                    ours.forward(&x).unwrap();
                }
                let a = t.elapsed().as_secs_f64() / 10.0;
                let t = Instant::now();
                for _ in 0..10 {
                    theirs.forward(&x).unwrap();
                }
                let b = t.elapsed().as_secs_f64() / 10.0;
                println!(
                    "{ty:?} m={m} round {round}: magpie {:.2} ms, candle {:.2} ms",
                    a * 1e3,
                    b * 1e3
                );
            }
        }
    }
}
