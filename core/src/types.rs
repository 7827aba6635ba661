//! Plain data types that flow through magpie's pipelines.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Free-form metadata attached to documents and chunks (title, author, tags, ...).
pub type Metadata = BTreeMap<String, serde_json::Value>;

/// A loaded source document, before splitting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    /// Stable identifier: the same source always gets the same id.
    pub id: String,
    /// Where the document came from (a path relative to the indexed root, or a URL).
    pub uri: String,
    /// Extracted text; chunk spans are byte offsets into this text.
    pub text: String,
    /// MIME type of the source ("text/markdown", "text/html", "text/x-rust", ...).
    pub mime: String,
    /// Title and other metadata.
    pub metadata: Metadata,
    /// Structural sections (e.g. Markdown headings) found while parsing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sections: Vec<Section>,
    /// Hex digest of the source content; an unchanged document is never re-embedded.
    pub content_hash: String,
    /// Byte offsets where each page starts (page 1 first), for paged sources
    /// such as PDF; empty when the source has no pages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pages: Vec<usize>,
}

impl Document {
    /// A document from plain text, with its id derived from `uri` and its hash from `text`.
    pub fn from_text(uri: impl Into<String>, text: impl Into<String>) -> Self {
        let uri = uri.into();
        let text = text.into();
        Document {
            id: doc_id_for(&uri),
            content_hash: content_hash(text.as_bytes()),
            uri,
            text,
            mime: "text/plain".into(),
            metadata: Metadata::new(),
            sections: Vec::new(),
            pages: Vec::new(),
        }
    }

    /// The 1-based page holding byte `offset`, for paged documents.
    pub fn page_of(&self, offset: usize) -> Option<u32> {
        if self.pages.is_empty() {
            return None;
        }
        Some(self.pages.partition_point(|&start| start <= offset).max(1) as u32)
    }

    /// The document's title, when its metadata has one.
    pub fn title(&self) -> Option<&str> {
        self.metadata.get("title").and_then(|v| v.as_str())
    }
}

/// A byte range of a document's text under one heading path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    /// Headings from the outermost to the innermost (e.g. `["Install", "Linux"]`).
    pub heading_path: Vec<String>,
    /// Byte offset where the section's body starts.
    pub start: usize,
    /// Byte offset one past the section's end.
    pub end: usize,
}

/// Where a chunk lies in its document: bytes (half-open) and lines (1-based, inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Span {
    /// First byte of the chunk in the document text.
    pub byte_start: usize,
    /// One past the last byte.
    pub byte_end: usize,
    /// Line of the first byte (1-based).
    pub line_start: usize,
    /// Line of the last byte (1-based).
    pub line_end: usize,
    /// Page of the first byte (1-based), for paged sources (PDF).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_start: Option<u32>,
    /// Page of the last byte (1-based), for paged sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_end: Option<u32>,
}

impl Span {
    /// How a citation names the place after its source: ` p. 7`, ` pp. 7-8`, or `:12-30` (lines).
    pub fn cite_suffix(&self) -> String {
        match self.page_start {
            Some(_) => format!(" {}", self.location()),
            None => format!(":{}-{}", self.line_start, self.line_end),
        }
    }

    /// Where the span is, for a citation: `p. 7`, `pp. 7-8`, or `lines 12-30`.
    pub fn location(&self) -> String {
        match (self.page_start, self.page_end) {
            (Some(a), Some(b)) if a != b => format!("pp. {a}-{b}"),
            (Some(a), _) => format!("p. {a}"),
            _ => format!("lines {}-{}", self.line_start, self.line_end),
        }
    }
}

/// A piece of a document small enough to embed and to cite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    /// Deterministic id derived from the document id, its content hash and the chunk's position.
    pub id: String,
    /// The document this chunk belongs to.
    pub doc_id: String,
    /// Content hash of the document version this chunk was cut from.
    pub doc_hash: String,
    /// Source of the document (path or URL), for citations.
    pub source: String,
    /// Position of the chunk in its document (0-based).
    pub index: usize,
    /// The chunk's text, exactly as it appears in the document.
    pub text: String,
    /// Where the text lies in the document.
    pub span: Span,
    /// Headings the chunk sits under.
    #[serde(default)]
    pub heading_path: Vec<String>,
    /// Document title (if any), copied so every chunk can be understood alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Document metadata carried to the chunk.
    #[serde(default)]
    pub metadata: Metadata,
}

impl Chunk {
    /// The text given to the embedder: title and headings first, then the chunk.
    pub fn embedding_text(&self) -> String {
        let mut header: Vec<&str> = Vec::new();
        if let Some(t) = self.title.as_deref() {
            if !t.is_empty() {
                header.push(t);
            }
        }
        for h in &self.heading_path {
            if Some(h.as_str()) != self.title.as_deref() {
                header.push(h);
            }
        }
        if header.is_empty() {
            self.text.clone()
        } else {
            format!("{}\n{}", header.join(" > "), self.text)
        }
    }
}

/// A retrieved chunk with its score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    /// The chunk that matched.
    pub chunk: Chunk,
    /// Score from the retriever that produced it (higher is better; scales differ by retriever).
    pub score: f32,
    /// A short passage with the matching terms marked by `«` and `»`, when the retriever makes one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snippet: Option<String>,
}

/// A hit on a chunk `id` holding `text` (document `d{id}`, source `{id}.md`,
/// score 1), for unit tests.
#[cfg(test)]
pub(crate) fn test_hit(id: &str, text: &str) -> Hit {
    Hit {
        chunk: Chunk {
            id: id.into(),
            doc_id: format!("d{id}"),
            doc_hash: "h".into(),
            source: format!("{id}.md"),
            index: 0,
            text: text.into(),
            span: Span::default(),
            heading_path: vec![],
            title: None,
            metadata: Default::default(),
        },
        score: 1.0,
        snippet: None,
    }
}

/// Stable document id for a source uri.
pub fn doc_id_for(uri: &str) -> String {
    let h = blake3::hash(uri.as_bytes());
    h.to_hex()[..32].to_string()
}

/// Hex digest used as a document's content hash.
pub fn content_hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Deterministic chunk id: the same document version always yields the same ids,
/// so a re-run after a crash overwrites instead of duplicating.
pub fn chunk_id_for(doc_id: &str, doc_hash: &str, index: usize) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(doc_id.as_bytes());
    hasher.update(b"\0");
    hasher.update(doc_hash.as_bytes());
    hasher.update(b"\0");
    hasher.update(&(index as u64).to_le_bytes());
    let bytes = hasher.finalize();
    uuid_string(&bytes.as_bytes()[..16])
}

/// Format 16 bytes as an RFC 4122 version-8 UUID string (valid as a Qdrant point id).
fn uuid_string(b: &[u8]) -> String {
    let mut x = [0u8; 16];
    x.copy_from_slice(b);
    x[6] = (x[6] & 0x0f) | 0x80;
    x[8] = (x[8] & 0x3f) | 0x80;
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], x[8], x[9], x[10], x[11], x[12], x[13], x[14], x[15]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_ids_are_deterministic_and_distinct() {
        let a = chunk_id_for("d", "h", 0);
        assert_eq!(a, chunk_id_for("d", "h", 0));
        assert_ne!(a, chunk_id_for("d", "h", 1));
        assert_ne!(a, chunk_id_for("d", "h2", 0));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "8", "version nibble");
    }

    #[test]
    fn embedding_text_prefixes_title_and_headings() {
        let c = Chunk {
            id: "x".into(),
            doc_id: "d".into(),
            doc_hash: "h".into(),
            source: "a.md".into(),
            index: 0,
            text: "body".into(),
            span: Span::default(),
            heading_path: vec!["Guide".into(), "Install".into()],
            title: Some("Guide".into()),
            metadata: Metadata::new(),
        };
        assert_eq!(c.embedding_text(), "Guide > Install\nbody");
    }
}
