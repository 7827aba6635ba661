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
    // Measured on the raw bytes, before lopdf loads (and so inflates object
    // streams): every stream, every filter layer, within one budget.
    check_raw_streams(bytes)?;
    let doc = lopdf::Document::load_mem(bytes).map_err(|e| {
        let e = e.to_string();
        if e.to_lowercase().contains("decrypt") || e.to_lowercase().contains("password") {
            format!("encrypted PDF ({e}): remove the password to index it")
        } else {
            format!("damaged or truncated PDF: {e}")
        }
    })?;
    let encrypted = doc.is_encrypted();
    // The raw scan saw encrypted streams as noise: measure them decrypted.
    if encrypted {
        check_inflated_size(&doc)?;
    }
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

/// Refuse an encrypted PDF whose streams, as loaded (decrypted), inflate past
/// [`MAX_INFLATED`] all together, every Flate layer decoded within the budget.
fn check_inflated_size(doc: &lopdf::Document) -> Result<(), String> {
    let mut budget = Budget::new();
    for obj in doc.objects.values() {
        let lopdf::Object::Stream(stream) = obj else {
            continue;
        };
        let filters: Vec<Vec<u8>> = match stream.dict.get(b"Filter") {
            Ok(lopdf::Object::Name(n)) => vec![n.clone()],
            Ok(lopdf::Object::Array(a)) => a
                .iter()
                .filter_map(|f| match f {
                    lopdf::Object::Name(n) => Some(n.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        budget.decode(&stream.content, &filters)?;
    }
    Ok(())
}

/// The inflated bytes one PDF may still produce.
struct Budget {
    left: u64,
}

impl Budget {
    fn new() -> Self {
        Self { left: MAX_INFLATED }
    }

    fn refuse() -> String {
        format!(
            "its compressed streams inflate to more than {} MiB: refused as a likely \
             decompression bomb",
            MAX_INFLATED >> 20
        )
    }

    /// Decode `data` through its leading Flate layers, charging what each layer
    /// produces. Layers other than Flate end the measurement (their output is
    /// charged at the size of their input). Damaged data counts what it gave.
    fn decode(&mut self, data: &[u8], filters: &[Vec<u8>]) -> Result<(), String> {
        let flate = filters
            .iter()
            .take_while(|f| f.as_slice() == b"FlateDecode" || f.as_slice() == b"Fl")
            .count();
        if flate == 0 {
            return self.charge(data.len() as u64);
        }
        let mut current: Vec<u8> = Vec::new();
        for layer in 0..flate {
            let input: &[u8] = if layer == 0 { data } else { &current };
            let mut dec = flate2::read::ZlibDecoder::new(input);
            if layer + 1 == flate {
                // The last layer: counted, not kept.
                let mut sink = [0u8; 64 << 10];
                loop {
                    match dec.read(&mut sink) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => self.charge(n as u64)?,
                    }
                }
            } else {
                let mut out = Vec::new();
                let _ = (&mut dec).take(self.left + 1).read_to_end(&mut out);
                self.charge(out.len() as u64)?;
                current = out;
            }
        }
        Ok(())
    }

    fn charge(&mut self, n: u64) -> Result<(), String> {
        if n > self.left {
            return Err(Self::refuse());
        }
        self.left -= n;
        Ok(())
    }
}

/// Measure every stream in the file's raw bytes (`<< … >> stream … endstream`),
/// object streams included, before any parser inflates them.
fn check_raw_streams(bytes: &[u8]) -> Result<(), String> {
    let mut budget = Budget::new();
    let mut pos = 0;
    while let Some(k) = find(bytes, pos, b"stream") {
        let after = k + b"stream".len();
        pos = after;
        if k >= 3 && &bytes[k - 3..k] == b"end" {
            continue;
        }
        let data_start = match bytes.get(after..after + 2) {
            Some(b"\r\n") => after + 2,
            Some([b'\n', ..]) | Some([b'\r', ..]) => after + 1,
            _ => continue,
        };
        let Some(dict) = dict_before(bytes, k) else {
            continue;
        };
        let by_length = direct_length(dict)
            .and_then(|n| data_start.checked_add(n))
            .filter(|&e| e <= bytes.len());
        let data_end = by_length
            .or_else(|| find(bytes, data_start, b"endstream"))
            .unwrap_or(bytes.len());
        budget.decode(&bytes[data_start..data_end], &filters_of(dict))?;
        // Scanning goes on inside the data: a lying /Length hides no stream.
        pos = data_start;
    }
    Ok(())
}

fn find(hay: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// The dictionary (`<< … >>`, nesting respected) that ends just before `at`.
fn dict_before(bytes: &[u8], at: usize) -> Option<&[u8]> {
    let mut end = at;
    while end > 0 && bytes[end - 1].is_ascii_whitespace() {
        end -= 1;
    }
    if end < 2 || &bytes[end - 2..end] != b">>" {
        return None;
    }
    let floor = end.saturating_sub(1 << 16);
    let mut depth = 0usize;
    let mut i = end;
    while i >= floor + 2 {
        match &bytes[i - 2..i] {
            b">>" => {
                depth += 1;
                i -= 2;
            }
            b"<<" => {
                depth -= 1;
                i -= 2;
                if depth == 0 {
                    return Some(&bytes[i..end]);
                }
            }
            _ => i -= 1,
        }
    }
    None
}

/// The value of `/Length` when it is a direct integer.
fn direct_length(dict: &[u8]) -> Option<usize> {
    let at = find_key(dict, b"/Length")?;
    let rest = &dict[at..];
    let rest = &rest[rest.iter().take_while(|b| b.is_ascii_whitespace()).count()..];
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    // `5 0 R` is a reference, not a length.
    let tail = &rest[digits..];
    let tail = &tail[tail.iter().take_while(|b| b.is_ascii_whitespace()).count()..];
    if tail.first().is_some_and(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// The filter names of a stream dictionary, in order (a name or an array of names).
fn filters_of(dict: &[u8]) -> Vec<Vec<u8>> {
    let Some(at) = find_key(dict, b"/Filter") else {
        return Vec::new();
    };
    let rest = &dict[at..];
    let rest = &rest[rest.iter().take_while(|b| b.is_ascii_whitespace()).count()..];
    let names_in = |s: &[u8]| -> Vec<Vec<u8>> {
        s.split(|b| *b == b'/')
            .skip(1)
            .map(|n| {
                n.iter()
                    .take_while(|b| b.is_ascii_alphanumeric())
                    .copied()
                    .collect::<Vec<u8>>()
            })
            .filter(|n| !n.is_empty())
            .collect()
    };
    match rest.first() {
        Some(b'[') => {
            let close = rest.iter().position(|b| *b == b']').unwrap_or(rest.len());
            names_in(&rest[1..close])
        }
        Some(b'/') => names_in(rest).into_iter().take(1).collect(),
        // An indirect filter: assume Flate, so a hidden bomb is still measured.
        _ => vec![b"FlateDecode".to_vec()],
    }
}

/// Where the value of `key` starts (the key followed by a delimiter).
fn find_key(dict: &[u8], key: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(p) = find(dict, from, key) {
        let end = p + key.len();
        if dict.get(end).is_none_or(|b| !b.is_ascii_alphanumeric()) {
            return Some(end);
        }
        from = end;
    }
    None
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
    fn raw_stream_dictionaries_are_read() {
        let pdf = b"1 0 obj\n<< /Length 5 /Filter [/FlateDecode /FlateDecode] /D << /X 1 >> >>\nstream\nabcde\nendstream";
        let k = super::find(pdf, 0, b"stream").unwrap();
        let dict = super::dict_before(pdf, k).unwrap();
        assert!(dict.starts_with(b"<<") && dict.ends_with(b">>"));
        assert_eq!(super::direct_length(dict), Some(5));
        assert_eq!(
            super::filters_of(dict),
            vec![b"FlateDecode".to_vec(), b"FlateDecode".to_vec()]
        );
        assert_eq!(super::direct_length(b"<< /Length 7 0 R >>"), None);
        assert_eq!(
            super::filters_of(b"<< /Filter /Fl >>"),
            vec![b"Fl".to_vec()]
        );
        assert!(super::filters_of(b"<< /Length 3 >>").is_empty());
    }

    #[test]
    fn nested_flate_layers_are_measured_within_the_budget() {
        use std::io::Write;
        let deflate = |data: &[u8]| {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        };
        let mut one = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        let block = vec![0u8; 1 << 20];
        for _ in 0..300 {
            one.write_all(&block).unwrap();
        }
        let two = deflate(&one.finish().unwrap());
        assert!(two.len() < 4096, "{}", two.len());
        let mut b = super::Budget::new();
        let flate = b"FlateDecode".to_vec();
        // One layer of the twice-deflated data looks harmless ...
        assert!(b.decode(&two, std::slice::from_ref(&flate)).is_ok());
        // ... both layers are not.
        let e = super::Budget::new()
            .decode(&two, &[flate.clone(), flate])
            .unwrap_err();
        assert!(e.contains("decompression bomb"), "{e}");
    }

    #[test]
    fn not_a_pdf() {
        assert!(super::pdf(b"hello").unwrap_err().contains("not a PDF"));
    }
}
