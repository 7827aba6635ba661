//! PDF text extraction: the text of each page (pdf-extract on lopdf), pages as
//! sections so no chunk straddles two pages, and the page offsets that give
//! chunks their page numbers. Scanned (image-only), encrypted, truncated and
//! malformed files get a clear per-file error; compressed streams are measured
//! before extraction so a decompression bomb is refused, not inflated.

use std::io::Read;

use magpie_core::Section;

/// Most bytes the compressed streams of one PDF may inflate to, all together.
pub const MAX_INFLATED: u64 = 256 << 20;

/// A PDF's text by page.
#[derive(Debug, Clone)]
pub struct PdfText {
    /// The pages' text, separated by blank lines.
    pub text: String,
    /// Byte offset where each page starts.
    pub pages: Vec<usize>,
    /// One section per page (empty heading path), so chunks stay within a page.
    pub sections: Vec<Section>,
    /// The document's title from its metadata, when it has one.
    pub title: Option<String>,
}

/// Extract a PDF's text by page.
pub fn pdf(bytes: &[u8]) -> Result<PdfText, String> {
    // The header may follow up to 1 KiB of junk, as readers allow.
    if !bytes.windows(5).take(1024).any(|w| w == b"%PDF-") {
        return Err("not a PDF (no %PDF- header)".into());
    }
    let doc = lopdf::Document::load_mem(bytes).map_err(|e| {
        let e = e.to_string();
        if e.to_lowercase().contains("decrypt") || e.to_lowercase().contains("password") {
            format!("encrypted PDF ({e}): remove the password to index it")
        } else {
            format!("damaged or truncated PDF: {e}")
        }
    })?;
    check_inflated_size(&doc)?;
    let encrypted = doc.is_encrypted();
    let title = info_title(&doc);
    let page_count = doc.get_pages().len();
    drop(doc);
    let pages = std::panic::catch_unwind(|| pdf_extract::extract_text_from_mem_by_pages(bytes))
        .map_err(|_| {
            "the PDF could not be read (the extractor failed on its structure)".to_string()
        })?
        .map_err(|e| {
            if encrypted {
                format!("encrypted PDF: remove the password to index it ({e})")
            } else {
                format!("cannot extract text from this PDF: {e}")
            }
        })?;
    if pages.iter().all(|p| p.trim().is_empty()) {
        return Err(format!(
            "no text layer in {page_count} page(s): a scanned (image-only) PDF; run OCR on it \
             (e.g. ocrmypdf) and index the result"
        ));
    }
    let mut text = String::new();
    let mut starts = Vec::with_capacity(pages.len());
    let mut sections = Vec::with_capacity(pages.len());
    for p in &pages {
        let body = tidy(p);
        if !text.is_empty() {
            text.push_str("\n\n");
        }
        let start = text.len();
        starts.push(start);
        text.push_str(&body);
        sections.push(Section {
            heading_path: Vec::new(),
            start,
            end: text.len(),
        });
    }
    Ok(PdfText {
        text,
        pages: starts,
        sections,
        title,
    })
}

/// Lines trimmed, runs of blank lines folded to one.
fn tidy(page: &str) -> String {
    let mut out = String::new();
    let mut blank = 0;
    for line in page.lines() {
        let l = line.trim_end();
        if l.trim().is_empty() {
            blank += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank > 0 { "\n\n" } else { "\n" });
        }
        blank = 0;
        out.push_str(l.trim_start_matches('\u{c}'));
    }
    out
}

/// Refuse a PDF whose Flate streams inflate past [`MAX_INFLATED`], counting
/// without keeping the output.
fn check_inflated_size(doc: &lopdf::Document) -> Result<(), String> {
    let mut total: u64 = 0;
    let mut sink = [0u8; 64 << 10];
    for obj in doc.objects.values() {
        let lopdf::Object::Stream(stream) = obj else {
            continue;
        };
        let flate = match stream.dict.get(b"Filter") {
            Ok(lopdf::Object::Name(n)) => n == b"FlateDecode",
            Ok(lopdf::Object::Array(a)) => a
                .iter()
                .any(|f| matches!(f, lopdf::Object::Name(n) if n == b"FlateDecode")),
            _ => false,
        };
        if !flate {
            total += stream.content.len() as u64;
            continue;
        }
        let mut dec = flate2::read::ZlibDecoder::new(stream.content.as_slice());
        loop {
            match dec.read(&mut sink) {
                Ok(0) => break,
                Ok(n) => {
                    total += n as u64;
                    if total > MAX_INFLATED {
                        return Err(format!(
                            "its compressed streams inflate to more than {} MiB: refused as a \
                             likely decompression bomb",
                            MAX_INFLATED >> 20
                        ));
                    }
                }
                // A damaged stream is the extractor's to report (it may skip it).
                Err(_) => break,
            }
        }
    }
    Ok(())
}

fn info_title(doc: &lopdf::Document) -> Option<String> {
    let info = doc.trailer.get(b"Info").ok()?;
    let dict = match info {
        lopdf::Object::Reference(id) => doc.get_dictionary(*id).ok()?,
        lopdf::Object::Dictionary(d) => d,
        _ => return None,
    };
    let lopdf::Object::String(raw, _) = dict.get(b"Title").ok()? else {
        return None;
    };
    let title = if raw.starts_with(&[0xFE, 0xFF]) {
        let units: Vec<u16> = raw[2..]
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16_lossy(&units)
    } else {
        raw.iter().map(|&b| b as char).collect()
    };
    let title = title.trim().to_string();
    (!title.is_empty()).then_some(title)
}

#[cfg(test)]
mod tests {
    #[test]
    fn tidy_folds_blank_lines() {
        assert_eq!(super::tidy("a  \n\n\n b\nc\n\n"), "a\n\n b\nc");
    }

    #[test]
    fn not_a_pdf() {
        assert!(super::pdf(b"hello").unwrap_err().contains("not a PDF"));
    }
}
