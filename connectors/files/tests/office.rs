//! DOCX and EPUB through the directory loader, with files the test writes itself
//! (their text known), and the bad ones: not a ZIP, encrypted, a decompression
//! bomb, a broken spine.

use std::io::Write;
use std::path::Path;

use magpie_core::Loader;
use magpie_files::DirectoryLoader;
use zip::write::SimpleFileOptions;

fn write_zip(path: &Path, entries: &[(&str, &[u8])]) {
    let f = std::fs::File::create(path).unwrap();
    let mut z = zip::ZipWriter::new(f);
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in entries {
        z.start_file(*name, opts).unwrap();
        z.write_all(data).unwrap();
    }
    z.finish().unwrap();
}

fn para(style: Option<&str>, text: &str) -> String {
    let ppr = style
        .map(|s| format!("<w:pPr><w:pStyle w:val=\"{s}\"/></w:pPr>"))
        .unwrap_or_default();
    format!("<w:p>{ppr}<w:r><w:t xml:space=\"preserve\">{text}</w:t></w:r></w:p>")
}

fn docx_xml(body: &str) -> Vec<u8> {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\
         <w:document xmlns:w=\"http://schemas.openxmlformats.org/wordprocessingml/2006/main\">\
         <w:body>{body}</w:body></w:document>"
    )
    .into_bytes()
}

async fn load_all(dir: &Path) -> (Vec<magpie_core::Document>, Vec<magpie_core::Skipped>) {
    let loader = DirectoryLoader::new(dir);
    let listing = loader.list().await.unwrap();
    let mut docs = Vec::new();
    let mut skipped = listing.skipped;
    for s in &listing.sources {
        match loader.load(s).await {
            Ok(d) => docs.push(d),
            Err(e) => skipped.push(e),
        }
    }
    docs.sort_by(|a, b| a.uri.cmp(&b.uri));
    (docs, skipped)
}

#[tokio::test]
async fn docx_paragraphs_and_headings() {
    let tmp = tempfile::tempdir().unwrap();
    let body = [
        para(Some("Title"), "Field Guide"),
        para(None, "Magpies are clever &amp; curious."),
        para(Some("Heading1"), "Nesting"),
        para(None, "They build domed nests."),
        para(Some("Heading2"), "Materials"),
        para(None, "Twigs, mud and grass."),
        "<w:p><w:pPr><w:numPr><w:ilvl w:val=\"0\"/></w:numPr></w:pPr><w:r><w:t>first item</w:t></w:r></w:p>"
            .to_string(),
    ]
    .concat();
    write_zip(
        &tmp.path().join("guide.docx"),
        &[
            ("[Content_Types].xml", b"<Types/>"),
            ("word/document.xml", &docx_xml(&body)),
        ],
    );
    let (docs, skipped) = load_all(tmp.path()).await;
    assert!(skipped.is_empty(), "{skipped:?}");
    let d = &docs[0];
    assert_eq!(
        d.mime,
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    );
    assert!(
        d.text.contains("Magpies are clever & curious."),
        "{}",
        d.text
    );
    assert!(d.text.contains("- first item"), "{}", d.text);
    assert_eq!(d.metadata["title"], "Field Guide");
    // The heading path of the Materials paragraph, as for Markdown.
    let at = d.text.find("Twigs").unwrap();
    let section = d
        .sections
        .iter()
        .filter(|s| s.start <= at && at < s.end)
        .max_by_key(|s| s.heading_path.len())
        .expect("a section around the paragraph");
    // Word's Title is the document's title, not a level above Heading 1.
    assert_eq!(
        section.heading_path,
        vec!["Nesting", "Materials"],
        "{:?}",
        d.sections
    );
}

#[tokio::test]
async fn epub_chapters_in_spine_order() {
    let tmp = tempfile::tempdir().unwrap();
    let container = br#"<?xml version="1.0"?><container xmlns="urn:oasis:names:tc:opendocument:xmlns:container"><rootfiles><rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/></rootfiles></container>"#;
    let opf = br#"<?xml version="1.0"?><package xmlns="http://www.idpf.org/2007/opf" xmlns:dc="http://purl.org/dc/elements/1.1/"><metadata><dc:title>Birds of the Garden</dc:title></metadata><manifest><item id="c2" href="text/two.xhtml" media-type="application/xhtml+xml"/><item id="c1" href="text/one.xhtml" media-type="application/xhtml+xml"/></manifest><spine><itemref idref="c1"/><itemref idref="c2"/></spine></package>"#;
    let one = b"<html><head><title>One</title></head><body><h1>Magpies</h1><p>Black and white.</p><h2>Calls</h2><p>A harsh chatter.</p></body></html>";
    let two = b"<html><head><title>Robins</title></head><body><p>A red breast.</p></body></html>";
    write_zip(
        &tmp.path().join("birds.epub"),
        &[
            ("mimetype", b"application/epub+zip"),
            ("META-INF/container.xml", container),
            ("OEBPS/content.opf", opf),
            ("OEBPS/text/one.xhtml", one),
            ("OEBPS/text/two.xhtml", two),
        ],
    );
    let (docs, skipped) = load_all(tmp.path()).await;
    assert!(skipped.is_empty(), "{skipped:?}");
    let d = &docs[0];
    assert_eq!(d.mime, "application/epub+zip");
    assert_eq!(d.metadata["title"], "Birds of the Garden");
    let (a, b) = (
        d.text.find("harsh chatter").unwrap(),
        d.text.find("red breast").unwrap(),
    );
    assert!(a < b, "spine order: {}", d.text);
    let path_at = |at: usize| {
        d.sections
            .iter()
            .filter(|s| s.start <= at && at < s.end)
            .max_by_key(|s| s.heading_path.len())
            .map(|s| s.heading_path.clone())
            .unwrap_or_default()
    };
    assert_eq!(path_at(a), vec!["Magpies", "Calls"], "{:?}", d.sections);
    assert_eq!(path_at(b), vec!["Robins"], "{:?}", d.sections);
}

#[tokio::test]
async fn bad_office_files_are_skipped_with_a_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("fake.docx"), b"this is not a zip at all").unwrap();
    let mut ole = vec![0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1];
    ole.resize(4096, 0);
    std::fs::write(dir.join("locked.docx"), &ole).unwrap();
    // 100 MiB of zeros deflate to about 100 KiB: over the unpacked limit.
    let zeros = vec![0u8; 100 << 20];
    write_zip(&dir.join("bomb.docx"), &[("word/document.xml", &zeros)]);
    write_zip(
        &dir.join("empty.docx"),
        &[("word/document.xml", &docx_xml(""))],
    );
    write_zip(
        &dir.join("broken.epub"),
        &[
            (
                "META-INF/container.xml",
                br#"<container><rootfiles><rootfile full-path="c.opf"/></rootfiles></container>"#,
            ),
            (
                "c.opf",
                br#"<package><manifest/><spine><itemref idref="missing"/></spine></package>"#,
            ),
        ],
    );
    std::fs::write(dir.join("ok.txt"), "still indexed").unwrap();
    let (docs, skipped) = load_all(dir).await;
    assert_eq!(docs.len(), 1, "{docs:?}");
    let reason = |name: &str| {
        skipped
            .iter()
            .find(|s| s.uri.ends_with(name))
            .map(|s| s.reason.clone())
            .unwrap_or_else(|| panic!("{name} not skipped: {skipped:?}"))
    };
    assert!(reason("fake.docx").contains("not a valid DOCX"));
    assert!(reason("locked.docx").contains("encrypted"));
    assert!(reason("bomb.docx").contains("decompression bomb"));
    assert!(reason("empty.docx").contains("no text"));
    assert!(reason("broken.epub").contains("not in the manifest"));
}
