//! The directory loader on awkward trees: every problem is a per-file message, never a failed run.

use std::fs;

use magpie_core::{Loader, Skipped};
use magpie_files::DirectoryLoader;

async fn load_all(loader: &DirectoryLoader) -> (Vec<magpie_core::Document>, Vec<Skipped>) {
    let listing = loader.list().await.unwrap();
    let mut docs = Vec::new();
    let mut skipped = listing.skipped.clone();
    for s in &listing.sources {
        match loader.load(s).await {
            Ok(d) => docs.push(d),
            Err(e) => skipped.push(e),
        }
    }
    (docs, skipped)
}

fn reason_for<'a>(skipped: &'a [Skipped], name: &str) -> &'a str {
    skipped
        .iter()
        .find(|s| s.uri.ends_with(name))
        .map(|s| s.reason.as_str())
        .unwrap_or_else(|| panic!("{name} was not skipped: {skipped:?}"))
}

#[tokio::test]
async fn awkward_files_are_skipped_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::write(root.join("good.md"), "# Title\nSome text.\n").unwrap();
    fs::write(root.join("empty.txt"), "").unwrap();
    fs::write(root.join("blank.txt"), "   \n\n").unwrap();
    fs::write(root.join("image.bin"), b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0").unwrap();
    fs::write(root.join("report.pdf"), b"%PDF-1.4 ...").unwrap();
    fs::write(root.join("slides.pptx"), b"PK\x03\x04 not really").unwrap();
    fs::write(
        root.join("latin1.txt"),
        b"Caf\xe9 cr\xe8me br\xfbl\xe9e na\xefve fa\xe7ade r\xe9sum\xe9",
    )
    .unwrap();
    fs::write(root.join("big.txt"), "a".repeat(5000)).unwrap();
    // deeply nested directory
    let mut deep = root.to_path_buf();
    for i in 0..60 {
        deep = deep.join(format!("d{i}"));
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("deep.txt"), "found me at the bottom").unwrap();
    // a symlink loop and a dangling link
    std::os::unix::fs::symlink(root, root.join("loop")).unwrap();
    std::os::unix::fs::symlink(root.join("missing.txt"), root.join("dangling.txt")).unwrap();
    // gitignore-style excludes
    fs::write(root.join(".gitignore"), "ignored/\n").unwrap();
    fs::create_dir(root.join("ignored")).unwrap();
    fs::write(root.join("ignored/secret.txt"), "should not be indexed").unwrap();

    let loader = DirectoryLoader::new(root).max_file_size(4096);
    let (docs, skipped) = load_all(&loader).await;
    let names: Vec<&str> = docs
        .iter()
        .map(|d| d.uri.rsplit('/').next().unwrap())
        .collect();
    assert!(names.contains(&"good.md"), "{names:?}");
    assert!(names.contains(&"deep.txt"), "{names:?}");
    assert!(names.contains(&"latin1.txt"), "{names:?}");
    assert!(!names.contains(&"secret.txt"), "gitignored file was loaded");
    assert_eq!(
        names.iter().filter(|n| **n == "good.md").count(),
        1,
        "loop visited twice"
    );

    assert!(reason_for(&skipped, "empty.txt").contains("empty"));
    assert!(reason_for(&skipped, "blank.txt").contains("empty"));
    assert!(reason_for(&skipped, "image.bin").contains("binary"));
    assert!(reason_for(&skipped, "report.pdf").contains("damaged or truncated PDF"));
    assert!(reason_for(&skipped, "slides.pptx").contains("unsupported format (PowerPoint (PPTX))"));
    assert!(reason_for(&skipped, "big.txt").contains("--max-file-size"));
    assert!(reason_for(&skipped, "loop").contains("loop"));
    assert!(reason_for(&skipped, "dangling.txt").contains("unreadable"));

    let latin = docs.iter().find(|d| d.uri.ends_with("latin1.txt")).unwrap();
    assert!(latin.text.starts_with("Café crème"), "{}", latin.text);
    let good = docs.iter().find(|d| d.uri.ends_with("good.md")).unwrap();
    assert_eq!(good.title(), Some("Title"));
}

#[tokio::test]
async fn globs_select_files() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.md"), "alpha").unwrap();
    fs::write(dir.path().join("b.txt"), "beta").unwrap();
    fs::create_dir(dir.path().join("skip")).unwrap();
    fs::write(dir.path().join("skip/c.md"), "gamma").unwrap();
    let loader = DirectoryLoader::new(dir.path())
        .include(["*.md"])
        .exclude(["skip/"]);
    let (docs, _) = load_all(&loader).await;
    let names: Vec<&str> = docs
        .iter()
        .map(|d| d.uri.rsplit('/').next().unwrap())
        .collect();
    assert_eq!(names, ["a.md"]);
}

#[tokio::test]
async fn a_missing_root_is_a_clear_error() {
    let err = DirectoryLoader::new("/nonexistent/magpie/root")
        .list()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot read"), "{err}");
}

#[tokio::test]
async fn a_200_mb_file_is_skipped_without_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let f = fs::File::create(dir.path().join("huge.txt")).unwrap();
    f.set_len(200 * 1024 * 1024).unwrap(); // sparse: no disk used
    fs::write(dir.path().join("small.txt"), "still indexed").unwrap();
    let (docs, skipped) = load_all(&DirectoryLoader::new(dir.path())).await;
    assert_eq!(docs.len(), 1);
    let r = reason_for(&skipped, "huge.txt");
    assert!(r.contains("200.0 MiB") && r.contains("32.0 MiB"), "{r}");
}
