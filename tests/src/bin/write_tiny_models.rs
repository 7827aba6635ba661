//! Write the tiny GGUF models the parity tests use into a directory, for
//! scripts/make_llm_fixture.py to run through llama.cpp:
//!
//!     cargo run -p magpie-tests --bin write_tiny_models -- target/tiny-models

use magpie_tests::tiny::{
    sha256_file, tiny_prompts, tiny_vocab_size, write_lora, write_tiny, Tiny, LORA_A, LORA_B,
};

fn main() {
    let dir = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: write_tiny_models DIR"),
    );
    std::fs::create_dir_all(&dir).unwrap();
    let gemma = magpie_tests::gemma_path();
    for kind in Tiny::ALL {
        for layers in [1, 2] {
            let p = dir.join(kind.file_name(layers));
            write_tiny(kind, layers, &gemma, &p);
            println!("{} {}", p.display(), sha256_file(&p));
        }
        // the LoRA adapters of the 2-layer model
        let n_vocab = tiny_vocab_size(kind, &gemma);
        for (tag, spec) in [("a", LORA_A), ("b", LORA_B)] {
            let p = dir.join(format!("tiny-{}-2l-lora-{tag}.gguf", kind.arch()));
            write_lora(kind, 2, n_vocab, spec, &p);
            println!("{} {}", p.display(), sha256_file(&p));
        }
        std::fs::write(
            dir.join(format!("prompts-{}.json", kind.arch())),
            serde_json::to_string_pretty(&tiny_prompts(kind)).unwrap(),
        )
        .unwrap();
    }
}
