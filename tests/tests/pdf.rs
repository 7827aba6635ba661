//! PDF (magpie-files) through the directory loader and the splitter, with PDFs the test writes
//! itself (lopdf, standard Helvetica, known text per page), and the bad ones:
//! scanned (no text layer), truncated, not a PDF, a decompression bomb, and encrypted
//! ones (fixtures made with qpdf: tests/fixtures/pdf).

use std::io::Write;
use std::path::Path;

use lopdf::{dictionary, Document, Stream};
use magpie_core::{Loader, Splitter};
use magpie_files::{DirectoryLoader, TokenSplitter, WordCounter};
use magpie_tests::docs::make_pdf;

async fn load_one(dir: &Path) -> Result<magpie_core::Document, String> {
    let loader = DirectoryLoader::new(dir);
    let listing = loader.list().await.unwrap();
    if let Some(s) = listing.skipped.first() {
        return Err(s.reason.clone());
    }
    loader.load(&listing.sources[0]).await.map_err(|s| s.reason)
}

#[tokio::test]
async fn pages_reach_the_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let pages: Vec<Vec<String>> = (1..=3)
        .map(|p| {
            (0..12)
                .map(|l| format!("Page {p} line {l}: magpies gather twigs for the nest."))
                .collect()
        })
        .collect();
    let refs: Vec<Vec<&str>> = pages
        .iter()
        .map(|p| p.iter().map(|s| s.as_str()).collect())
        .collect();
    let slices: Vec<&[&str]> = refs.iter().map(|p| p.as_slice()).collect();
    std::fs::write(
        tmp.path().join("guide.pdf"),
        make_pdf(&slices, Some("Nest Guide")),
    )
    .unwrap();
    let doc = load_one(tmp.path()).await.unwrap();
    assert_eq!(doc.mime, "application/pdf");
    assert_eq!(doc.metadata["title"], "Nest Guide");
    assert_eq!(doc.pages.len(), 3);
    for p in 1..=3 {
        let at = doc
            .text
            .find(&format!("Page {p} line 5"))
            .expect("page text");
        assert_eq!(doc.page_of(at), Some(p as u32), "{}", doc.text);
    }
    // Small chunks: every chunk sits on one page, and its page is where its text is.
    let chunks = TokenSplitter::new(std::sync::Arc::new(WordCounter))
        .chunk_tokens(40)
        .overlap_tokens(0)
        .split(&doc);
    assert!(chunks.len() >= 6, "{}", chunks.len());
    for c in &chunks {
        let (a, b) = (c.span.page_start.unwrap(), c.span.page_end.unwrap());
        assert_eq!(a, b, "a chunk straddles pages: {c:?}");
        assert!(
            c.text.contains(&format!("Page {a} ")),
            "{} on p. {a}",
            c.text
        );
        assert_eq!(c.span.location(), format!("p. {a}"));
    }
}

#[tokio::test]
async fn a_page_without_text_is_a_scanned_pdf() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("scan.pdf"), make_pdf(&[&[], &[]], None)).unwrap();
    let e = load_one(tmp.path()).await.unwrap_err();
    assert!(e.contains("no text layer") && e.contains("OCR"), "{e}");
}

#[tokio::test]
async fn truncated_and_fake_pdfs_are_reported() {
    let good = make_pdf(&[&["Some text here."]], None);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("half.pdf"), &good[..good.len() / 3]).unwrap();
    let e = load_one(tmp.path()).await.unwrap_err();
    assert!(
        e.contains("damaged or truncated") || e.contains("cannot extract"),
        "{e}"
    );

    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("fake.pdf"), b"<html>not a pdf</html>").unwrap();
    let e = load_one(tmp.path()).await.unwrap_err();
    assert!(e.contains("not a PDF"), "{e}");
}

#[tokio::test]
async fn a_decompression_bomb_is_refused_without_inflating_it() {
    // One stream of 300 MiB of zeros, deflated to a few hundred KiB.
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let block = vec![0u8; 1 << 20];
    for _ in 0..300 {
        enc.write_all(&block).unwrap();
    }
    let bomb = enc.finish().unwrap();
    let mut doc = Document::load_mem(&make_pdf(&[&["Hello."]], None)).unwrap();
    doc.add_object(Stream::new(dictionary! { "Filter" => "FlateDecode" }, bomb));
    let mut bytes = Vec::new();
    doc.save_to(&mut bytes).unwrap();
    assert!(bytes.len() < 2 << 20);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("bomb.pdf"), &bytes).unwrap();
    let e = load_one(tmp.path()).await.unwrap_err();
    assert!(e.contains("decompression bomb"), "{e}");
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/pdf")
        .join(name)
}

#[tokio::test]
async fn encrypted_pdfs_open_without_a_password_or_say_they_need_one() {
    // Permissions only (empty user password): readable, so indexed.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("owner-only.pdf"), tmp.path().join("owner-only.pdf")).unwrap();
    let doc = load_one(tmp.path()).await.unwrap();
    assert!(doc.text.contains("harbour seven"), "{}", doc.text);
    // A user password (AES-256 and RC4): a clear reason, not garbage text.
    for name in ["locked-aes256.pdf", "locked-rc4.pdf"] {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::copy(fixture(name), tmp.path().join(name)).unwrap();
        let e = load_one(tmp.path()).await.unwrap_err();
        assert!(
            e.contains("encrypted PDF") && e.contains("password"),
            "{name}: {e}"
        );
    }
}

/// `n` MiB of zeros, deflated `layers` times.
fn zeros_deflated(mib: usize, layers: usize) -> Vec<u8> {
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let block = vec![0u8; 1 << 20];
    for _ in 0..mib {
        enc.write_all(&block).unwrap();
    }
    let mut data = enc.finish().unwrap();
    for _ in 1..layers {
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&data).unwrap();
        data = enc.finish().unwrap();
    }
    data
}

fn with_stream(dict: lopdf::Dictionary, data: Vec<u8>) -> Vec<u8> {
    let mut doc = Document::load_mem(&make_pdf(&[&["Hello."]], None)).unwrap();
    doc.add_object(Stream::new(dict, data).with_compression(false));
    let mut bytes = Vec::new();
    doc.save_to(&mut bytes).unwrap();
    bytes
}

#[tokio::test]
async fn a_bomb_behind_two_flate_layers_is_refused() {
    // 300 MiB of zeros deflated twice: about 2 KB on disk. Measuring only the
    // first layer sees a few hundred KiB and lets it through.
    let bomb = zeros_deflated(300, 2);
    assert!(bomb.len() < 4096, "{}", bomb.len());
    let bytes = with_stream(
        dictionary! { "Filter" => vec!["FlateDecode".into(), "FlateDecode".into()] },
        bomb,
    );
    assert!(bytes.len() < 8192, "{}", bytes.len());
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("double.pdf"), &bytes).unwrap();
    let e = load_one(tmp.path()).await.unwrap_err();
    assert!(e.contains("decompression bomb"), "{e}");
}

/// A one-page PDF written byte by byte (lopdf's writer drops object streams),
/// with `extra` as object 6.
fn raw_pdf_with(extra: &[u8]) -> Vec<u8> {
    let content = b"BT /F1 12 Tf 72 720 Td (Hello.) Tj ET";
    let objects: Vec<Vec<u8>> = vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R \
           /Resources << /Font << /F1 5 0 R >> >> >>"
            .to_vec(),
        [
            format!("<< /Length {} >>\nstream\n", content.len()).as_bytes(),
            content,
            b"\nendstream",
        ]
        .concat(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_vec(),
        extra.to_vec(),
    ];
    let mut out = b"%PDF-1.5\n".to_vec();
    let mut offsets = Vec::new();
    for (i, body) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\nendobj\n");
    }
    let xref = out.len();
    out.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
    );
    for o in offsets {
        out.extend_from_slice(format!("{o:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    out
}

#[tokio::test]
async fn a_bomb_in_an_object_stream_is_refused_before_the_pdf_is_parsed() {
    // An object stream is inflated by the parser while it loads the file, before
    // any check of the loaded document could run: the raw bytes are measured first.
    let bomb = zeros_deflated(300, 1);
    let objstm = [
        format!(
            "<< /Type /ObjStm /N 1 /First 4 /Filter /FlateDecode /Length {} >>\nstream\n",
            bomb.len()
        )
        .as_bytes(),
        &bomb,
        b"\nendstream",
    ]
    .concat();
    let bytes = raw_pdf_with(&objstm);
    assert!(bytes.len() < 2 << 20, "{}", bytes.len());
    // The same file with a harmless object 6 reads fine: the bomb is the difference.
    let fine = raw_pdf_with(b"<< /Type /Note >>");
    assert!(magpie_files::pdf::pdf(&fine)
        .unwrap()
        .text
        .contains("Hello."));
    // Straight to the extractor and through the loader: both refuse.
    let e = magpie_files::pdf::pdf(&bytes).unwrap_err();
    assert!(e.contains("decompression bomb"), "{e}");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("objstm.pdf"), &bytes).unwrap();
    let e = load_one(tmp.path()).await.unwrap_err();
    assert!(e.contains("decompression bomb"), "{e}");
}

#[tokio::test]
async fn an_ordinary_compressed_pdf_still_loads() {
    // Real content behind two Flate layers is decoded and measured, not refused.
    let text = "BT /F1 12 Tf 72 720 Td (Nested filters are legal.) Tj ET";
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(text.as_bytes()).unwrap();
    let once = enc.finish().unwrap();
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&once).unwrap();
    let twice = enc.finish().unwrap();
    let bytes = with_stream(
        dictionary! { "Filter" => vec!["FlateDecode".into(), "FlateDecode".into()] },
        twice,
    );
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("ok.pdf"), &bytes).unwrap();
    let doc = load_one(tmp.path()).await.unwrap();
    assert!(doc.text.contains("Hello."), "{}", doc.text);
}
