//! What a sentence-transformers model directory says about itself beside its
//! weights: the languages of its card (README.md), its pooling
//! (1_Pooling), its longest input (sentence_bert_config.json) and its query
//! and passage prompts (config_sentence_transformers.json).

use std::path::Path;

use magpie_core::LanguageSupport;

use crate::encoder::Pooling;

/// Text put before queries and passages, as a model card asks (e5:
/// `query: ` and `passage: `).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prompts {
    /// Before each query.
    pub query: String,
    /// Before each passage (indexed text).
    pub passage: String,
}

impl Prompts {
    /// From `config_sentence_transformers.json`'s `prompts` (`query`, and
    /// `passage` or `document`); without them, e5 models (named `*e5*`) get
    /// the prefixes their cards ask for.
    pub fn of(dir: &Path, model_id: &str) -> Self {
        let raw = std::fs::read(dir.join("config_sentence_transformers.json")).ok();
        let v: Option<serde_json::Value> = raw.and_then(|r| serde_json::from_slice(&r).ok());
        let get = |k: &str| {
            v.as_ref()
                .and_then(|v| v["prompts"][k].as_str())
                .map(str::to_string)
        };
        let query = get("query");
        let passage = get("passage")
            .filter(|p| !p.is_empty())
            .or_else(|| get("document"));
        if query.is_some() || passage.is_some() {
            return Self {
                query: query.unwrap_or_default(),
                passage: passage.unwrap_or_default(),
            };
        }
        let name = model_id.to_ascii_lowercase();
        if name.contains("e5-") || name.ends_with("e5") {
            return Self {
                query: "query: ".into(),
                passage: "passage: ".into(),
            };
        }
        Self::default()
    }
}

/// The languages a model card (README.md's YAML front matter) declares:
/// `language: en`, `language: [en, zh]`, or a `- xx` list under
/// `language:`; a `multilingual` tag counts too.
pub fn card_languages(dir: &Path) -> LanguageSupport {
    let Ok(readme) = std::fs::read_to_string(dir.join("README.md")) else {
        return LanguageSupport::Unknown;
    };
    parse_card_languages(&readme)
}

fn parse_card_languages(readme: &str) -> LanguageSupport {
    let mut lines = readme.lines();
    if lines.next().map(str::trim) != Some("---") {
        return LanguageSupport::Unknown;
    }
    let mut codes: Vec<String> = Vec::new();
    let mut key = String::new();
    for line in lines {
        if line.trim() == "---" {
            break;
        }
        if !line.starts_with([' ', '-', '\t']) {
            let (k, v) = line.split_once(':').unwrap_or((line, ""));
            key = k.trim().to_string();
            let v = v.trim().trim_start_matches('[').trim_end_matches(']');
            if key == "language" {
                codes.extend(
                    v.split(',')
                        .map(|c| c.trim().trim_matches(['"', '\'']).to_string())
                        .filter(|c| !c.is_empty()),
                );
            }
        } else if let Some(item) = line.trim().strip_prefix("- ") {
            let item = item.trim().trim_matches(['"', '\'']);
            if key == "language" || (key == "tags" && item == "multilingual") {
                codes.push(item.to_string());
            }
        }
    }
    LanguageSupport::from_card(&codes)
}

/// sentence-transformers' pooling setting (1_Pooling/config.json): the CLS
/// token for bge-style models, else the mean.
pub(crate) fn pooling_of(dir: &Path) -> Pooling {
    let raw = std::fs::read(dir.join("1_Pooling/config.json")).ok();
    let v: Option<serde_json::Value> = raw.and_then(|r| serde_json::from_slice(&r).ok());
    match v {
        Some(v) if v["pooling_mode_cls_token"].as_bool() == Some(true) => Pooling::Cls,
        _ => Pooling::Mean,
    }
}

/// The model's longest input in tokens (`max_seq_length`), if it says.
pub(crate) fn sentence_bert_max_len(dir: &Path) -> Option<usize> {
    let raw = std::fs::read(dir.join("sentence_bert_config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    v["max_seq_length"].as_u64().map(|n| n as usize)
}

#[cfg(test)]
mod tests {
    use super::parse_card_languages;
    use magpie_core::LanguageSupport;

    #[test]
    fn model_cards_declare_languages() {
        let only = |c: &[&str]| LanguageSupport::Only(c.iter().map(|s| s.to_string()).collect());
        assert_eq!(
            parse_card_languages("---\nlanguage: en\nlicense: apache-2.0\n---\n# x"),
            only(&["eng"])
        );
        assert_eq!(
            parse_card_languages("---\nlicense: mit\nlanguage:\n- zh\n- en\ntags:\n- x\n---"),
            only(&["cmn", "eng"])
        );
        assert_eq!(
            parse_card_languages("---\nlanguage: [\"de\", 'fr']\n---"),
            only(&["deu", "fra"])
        );
        assert_eq!(
            parse_card_languages("---\ntags:\n  - multilingual\n---"),
            LanguageSupport::Multilingual
        );
        assert_eq!(
            parse_card_languages("---\nlanguage:\n- multilingual\n- af\n---"),
            LanguageSupport::Multilingual
        );
        assert_eq!(
            parse_card_languages("# no front matter\nlanguage: en"),
            LanguageSupport::Unknown
        );
        assert_eq!(parse_card_languages(""), LanguageSupport::Unknown);
    }
}
