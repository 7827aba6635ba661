//! LoRA adapters as calls name them: [`AdapterChoice`] (a name and a scale,
//! in [`GenerationOptions::adapters`]), how an OpenAI-API model name picks
//! them (`BASE+NAME[:SCALE]`), and [`WithAdapters`], a generator that applies
//! a fixed set to every call naming none (a one-shot command's `--lora`).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::generate::{ChatMessage, GenerationOptions, GenerationStream, Generator, Prompt};

/// A LoRA adapter chosen for one call, by name, with its scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterChoice {
    /// The name the adapter was loaded under.
    pub name: String,
    /// How much of it to apply (1 = as trained; 0 = none).
    #[serde(default = "one")]
    pub scale: f32,
}

fn one() -> f32 {
    1.0
}

impl AdapterChoice {
    /// `name` at scale 1.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            scale: 1.0,
        }
    }

    /// Split a model name of the form `BASE+NAME[:SCALE]+…` (how OpenAI-API
    /// clients pick adapters on docqa's server, by model) into the base
    /// and the adapters it names; a name without `+` names none.
    pub fn from_model_name(model: &str) -> Result<(String, Vec<AdapterChoice>)> {
        let mut parts = model.split('+');
        let base = parts.next().unwrap_or_default().trim().to_string();
        let mut out = Vec::new();
        for p in parts {
            let p = p.trim();
            let (name, scale) = match p.rsplit_once(':') {
                Some((n, s)) => match s.trim().parse::<f32>() {
                    Ok(v) if v.is_finite() => (n.trim(), v),
                    _ => {
                        return Err(Error::InvalidInput(format!(
                            "model {model:?}: {s:?} is not an adapter scale (BASE+NAME or BASE+NAME:0.5)"
                        )))
                    }
                },
                None => (p, 1.0),
            };
            if name.is_empty() {
                return Err(Error::InvalidInput(format!(
                    "model {model:?} names an empty adapter (BASE+NAME or BASE+NAME:0.5)"
                )));
            }
            out.push(AdapterChoice {
                name: name.to_string(),
                scale,
            });
        }
        Ok((base, out))
    }
}

/// Check a name to load an adapter under: requests name sets as `a+b`
/// (models) or lists, so a name is non-empty and holds no `+` or `,`.
pub fn check_adapter_name(name: &str) -> Result<()> {
    if name.trim().is_empty() || name.contains(['+', ',']) {
        return Err(Error::InvalidInput(format!(
            "adapter name {name:?} must be non-empty and hold no '+' or ','"
        )));
    }
    Ok(())
}

/// Check that every adapter `choices` names is among `loaded`, with a scale
/// within ±100: an error that lists what is loaded and says how to load one
/// (`load_hint`, given the name, e.g. "load it with --lora law=PATH").
pub fn check_choices(
    choices: &[AdapterChoice],
    loaded: &[String],
    load_hint: impl Fn(&str) -> String,
) -> Result<()> {
    for c in choices {
        if !loaded.iter().any(|l| l == c.name.trim()) {
            return Err(Error::InvalidInput(format!(
                "no LoRA adapter named {:?} is loaded ({}); {}",
                c.name,
                if loaded.is_empty() {
                    "none are".to_string()
                } else {
                    format!("loaded: {}", loaded.join(", "))
                },
                load_hint(&c.name)
            )));
        }
        if !c.scale.is_finite() || c.scale.abs() > 100.0 {
            return Err(Error::InvalidInput(format!(
                "adapter {:?}: the scale must be a number between -100 and 100, got {}",
                c.name, c.scale
            )));
        }
    }
    Ok(())
}

/// A generator that applies `adapters` to every call that names none (calls
/// naming their own keep them): what `docqa ask --lora` hands the pipeline.
pub struct WithAdapters<G: ?Sized> {
    /// The generator the adapters are loaded on.
    pub inner: std::sync::Arc<G>,
    /// Applied to each call without adapters of its own.
    pub adapters: Vec<AdapterChoice>,
}

#[async_trait]
impl<G: Generator + ?Sized> Generator for WithAdapters<G> {
    fn model_id(&self) -> &str {
        self.inner.model_id()
    }
    fn context_length(&self) -> usize {
        self.inner.context_length()
    }
    fn count_tokens(&self, text: &str) -> Result<usize> {
        self.inner.count_tokens(text)
    }
    fn has_chat_template(&self) -> bool {
        self.inner.has_chat_template()
    }
    fn render_chat(&self, messages: &[ChatMessage]) -> Result<Option<String>> {
        self.inner.render_chat(messages)
    }
    fn adapters(&self) -> Vec<String> {
        self.inner.adapters()
    }
    async fn generate(
        &self,
        prompt: Prompt,
        mut options: GenerationOptions,
    ) -> Result<GenerationStream> {
        if options.adapters.is_empty() {
            options.adapters = self.adapters.clone();
        }
        self.inner.generate(prompt, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_pick_adapters() {
        let (base, a) = AdapterChoice::from_model_name("gemma-3-270m").unwrap();
        assert_eq!((base.as_str(), a.len()), ("gemma-3-270m", 0));
        let (base, a) = AdapterChoice::from_model_name("base+law + med:0.5").unwrap();
        assert_eq!(base, "base");
        assert_eq!(
            a,
            vec![
                AdapterChoice::new("law"),
                AdapterChoice {
                    name: "med".into(),
                    scale: 0.5
                }
            ]
        );
        for bad in ["base+", "base+a:x", "base+a:nan", "base++a"] {
            let e = AdapterChoice::from_model_name(bad).unwrap_err().to_string();
            assert!(e.contains("BASE+NAME"), "{bad}: {e}");
        }
    }

    #[test]
    fn choices_are_checked_against_what_is_loaded() {
        let loaded = vec!["law".to_string(), "med".to_string()];
        let hint = |n: &str| format!("load it with --lora {n}=PATH");
        check_choices(&[AdapterChoice::new(" law")], &loaded, hint).unwrap();
        let e = check_choices(&[AdapterChoice::new("tax")], &loaded, hint).unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("\"tax\"")
                && e.contains("loaded: law, med")
                && e.contains("--lora tax=PATH"),
            "{e}"
        );
        let e = check_choices(&[AdapterChoice::new("x")], &[], hint)
            .unwrap_err()
            .to_string();
        assert!(e.contains("none are"), "{e}");
        for scale in [f32::NAN, f32::INFINITY, 101.0] {
            let c = AdapterChoice {
                name: "med".into(),
                scale,
            };
            let e = check_choices(&[c], &loaded, hint).unwrap_err().to_string();
            assert!(e.contains("scale"), "{e}");
        }
    }
}
