//! magpie-files: loaders and parsers for local documents, and the token-aware splitter.
//!
//! [`DirectoryLoader`] walks a directory (gitignore-style excludes, globs, symlink-loop
//! detection) and reads plain text, Markdown (heading sections), HTML (visible text)
//! and source code, detecting encodings and refusing binaries with a reason; Word
//! (DOCX) documents with their headings and EPUB books by chapter ([`office`]).
//! [`TokenSplitter`] cuts documents into chunks counted in the embedding model's tokens.
#![warn(missing_docs)]

pub mod decode;
pub mod loader;
pub mod office;
pub mod parse;
pub mod pdf;
pub mod split;

pub use loader::{human_bytes, DirectoryLoader, JsonlLoader, DEFAULT_MAX_FILE_SIZE};
pub use split::{TokenSplitter, WordCounter};
