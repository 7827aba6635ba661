//! This machine's memory bandwidth, measured STREAM-style: the physical
//! limit a decoding step (which reads every weight once per token) runs
//! against.

use std::time::Instant;

/// Read and copy rates over a buffer far larger than the caches.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Bandwidth {
    /// Threads that read at once.
    pub threads: usize,
    /// Bytes of the buffer read.
    pub bytes: usize,
    /// Sum of every 8-byte word, each thread its own share: GB/s (10⁹ bytes).
    pub read_gb_s: f64,
    /// `dst.copy_from_slice(src)`, counted as STREAM does (bytes read plus
    /// bytes written): GB/s.
    pub copy_gb_s: f64,
}

/// A sum that the compiler vectorizes (eight independent lanes).
fn sum_words(w: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let chunks = w.chunks_exact(8);
    let rest: u64 = chunks.remainder().iter().fold(0, |a, b| a.wrapping_add(*b));
    for c in chunks {
        for i in 0..8 {
            acc[i] = acc[i].wrapping_add(c[i]);
        }
    }
    acc.iter().fold(rest, |a, b| a.wrapping_add(*b))
}

/// Measure over `bytes` (rounded down to whole 8-byte words) with `threads`
/// threads, the best of `repeat` passes each.
pub fn measure_bandwidth(bytes: usize, threads: usize, repeat: usize) -> Bandwidth {
    let words = (bytes / 8).max(threads.max(1) * 8);
    let threads = threads.max(1);
    // every page written once first, so the timed passes read real memory
    let src: Vec<u64> = (0..words as u64).collect();
    let mut dst = vec![0u64; words];
    let share = words.div_ceil(threads);
    let mut best_read = f64::MAX;
    let mut best_copy = f64::MAX;
    let mut check = 0u64;
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        let sums: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = src
                .chunks(share)
                .map(|part| s.spawn(move || sum_words(std::hint::black_box(part))))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).collect()
        });
        best_read = best_read.min(t.elapsed().as_secs_f64());
        check = check.wrapping_add(sums.iter().fold(0, |a, b| a.wrapping_add(*b)));
        let t = Instant::now();
        std::thread::scope(|s| {
            for (d, part) in dst.chunks_mut(share).zip(src.chunks(share)) {
                s.spawn(move || d.copy_from_slice(part));
            }
        });
        best_copy = best_copy.min(t.elapsed().as_secs_f64());
        std::hint::black_box(&dst);
    }
    std::hint::black_box(check);
    let b = (words * 8) as f64;
    Bandwidth {
        threads,
        bytes: words * 8,
        read_gb_s: b / best_read / 1e9,
        copy_gb_s: 2.0 * b / best_copy / 1e9,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sum_counts_every_word() {
        let w: Vec<u64> = (1..=1001).collect();
        assert_eq!(sum_words(&w), 1001 * 1002 / 2);
    }

    #[test]
    fn a_small_measurement_gives_positive_rates() {
        let b = measure_bandwidth(1 << 20, 2, 2);
        assert_eq!(b.bytes, 1 << 20);
        assert!(b.read_gb_s > 0.0 && b.read_gb_s.is_finite(), "{b:?}");
        assert!(b.copy_gb_s > 0.0 && b.copy_gb_s.is_finite(), "{b:?}");
    }
}
