//! Word (DOCX) and EPUB documents: text out of zipped XML. DOCX paragraphs come
//! out as Markdown paragraphs and its heading styles as Markdown headings, so
//! heading paths work as they do for Markdown; EPUB chapters come in spine
//! order, each chapter's headings kept as sections.

use std::io::Read;

use magpie_core::Section;
use quick_xml::events::Event;
use quick_xml::Reader;

use crate::parse::{html_to_text, markdown_sections};

/// Most bytes one document may unpack to (all its entries together); more is
/// refused as a likely decompression bomb.
pub const MAX_UNPACKED: u64 = 64 << 20;

/// Text, sections and title of a document.
pub type Extracted = (String, Vec<Section>, Option<String>);

struct Archive<'a> {
    zip: zip::ZipArchive<std::io::Cursor<&'a [u8]>>,
    budget: u64,
    kind: &'static str,
}

impl<'a> Archive<'a> {
    fn open(bytes: &'a [u8], kind: &'static str) -> Result<Self, String> {
        if bytes.starts_with(&[0xD0, 0xCF, 0x11, 0xE0]) {
            return Err(format!(
                "this is an OLE compound file, not a {kind}: an encrypted (password-protected) \
                 document or a legacy .doc; save it as an unprotected {kind} to index it"
            ));
        }
        let zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
            .map_err(|e| format!("not a valid {kind} (its ZIP container is unreadable: {e})"))?;
        Ok(Self {
            zip,
            budget: MAX_UNPACKED,
            kind,
        })
    }

    /// One entry's bytes, counted against the unpacked-size budget.
    fn read(&mut self, name: &str) -> Result<Vec<u8>, String> {
        let kind = self.kind;
        let mut entry = self
            .zip
            .by_name(name)
            .map_err(|e| format!("not a valid {kind}: {name} is missing ({e})"))?;
        if entry.encrypted() {
            return Err(format!(
                "{name} is encrypted; save the {kind} without a password"
            ));
        }
        let mut out = Vec::new();
        let read = (&mut entry)
            .take(self.budget + 1)
            .read_to_end(&mut out)
            .map_err(|e| format!("{name} is damaged: {e}"))?;
        if read as u64 > self.budget {
            return Err(format!(
                "{name} unpacks to more than {} MiB: refused as a likely decompression bomb",
                MAX_UNPACKED >> 20
            ));
        }
        self.budget -= read as u64;
        Ok(out)
    }
}

fn attr(e: &quick_xml::events::BytesStart<'_>, local: &[u8]) -> Option<String> {
    e.attributes().flatten().find_map(|a| {
        (a.key.local_name().as_ref() == local)
            .then(|| String::from_utf8_lossy(&a.value).into_owned())
    })
}

/// The heading level of a Word paragraph style: `Heading1`..`Heading9`, `Title`.
fn heading_level(style: &str) -> Option<usize> {
    let s = style.to_ascii_lowercase().replace([' ', '_', '-'], "");
    if s == "title" {
        return Some(1);
    }
    let n = s.strip_prefix("heading")?;
    n.parse::<usize>().ok().filter(|l| (1..=9).contains(l))
}

/// A DOCX's text as Markdown (headings from the heading styles, list items as
/// `- `), its heading sections and title.
pub fn docx(bytes: &[u8]) -> Result<Extracted, String> {
    let mut archive = Archive::open(bytes, "DOCX")?;
    let xml = archive.read("word/document.xml")?;
    let mut reader = Reader::from_reader(xml.as_slice());
    let mut buf = Vec::new();
    let mut out = String::new();
    let mut para = String::new();
    let mut level: Option<usize> = None;
    let mut list_item = false;
    let mut in_text = false;
    loop {
        let ev = reader
            .read_event_into(&mut buf)
            .map_err(|e| format!("word/document.xml is not well-formed XML: {e}"))?;
        match ev {
            Event::Start(e) | Event::Empty(e) => match e.local_name().as_ref() {
                b"p" => {
                    para.clear();
                    level = None;
                    list_item = false;
                }
                b"pStyle" => level = attr(&e, b"val").as_deref().and_then(heading_level),
                b"numPr" => list_item = true,
                b"t" => in_text = true,
                b"tab" => para.push('\t'),
                b"br" | b"cr" => para.push('\n'),
                _ => {}
            },
            Event::Text(t) if in_text => {
                let text = t
                    .decode()
                    .map_err(|e| format!("word/document.xml has bad text: {e}"))?;
                para.push_str(&text);
            }
            Event::GeneralRef(r) if in_text => {
                // &amp; and friends inside <w:t>.
                let name = String::from_utf8_lossy(&r);
                para.push_str(match name.as_ref() {
                    "amp" => "&",
                    "lt" => "<",
                    "gt" => ">",
                    "quot" => "\"",
                    "apos" => "'",
                    _ => "",
                });
            }
            Event::End(e) => match e.local_name().as_ref() {
                b"t" => in_text = false,
                b"p" => {
                    let text = para.trim();
                    if !text.is_empty() {
                        match level {
                            Some(l) => {
                                let one_line = text.replace('\n', " ");
                                out.push_str(&format!("{} {one_line}\n\n", "#".repeat(l)));
                            }
                            None if list_item => out.push_str(&format!("- {text}\n")),
                            None => out.push_str(&format!("{text}\n\n")),
                        }
                    }
                    para.clear();
                }
                _ => {}
            },
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    let (sections, title) = markdown_sections(&out);
    Ok((out, sections, title))
}

/// An EPUB's chapters in reading (spine) order: each chapter's visible text,
/// its headings as sections (a chapter without headings is one section named
/// by its title), and the book's title.
pub fn epub(bytes: &[u8]) -> Result<Extracted, String> {
    let mut archive = Archive::open(bytes, "EPUB")?;
    let container = archive.read("META-INF/container.xml")?;
    let opf_path = first_attr(&container, b"rootfile", b"full-path")?
        .ok_or("not a valid EPUB: META-INF/container.xml names no rootfile")?;
    let opf = archive.read(&opf_path)?;
    let base = match opf_path.rfind('/') {
        Some(i) => opf_path[..=i].to_string(),
        None => String::new(),
    };
    // manifest id -> href, spine idrefs, dc:title
    let mut manifest: Vec<(String, String)> = Vec::new();
    let mut spine: Vec<String> = Vec::new();
    let mut book_title: Option<String> = None;
    let mut reader = Reader::from_reader(opf.as_slice());
    let mut buf = Vec::new();
    let mut in_title = false;
    loop {
        match reader
            .read_event_into(&mut buf)
            .map_err(|e| format!("{opf_path} is not well-formed XML: {e}"))?
        {
            Event::Start(e) | Event::Empty(e) => match e.local_name().as_ref() {
                b"item" => {
                    if let (Some(id), Some(href)) = (attr(&e, b"id"), attr(&e, b"href")) {
                        manifest.push((id, href));
                    }
                }
                b"itemref" => {
                    if let Some(idref) = attr(&e, b"idref") {
                        spine.push(idref);
                    }
                }
                b"title" => in_title = book_title.is_none(),
                _ => {}
            },
            Event::Text(t) if in_title => {
                let s = t.decode().map_err(|e| e.to_string())?.trim().to_string();
                if !s.is_empty() {
                    book_title = Some(s);
                }
            }
            Event::End(e) if e.local_name().as_ref() == b"title" => in_title = false,
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if spine.is_empty() {
        return Err(format!("not a valid EPUB: {opf_path} has an empty spine"));
    }
    let mut text = String::new();
    let mut sections = Vec::new();
    for (n, idref) in spine.iter().enumerate() {
        let href = manifest
            .iter()
            .find(|(id, _)| id == idref)
            .map(|(_, h)| h.clone())
            .ok_or_else(|| {
                format!("not a valid EPUB: spine item {idref:?} is not in the manifest")
            })?;
        let path = resolve(&base, &href);
        let html = archive.read(&path)?;
        let html = String::from_utf8_lossy(&html);
        let (chapter, chapter_sections, chapter_title) = html_to_text(&html);
        if chapter.trim().is_empty() {
            continue;
        }
        if !text.is_empty() {
            text.push_str("\n\n");
        }
        let start = text.len();
        let body = chapter.trim_end();
        let len = body.len();
        text.push_str(body);
        // Text outside any heading belongs to the chapter, named by its title.
        let chapter_name = chapter_title.unwrap_or_else(|| format!("Chapter {}", n + 1));
        if chapter_sections.is_empty() {
            sections.push(Section {
                heading_path: vec![chapter_name],
                start,
                end: text.len(),
            });
        } else {
            for s in chapter_sections {
                sections.push(Section {
                    heading_path: if s.heading_path.is_empty() {
                        vec![chapter_name.clone()]
                    } else {
                        s.heading_path
                    },
                    start: start + s.start.min(len),
                    end: start + s.end.min(len),
                });
            }
        }
    }
    Ok((text, sections, book_title))
}

/// `href` relative to the OPF's directory, with `./` and `../` folded.
fn resolve(base: &str, href: &str) -> String {
    let href = href.split('#').next().unwrap_or(href);
    let mut parts: Vec<&str> = base.split('/').filter(|p| !p.is_empty()).collect();
    for p in href.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

fn first_attr(xml: &[u8], element: &[u8], name: &[u8]) -> Result<Option<String>, String> {
    let mut reader = Reader::from_reader(xml);
    let mut buf = Vec::new();
    loop {
        match reader
            .read_event_into(&mut buf)
            .map_err(|e| format!("META-INF/container.xml is not well-formed XML: {e}"))?
        {
            Event::Start(e) | Event::Empty(e) if e.local_name().as_ref() == element => {
                return Ok(attr(&e, name));
            }
            Event::Eof => return Ok(None),
            _ => {}
        }
        buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heading_styles() {
        assert_eq!(heading_level("Heading1"), Some(1));
        assert_eq!(heading_level("heading 3"), Some(3));
        assert_eq!(heading_level("Title"), Some(1));
        assert_eq!(heading_level("Normal"), None);
        assert_eq!(heading_level("Heading10"), None);
    }

    #[test]
    fn hrefs_resolve() {
        assert_eq!(resolve("OEBPS/", "text/ch1.xhtml"), "OEBPS/text/ch1.xhtml");
        assert_eq!(resolve("OEBPS/text/", "../ch2.xhtml#s1"), "OEBPS/ch2.xhtml");
        assert_eq!(resolve("", "ch.xhtml"), "ch.xhtml");
    }

    #[test]
    fn not_zip_and_ole_are_explained() {
        let e = docx(b"plain text pretending").unwrap_err();
        assert!(e.contains("not a valid DOCX"), "{e}");
        let mut ole = vec![0xD0, 0xCF, 0x11, 0xE0];
        ole.extend_from_slice(&[0; 100]);
        assert!(docx(&ole).unwrap_err().contains("encrypted"));
    }
}
