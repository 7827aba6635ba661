//! Progress bars for long work on a terminal (the `cli` feature): a plain
//! bar of steps, and [`BarProgress`] for indexing runs.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use magpie_core::{DocStatus, IndexProgress};

/// A bar of `len` steps (hidden when `visible` is false or stderr is not a terminal).
pub fn bar(len: u64, what: &str, visible: bool) -> ProgressBar {
    let pb = ProgressBar::new(len);
    if !visible {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:<10} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Shows indexing progress: sources handled, chunks embedded (with
/// `MAGPIE_LIST_FILES` set, each source and what became of it).
pub struct BarProgress {
    pb: ProgressBar,
    verbose: bool,
}

impl BarProgress {
    /// A bar on stderr, hidden when `visible` is false.
    pub fn new(visible: bool) -> Self {
        Self {
            pb: bar(0, "indexing", visible),
            verbose: std::env::var_os("MAGPIE_LIST_FILES").is_some(),
        }
    }

    /// Clear the bar.
    pub fn finish(&self) {
        self.pb.finish_and_clear();
    }
}

impl IndexProgress for BarProgress {
    fn start(&self, total: usize) {
        self.pb.set_length(total as u64);
    }

    fn source_done(&self, uri: &str, status: &DocStatus) {
        self.pb.inc(1);
        if self.verbose {
            self.pb.println(format!("{uri}: {status:?}"));
        }
    }

    fn embedded(&self, n: usize) {
        self.pb.set_message(format!("embedding +{n}"));
    }
}
