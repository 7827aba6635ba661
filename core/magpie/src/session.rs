//! Named conversations kept in the index directory (`sessions/<name>.json`),
//! so a command-line user can go on asking where they left off.

use std::path::PathBuf;

use magpie_core::{ChatMessage, Role};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::layout::Layout;

/// Messages a session keeps (the oldest go first).
pub const MAX_MESSAGES: usize = 40;

/// A named conversation.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Session {
    /// Its messages, oldest first.
    pub messages: Vec<ChatMessage>,
    #[serde(skip)]
    path: PathBuf,
}

impl Session {
    /// The session `name` of the index in `layout` (empty if new). Names are
    /// letters, digits, `-` and `_`, at most 64.
    pub fn open(layout: &Layout, name: &str) -> Result<Self> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            return Err(Error::Core(magpie_core::Error::InvalidInput(format!(
                "session name {name:?}: use letters, digits, - and _ (at most 64)"
            ))));
        }
        let path = layout.sessions().join(format!("{name}.json"));
        let mut s = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice::<Session>(&b).map_err(|e| Error::Damaged {
                path: path.clone(),
                reason: format!("{e}; delete it to start the session afresh"),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Session::default(),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        s.path = path;
        Ok(s)
    }

    /// Add a question and its answer, keeping the newest [`MAX_MESSAGES`].
    pub fn push(&mut self, question: &str, answer: &str) {
        self.messages.push(ChatMessage::new(Role::User, question));
        self.messages
            .push(ChatMessage::new(Role::Assistant, answer));
        let extra = self.messages.len().saturating_sub(MAX_MESSAGES);
        self.messages.drain(..extra);
    }

    /// Write it (atomically).
    pub fn save(&self) -> Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| magpie_core::Error::stage("session", e.to_string()))?;
        magpie_core::atomic_write(&self.path, &bytes)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_keep_their_newest_turns_and_refuse_odd_names() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let mut s = Session::open(&layout, "trip-1").unwrap();
        assert!(s.messages.is_empty());
        for i in 0..30 {
            s.push(&format!("q{i}"), &format!("a{i}"));
        }
        s.save().unwrap();
        let again = Session::open(&layout, "trip-1").unwrap();
        assert_eq!(again.messages.len(), MAX_MESSAGES);
        assert_eq!(again.messages[0].content, "q10");
        assert_eq!(again.messages.last().unwrap().content, "a29");
        for bad in ["", "../x", "a b", &"x".repeat(65)] {
            assert!(Session::open(&layout, bad).is_err(), "{bad:?}");
        }
    }
}
