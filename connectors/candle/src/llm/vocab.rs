//! Tokenizers built from a GGUF file's metadata, so a lone `.gguf` is enough.
//!
//! Two vocabularies are in use: SentencePiece-style (`tokenizer.ggml.model =
//! llama`, used by Llama 1/2, Mistral, TinyLlama, Gemma: tokens with scores)
//! and GPT-2 byte-level BPE (`gpt2`: Llama 3, Qwen: tokens with merges).

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use super::gguf::Metadata;
use super::spm::{SpmTokenizer, TYPE_CONTROL, TYPE_USER_DEFINED};
use super::LlmError;

/// GGUF token type of ordinary tokens.
const TYPE_NORMAL: i32 = 1;

/// Special token ids and flags read from the metadata.
#[derive(Debug, Clone, Default)]
pub struct SpecialTokens {
    /// Start of text.
    pub bos: Option<u32>,
    /// End of text.
    pub eos: Option<u32>,
    /// Every token that ends generation (eos, end-of-turn, ...).
    pub end_of_generation: Vec<u32>,
    /// Whether prompts start with `bos`.
    pub add_bos: bool,
}

impl SpecialTokens {
    /// Ids and flags from `md` (end-of-generation tokens are filled in later).
    fn from_metadata(md: &Metadata, kind: &str) -> Self {
        // the GLM vocabularies have no start-of-text token (their prompts
        // start with [gMASK]), whatever the header says, as in llama.cpp
        let glm = glm_vocab(md);
        Self {
            bos: md.u32("tokenizer.ggml.bos_token_id").filter(|_| !glm),
            eos: md.u32("tokenizer.ggml.eos_token_id"),
            end_of_generation: Vec::new(),
            // SentencePiece vocabularies start prompts with BOS unless told otherwise
            add_bos: !glm
                && md
                    .bool("tokenizer.ggml.add_bos_token")
                    .unwrap_or(kind == "llama"),
        }
    }
}

/// What turns text into ids and back.
enum Text {
    /// A `tokenizers` tokenizer: GPT-2 byte-level BPE, or a tokenizer.json.
    Hf(Box<Tokenizer>),
    /// A SentencePiece vocabulary, as llama.cpp runs it.
    Spm(Box<SpmTokenizer>),
}

/// The tokenizer and its special tokens.
pub struct GgufTokenizer {
    text: Text,
    /// Special tokens.
    pub special: SpecialTokens,
    /// `llama` (SentencePiece) or `gpt2`.
    pub kind: String,
}

/// Whether `md` holds a GLM-family vocabulary (by its pre-tokenizer).
fn glm_vocab(md: &Metadata) -> bool {
    matches!(
        md.string("tokenizer.ggml.pre"),
        Some("chatglm-bpe" | "glm4" | "glm5")
    )
}

/// Regex splits of the GPT-2-style pre-tokenizers llama.cpp knows by name.
fn pre_tokenizer_regex(pre: &str) -> &'static str {
    match pre {
        "llama3" | "llama-bpe" | "llama-v3" | "smaug-bpe" | "chatglm-bpe" | "glm4" | "glm5" => {
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        }
        "qwen2" | "qwen35" | "deepseek-r1-qwen" => {
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        }
        // GPT-2's own
        _ => r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
    }
}

fn tok_err(e: impl std::fmt::Display) -> LlmError {
    LlmError::Tokenizer(e.to_string())
}

impl GgufTokenizer {
    /// Build the tokenizer described by `md`.
    pub fn from_metadata(md: &Metadata) -> Result<Self, LlmError> {
        let kind = md
            .string("tokenizer.ggml.model")
            .ok_or_else(|| {
                LlmError::Tokenizer(
                    "the file has no tokenizer.ggml.model: put a tokenizer.json beside it".into(),
                )
            })?
            .to_string();
        let tokens = md.string_array("tokenizer.ggml.tokens").ok_or_else(|| {
            LlmError::Tokenizer("the file has no tokenizer.ggml.tokens vocabulary".into())
        })?;
        let types = md
            .i32_array("tokenizer.ggml.token_type")
            .unwrap_or_else(|| vec![TYPE_NORMAL; tokens.len()]);
        if types.len() != tokens.len() {
            return Err(tok_err("token_type and tokens differ in length"));
        }
        // the special ids before the vocabulary moves into its tokenizer
        let special = specials(&kind, &tokens, &types, md);
        let text = match kind.as_str() {
            "llama" => {
                let scores = md
                    .f32_array("tokenizer.ggml.scores")
                    .ok_or_else(|| tok_err("a SentencePiece vocabulary needs tokenizer.ggml.scores"))?;
                if scores.len() != tokens.len() {
                    return Err(tok_err("scores and tokens differ in length"));
                }
                let add_space_prefix = md
                    .bool("tokenizer.ggml.add_space_prefix")
                    .unwrap_or(true);
                let unk = md.u32("tokenizer.ggml.unknown_token_id");
                let spm = SpmTokenizer::new(tokens, scores, types, unk, add_space_prefix)?;
                Text::Spm(Box::new(spm))
            }
            "gpt2" => {
                let merges = md.string_array("tokenizer.ggml.merges").ok_or_else(|| {
                    tok_err("a GPT-2 vocabulary needs tokenizer.ggml.merges")
                })?;
                let pre = md.string("tokenizer.ggml.pre").unwrap_or("default");
                let mut tokenizer = build_gpt2(&tokens, &merges, pre)?;
                // control and user-defined tokens are matched whole in the text
                let mut specials = Vec::new();
                let mut user = Vec::new();
                for (t, &ty) in tokens.iter().zip(&types) {
                    match ty {
                        TYPE_CONTROL => specials.push(AddedToken::from(t.clone(), true)),
                        TYPE_USER_DEFINED if !t.is_empty() => {
                            user.push(AddedToken::from(t.clone(), false).normalized(false))
                        }
                        _ => {}
                    }
                }
                tokenizer.add_special_tokens(specials).map_err(tok_err)?;
                if !user.is_empty() {
                    tokenizer.add_tokens(user).map_err(tok_err)?;
                }
                Text::Hf(Box::new(tokenizer))
            }
            other => {
                return Err(LlmError::Tokenizer(format!(
                    "tokenizer type {other:?} is not supported (llama/SentencePiece and gpt2 are); put a tokenizer.json beside the model"
                )))
            }
        };
        Ok(Self {
            text,
            special,
            kind,
        })
    }

    /// Use `tokenizer.json` for the text, the GGUF for special ids.
    pub fn with_json(path: &std::path::Path, md: &Metadata) -> Result<Self, LlmError> {
        let tokenizer = Tokenizer::from_file(path)
            .map_err(|e| LlmError::Tokenizer(format!("cannot read {}: {e}", path.display())))?;
        let tokens = md.string_array("tokenizer.ggml.tokens").unwrap_or_default();
        let types = md
            .i32_array("tokenizer.ggml.token_type")
            .unwrap_or_else(|| vec![TYPE_NORMAL; tokens.len()]);
        let kind = md
            .string("tokenizer.ggml.model")
            .unwrap_or("json")
            .to_string();
        Ok(Self {
            text: Text::Hf(Box::new(tokenizer)),
            special: specials(&kind, &tokens, &types, md),
            kind,
        })
    }

    /// Token ids of `text` (special tokens written in the text are recognised; no BOS added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, LlmError> {
        match &self.text {
            Text::Spm(t) => Ok(t.encode(text)),
            Text::Hf(t) => Ok(t.encode(text, false).map_err(tok_err)?.get_ids().to_vec()),
        }
    }

    /// Text of `ids` (special tokens dropped).
    pub fn decode(&self, ids: &[u32]) -> Result<String, LlmError> {
        match &self.text {
            Text::Spm(t) => Ok(t.decode(ids, false)),
            Text::Hf(t) => t.decode(ids, true).map_err(tok_err),
        }
    }

    /// Text of `ids` with the special tokens written out (to show a prompt).
    pub fn decode_with_specials(&self, ids: &[u32]) -> Result<String, LlmError> {
        match &self.text {
            Text::Spm(t) => Ok(t.decode(ids, true)),
            Text::Hf(t) => t.decode(ids, false).map_err(tok_err),
        }
    }

    /// The string of one token as the vocabulary writes it.
    pub fn token_str(&self, id: u32) -> Option<String> {
        match &self.text {
            Text::Spm(t) => t.token_str(id).map(str::to_string),
            Text::Hf(t) => t.id_to_token(id),
        }
    }

    /// The id of the token written `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        match &self.text {
            Text::Spm(t) => t.token_id(text),
            Text::Hf(t) => t.token_to_id(text),
        }
    }

    /// The `tokenizers` tokenizer this vocabulary runs on, where it runs on
    /// one (GPT-2 BPE vocabularies, a tokenizer.json; not SentencePiece ones).
    pub fn hf(&self) -> Option<&Tokenizer> {
        match &self.text {
            Text::Hf(t) => Some(t),
            Text::Spm(_) => None,
        }
    }
}

/// The special ids and flags of `md`, with every token that ends generation.
fn specials(kind: &str, tokens: &[String], types: &[i32], md: &Metadata) -> SpecialTokens {
    let mut special = SpecialTokens::from_metadata(md, kind);
    special.end_of_generation = end_tokens(tokens, types, &special, md);
    special
}

fn end_tokens(tokens: &[String], types: &[i32], s: &SpecialTokens, md: &Metadata) -> Vec<u32> {
    let mut v: Vec<u32> = s.eos.into_iter().collect();
    if let Some(e) = md.u32("tokenizer.ggml.eot_token_id") {
        v.push(e);
    }
    // the GLM chat format hands the turn back with the next role's tag
    let glm = glm_vocab(md);
    for (i, (t, &ty)) in tokens.iter().zip(types).enumerate() {
        if ty == TYPE_CONTROL && glm && matches!(t.as_str(), "<|user|>" | "<|observation|>") {
            v.push(i as u32);
        }
        if ty == TYPE_CONTROL
            && matches!(
                t.as_str(),
                "<end_of_turn>"
                    | "<|eot_id|>"
                    | "<|im_end|>"
                    | "<|endoftext|>"
                    | "<|end|>"
                    | "</s>"
                    | "<eos>"
            )
        {
            v.push(i as u32);
        }
    }
    v.sort_unstable();
    v.dedup();
    v
}

/// GPT-2 byte-level BPE with the merges from the file.
fn build_gpt2(tokens: &[String], merges: &[String], pre: &str) -> Result<Tokenizer, LlmError> {
    let mut vocab = Vocab::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        vocab.entry(t.clone()).or_insert(i as u32);
    }
    let merges: Vec<(String, String)> = merges
        .iter()
        .filter_map(|m| {
            let (a, b) = m.split_once(' ')?;
            Some((a.to_string(), b.to_string()))
        })
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(pre.starts_with("llama") || matches!(pre, "glm4" | "glm5"))
        .build()
        .map_err(tok_err)?;
    let mut tk = Tokenizer::new(bpe);
    let split = Split::new(
        SplitPattern::Regex(pre_tokenizer_regex(pre).to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(tok_err)?;
    let bl = ByteLevel::new(false, false, false);
    tk.with_pre_tokenizer(Some(PreSequence::new(vec![split.into(), bl.into()])));
    tk.with_decoder(Some(ByteLevelDecoder::new(false, false, false)));
    Ok(tk)
}
