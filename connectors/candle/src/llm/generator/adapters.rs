//! LoRA adapters on a [`LocalLlm`]: loaded by name on its one base, listed,
//! dropped, and resolved for a call (see `lora.rs` for the format and the
//! arithmetic).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use magpie_core::AdapterChoice;

use super::super::lora::{set_key, AdapterSummary, LoraAdapter};
use super::super::model::Transformer;
use super::super::LlmError;
use super::{Inner, LocalLlm};

impl LocalLlm {
    /// [`LocalLlm::logits`] with the adapters `adapters` applied.
    pub fn logits_with(
        &self,
        tokens: &[u32],
        adapters: &[AdapterChoice],
    ) -> Result<Vec<f32>, LlmError> {
        let loras = self.inner.resolve(adapters)?;
        let mut st = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        st.cache.truncate(0);
        st.tokens.clear();
        st.shifted = false;
        st.adapters = set_key(&loras);
        let last =
            self.inner
                .model
                .prefill_with(tokens, &mut st.cache, self.inner.batch, &loras)?;
        st.tokens.extend_from_slice(tokens);
        Transformer::to_vec(&last)
    }

    /// Load the LoRA adapter at `path` under `name` (replacing one of that
    /// name), checked against this base: a mismatched or broken file is an
    /// error and leaves the adapters already loaded as they were.
    pub fn load_adapter(&self, name: &str, path: &Path) -> Result<AdapterSummary, LlmError> {
        let name = name.trim();
        magpie_core::check_adapter_name(name).map_err(invalid)?;
        let t0 = Instant::now();
        let ad = self.inner.model.load_adapter(name, path)?;
        let summary = ad.summary();
        tracing::info!(
            name,
            path = %path.display(),
            ranks = ?summary.ranks,
            tensors = summary.tensors,
            ms = t0.elapsed().as_millis() as u64,
            "LoRA adapter loaded"
        );
        self.inner
            .adapters
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), Arc::new(ad));
        Ok(summary)
    }

    /// Drop the adapter `name`; whether there was one.
    pub fn unload_adapter(&self, name: &str) -> bool {
        self.inner
            .adapters
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
            .is_some()
    }

    /// The adapters `choices` names, with their scales, as a call applies
    /// them (to drive [`Transformer::prefill_with`] and
    /// [`Transformer::forward_with`] directly); an unknown name is an error.
    pub fn resolve_adapters(
        &self,
        choices: &[AdapterChoice],
    ) -> Result<Vec<(Arc<LoraAdapter>, f32)>, LlmError> {
        self.inner.resolve(choices)
    }

    /// The adapters loaded, by name.
    pub fn adapters(&self) -> Vec<AdapterSummary> {
        self.inner
            .adapters
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|a| a.summary())
            .collect()
    }
}

impl Inner {
    /// The loaded adapters `choices` name, or an error naming what is loaded.
    pub(super) fn resolve(
        &self,
        choices: &[AdapterChoice],
    ) -> Result<Vec<(Arc<LoraAdapter>, f32)>, LlmError> {
        if choices.is_empty() {
            return Ok(Vec::new());
        }
        let map = self.adapters.read().unwrap_or_else(|p| p.into_inner());
        let loaded: Vec<String> = map.keys().cloned().collect();
        magpie_core::check_choices(choices, &loaded, |n| {
            format!("load it with --lora {n}=PATH")
        })
        .map_err(invalid)?;
        Ok(choices
            .iter()
            .filter_map(|c| map.get(c.name.trim()).map(|a| (a.clone(), c.scale)))
            .collect())
    }
}

/// A core input error as the runtime's (its message without the prefix).
fn invalid(e: magpie_core::Error) -> LlmError {
    match e {
        magpie_core::Error::InvalidInput(m) => LlmError::InvalidInput(m),
        other => LlmError::InvalidInput(other.to_string()),
    }
}
