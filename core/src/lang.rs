//! Which language a text is in, and which languages an embedding model covers.
//!
//! Detection is whatlang's (trigrams within a script); codes are ISO 639-3
//! (`eng`, `cmn`, `jpn`). Model cards name languages in ISO 639-1 (`en`,
//! `zh`): [`iso639_3`] maps the common ones.

use serde::{Deserialize, Serialize};

/// What an embedding model says about the languages it was trained on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LanguageSupport {
    /// Nothing declared (no model card): every language is assumed covered,
    /// and the per-query evidence decides.
    #[default]
    Unknown,
    /// Trained on many languages (a card with `multilingual`, or many codes).
    Multilingual,
    /// Only these languages (ISO 639-3 codes).
    Only(Vec<String>),
}

impl LanguageSupport {
    /// From a model card's `language:` entries, in ISO 639-1 or 639-3
    /// (`["en"]`, `["multilingual"]`, `["en", "zh"]`). Codes not recognised
    /// are dropped; nothing recognised gives [`LanguageSupport::Unknown`].
    pub fn from_card<S: AsRef<str>>(codes: &[S]) -> Self {
        let mut out: Vec<String> = Vec::new();
        for c in codes {
            let c = c.as_ref().trim().to_ascii_lowercase();
            if c == "multilingual" || c == "mul" {
                return LanguageSupport::Multilingual;
            }
            if let Some(code) = iso639_3(&c) {
                if !out.iter().any(|x| x == code) {
                    out.push(code.to_string());
                }
            }
        }
        // A card listing a dozen languages is a multilingual model.
        match out.len() {
            0 => LanguageSupport::Unknown,
            n if n >= 12 => LanguageSupport::Multilingual,
            _ => LanguageSupport::Only(out),
        }
    }

    /// How far the model can be trusted on text detected as `d`, 0 to 1, and
    /// why. Declared languages count fully; a language the model does not
    /// declare in a script none of its languages use counts 0 (an English model
    /// reading Chinese); an undeclared language in a declared script counts
    /// half when the detection is reliable (an English model reading French).
    pub fn coverage(&self, d: Option<&Detected>) -> (f32, String) {
        let langs = match self {
            LanguageSupport::Unknown => return (1.0, "model languages not declared".into()),
            LanguageSupport::Multilingual => return (1.0, "multilingual model".into()),
            LanguageSupport::Only(l) => l,
        };
        let Some(d) = d else {
            return (1.0, "language not detected".into());
        };
        let declared = langs.join(",");
        if langs.contains(&d.lang) {
            return (1.0, format!("{} is among the model's languages", d.lang));
        }
        if !langs
            .iter()
            .any(|l| script_of(l).contains(&d.script.as_str()))
        {
            return (
                0.0,
                format!(
                    "the model covers {declared}; the text is {} in {} script",
                    d.lang, d.script
                ),
            );
        }
        if d.reliable {
            (
                0.5,
                format!("the model covers {declared}; the text reads as {}", d.lang),
            )
        } else {
            (
                1.0,
                format!("{} script, language unsure ({})", d.script, d.lang),
            )
        }
    }
}

/// A detected language.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detected {
    /// ISO 639-3 code (`eng`, `cmn`).
    pub lang: String,
    /// Script name (`Latin`, `Mandarin` for Han, `Hangul`, `Cyrillic`).
    pub script: String,
    /// whatlang's confidence, 0 to 1.
    pub confidence: f32,
    /// Whether whatlang considers the detection reliable.
    pub reliable: bool,
}

/// The language of `text` (None for text without letters).
pub fn detect(text: &str) -> Option<Detected> {
    // Detection reads at most the first 2 KiB: a chunk's language is settled
    // well before, and the cost stays bounded.
    let mut end = text.len().min(2048);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let info = whatlang::detect(&text[..end])?;
    Some(Detected {
        lang: info.lang().code().to_string(),
        script: format!("{:?}", info.script()),
        confidence: info.confidence() as f32,
        reliable: info.is_reliable(),
    })
}

/// ISO 639-3 code for a 639-1 (or already 639-3) code, for the languages
/// model cards commonly name.
pub fn iso639_3(code: &str) -> Option<&'static str> {
    const MAP: &[(&str, &str)] = &[
        ("en", "eng"),
        ("zh", "cmn"),
        ("ja", "jpn"),
        ("ko", "kor"),
        ("de", "deu"),
        ("fr", "fra"),
        ("es", "spa"),
        ("pt", "por"),
        ("it", "ita"),
        ("nl", "nld"),
        ("ru", "rus"),
        ("uk", "ukr"),
        ("pl", "pol"),
        ("cs", "ces"),
        ("sv", "swe"),
        ("da", "dan"),
        ("fi", "fin"),
        ("no", "nob"),
        ("nb", "nob"),
        ("tr", "tur"),
        ("ar", "arb"),
        ("fa", "pes"),
        ("he", "heb"),
        ("hi", "hin"),
        ("bn", "ben"),
        ("ta", "tam"),
        ("th", "tha"),
        ("vi", "vie"),
        ("id", "ind"),
        ("el", "ell"),
        ("hu", "hun"),
        ("ro", "ron"),
        ("bg", "bul"),
    ];
    let code = code.trim().to_ascii_lowercase();
    if let Some((_, three)) = MAP.iter().find(|(two, _)| *two == code) {
        return Some(three);
    }
    // "zho"/"chi" and the macrolanguage codes name Chinese too.
    if matches!(code.as_str(), "zho" | "chi" | "cmn" | "yue") {
        return Some("cmn");
    }
    whatlang::Lang::from_code(code.as_str()).map(|l| l.code())
}

/// The scripts (whatlang's names) a language is written in.
fn script_of(lang: &str) -> &'static [&'static str] {
    match lang {
        "cmn" => &["Mandarin"],
        "jpn" => &["Mandarin", "Hiragana", "Katakana"],
        "kor" => &["Hangul"],
        "rus" | "ukr" | "bel" | "bul" | "srp" | "mkd" => &["Cyrillic"],
        "arb" | "pes" | "urd" => &["Arabic"],
        "hin" | "mar" | "nep" => &["Devanagari"],
        "heb" | "yid" => &["Hebrew"],
        "ell" => &["Greek"],
        "tha" => &["Thai"],
        "ben" => &["Bengali"],
        "tam" => &["Tamil"],
        "kat" => &["Georgian"],
        "hye" => &["Armenian"],
        _ => &["Latin"],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_scripts_and_languages() {
        let zh = detect("北京是中华人民共和国的首都，也是全国的政治和文化中心。").unwrap();
        assert_eq!((zh.lang.as_str(), zh.script.as_str()), ("cmn", "Mandarin"));
        let en = detect("Vitamin D deficiency is associated with an increased risk of fractures in older adults.").unwrap();
        assert_eq!((en.lang.as_str(), en.script.as_str()), ("eng", "Latin"));
        let ko = detect("서울은 대한민국의 수도이며 가장 큰 도시이다.").unwrap();
        assert_eq!(ko.script, "Hangul");
        assert!(detect("1234 ... !!!").is_none());
        // a long text is cut on a character boundary, never inside one
        let long = "中".repeat(3000);
        assert_eq!(detect(&long).unwrap().lang, "cmn");
    }

    #[test]
    fn coverage_follows_the_card() {
        let en = LanguageSupport::from_card(&["en"]);
        assert_eq!(en, LanguageSupport::Only(vec!["eng".into()]));
        let zh = detect("北京是中华人民共和国的首都，也是全国的政治和文化中心。");
        assert_eq!(en.coverage(zh.as_ref()).0, 0.0);
        let english = detect("The committee approved the budget for the new library.");
        assert_eq!(en.coverage(english.as_ref()).0, 1.0);
        let fr = detect("Les enfants jouent dans le jardin pendant que leurs parents préparent le repas du soir avec les légumes frais du marché. Nous sommes très heureux de vous accueillir chez nous.");
        assert_eq!(en.coverage(fr.as_ref()).0, 0.5);
        assert_eq!(
            LanguageSupport::from_card(&["multilingual"]),
            LanguageSupport::Multilingual
        );
        assert_eq!(
            LanguageSupport::from_card(&["zh", "en"])
                .coverage(zh.as_ref())
                .0,
            1.0
        );
        assert_eq!(
            LanguageSupport::from_card(&["xx-unknown"]),
            LanguageSupport::Unknown
        );
        assert_eq!(LanguageSupport::Unknown.coverage(zh.as_ref()).0, 1.0);
    }
}
