//! candle's BERT layers behind magpie's own embedding step and attention
//! mask: the path a GPU runs, in f16 or f32.
//!
//! candle's `BertModel` builds its additive mask as `(1 − m) × f32::MIN` in
//! the model's dtype; in f16 `f32::MIN` is −∞, so every kept position gets
//! `0 × −∞ = NaN` and the whole batch comes out NaN. Here the mask is
//! `(1 − m) × −10⁴`, which f16 holds and which `exp` still takes to 0.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Embedding, LayerNorm, VarBuilder};
use candle_transformers::models::bert::{BertEncoder, Config};

/// What a masked key adds to its attention scores before the softmax.
const MASKED: f64 = -1e4;

/// BERT: word, position and token-type embeddings, their LayerNorm, and
/// candle's encoder layers.
pub(crate) struct CandleBert {
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    norm: LayerNorm,
    encoder: BertEncoder,
}

impl CandleBert {
    /// The tensors under `bert.`, under the config's `model_type`, or at the top.
    pub(crate) fn load(vb: VarBuilder, config: &Config) -> Result<Self> {
        let has = |p: &str| vb.contains_tensor(&format!("{p}embeddings.word_embeddings.weight"));
        let vb = if has("bert.") {
            vb.pp("bert")
        } else {
            match &config.model_type {
                Some(t) if has(&format!("{t}.")) => vb.pp(t),
                _ => vb,
            }
        };
        let e = vb.pp("embeddings");
        let h = config.hidden_size;
        Ok(Self {
            word: candle_nn::embedding(config.vocab_size, h, e.pp("word_embeddings"))?,
            position: candle_nn::embedding(
                config.max_position_embeddings,
                h,
                e.pp("position_embeddings"),
            )?,
            token_type: candle_nn::embedding(
                config.type_vocab_size,
                h,
                e.pp("token_type_embeddings"),
            )?,
            norm: candle_nn::layer_norm(h, config.layer_norm_eps, e.pp("LayerNorm"))?,
            encoder: BertEncoder::load(vb.pp("encoder"), config)?,
        })
    }

    /// Hidden states `(n, len, dim)` in the model's dtype, for token ids and
    /// a 0/1 mask (`(n, len)`, u32).
    pub(crate) fn forward(&self, ids: &Tensor, type_ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (_, len) = ids.dims2()?;
        let positions = Tensor::arange(0u32, len as u32, ids.device())?;
        let x = (self.word.forward(ids)? + self.token_type.forward(type_ids)?)?
            .broadcast_add(&self.position.forward(&positions)?)?;
        let x = self.norm.forward(&x)?;
        let bias = (mask.to_dtype(DType::F32)?.affine(-1.0, 1.0)? * MASKED)?
            .to_dtype(x.dtype())?
            .unsqueeze(1)?
            .unsqueeze(1)?; // (n, 1, 1, len)
        self.encoder.forward(&x, &bias)
    }
}
