//! Write a LoRA adapter with random factors for any GGUF model, on every
//! attention and MLP projection it has, for measuring what an adapter costs
//! (`docqa bench llm --lora NAME=OUT.gguf`):
//!
//!     cargo run -p magpie-tests --bin write_lora -- BASE.gguf OUT.gguf [RANK]

use magpie_tests::tiny::{write_lora_for, TinyLora};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [base, out, rest @ ..] = args.as_slice() else {
        eprintln!("usage: write_lora BASE.gguf OUT.gguf [RANK]");
        std::process::exit(2);
    };
    let rank = match rest.first().map(|r| r.parse::<usize>()) {
        None => 16,
        Some(Ok(r)) if r > 0 => r,
        Some(_) => {
            eprintln!("RANK must be a positive number");
            std::process::exit(2);
        }
    };
    let spec = TinyLora {
        seed: 7,
        rank,
        alpha: Some(2.0 * rank as f32),
        dtype: candle_core::quantized::GgmlDType::F16,
        output: false,
    };
    write_lora_for(base.as_ref(), spec, out.as_ref());
    println!("{out}: rank {rank} on every attention and MLP projection of {base}");
}
