//! Deep checks of an index: every store reads back everything it holds and
//! checks it (file checksums, vector fingerprints), and the result says what a
//! repair must rebuild.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::indexing::{Consistency, IndexingPipeline};
use crate::traits::StoredChunk;

/// What a deep check of one store found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoreHealth {
    /// Chunks read back whole.
    pub chunks_read: usize,
    /// Chunks whose stored data is wrong (a vector that fails its fingerprint,
    /// a payload that does not parse); a repair replaces just these.
    pub damaged: Vec<StoredChunk>,
    /// Problems of the store as a whole (a file failing its checksum, a read
    /// that failed); a repair rebuilds the store.
    pub problems: Vec<String>,
}

impl StoreHealth {
    /// Nothing wrong was found.
    pub fn is_healthy(&self) -> bool {
        self.damaged.is_empty() && self.problems.is_empty()
    }

    /// A store whose every listed chunk was read back.
    pub fn listed(chunks: Vec<StoredChunk>) -> Self {
        Self {
            chunks_read: chunks.len(),
            ..Self::default()
        }
    }

    /// A store that could not be read at all.
    pub fn unreadable(why: impl Into<String>) -> Self {
        Self {
            problems: vec![why.into()],
            ..Self::default()
        }
    }
}

/// The whole index, checked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    /// The catalog against both stores' chunk lists.
    pub consistency: Consistency,
    /// The vector store's own check.
    pub vectors: StoreHealth,
    /// The keyword store's own check.
    pub keywords: StoreHealth,
}

impl Verification {
    /// Every check passed.
    pub fn is_healthy(&self) -> bool {
        self.consistency.is_consistent() && self.vectors.is_healthy() && self.keywords.is_healthy()
    }
}

/// Number of values in a [`vector_fingerprint`].
pub const FINGERPRINT_LEN: usize = 4;

/// Largest difference between a stored vector's fingerprint and the one
/// recorded at write time that still counts as the same vector (rounding when
/// a store normalises; a flipped exponent or high mantissa bit is far larger).
pub const FINGERPRINT_TOLERANCE: f32 = 1e-4;

/// A few fixed ±1 projections of the unit-length vector: recorded beside a
/// vector when it is written, recomputed by a check, so a vector damaged on
/// disk is found instead of silently changing search results.
pub fn vector_fingerprint(v: &[f32]) -> [f32; FINGERPRINT_LEN] {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let inv = if norm > 0.0 && norm.is_finite() {
        1.0 / norm
    } else {
        0.0
    };
    let mut fp = [0.0f32; FINGERPRINT_LEN];
    for (i, x) in v.iter().enumerate() {
        let x = x * inv;
        for (j, f) in fp.iter_mut().enumerate() {
            let h = (i as u64 + 1)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add((j as u64 + 1).wrapping_mul(0xC2B2_AE3D_27D4_EB4F));
            let h = h ^ (h >> 31);
            if h & 1 == 0 {
                *f += x;
            } else {
                *f -= x;
            }
        }
    }
    fp
}

/// Whether `v` still has the fingerprint recorded for it, and is a usable vector.
pub fn fingerprint_matches(v: &[f32], recorded: &[f32]) -> bool {
    if v.iter().any(|x| !x.is_finite()) || recorded.len() != FINGERPRINT_LEN {
        return false;
    }
    vector_fingerprint(v)
        .iter()
        .zip(recorded)
        .all(|(a, b)| (a - b).abs() <= FINGERPRINT_TOLERANCE)
}

impl IndexingPipeline {
    /// Read everything back: the catalog against both stores, and each store's
    /// own deep check. Changes nothing.
    pub async fn verify(&self) -> Result<Verification> {
        let (vectors, keywords) = self.stores();
        let vectors = vectors
            .verify()
            .await
            .unwrap_or_else(|e| StoreHealth::unreadable(crate::error_chain(&e)));
        let keywords = keywords
            .verify()
            .await
            .unwrap_or_else(|e| StoreHealth::unreadable(crate::error_chain(&e)));
        let consistency = if vectors.problems.is_empty() && keywords.problems.is_empty() {
            self.check().await?
        } else {
            Consistency {
                documents: self.catalog().len(),
                chunks: self.catalog().chunk_count(),
                ..Consistency::default()
            }
        };
        Ok(Verification {
            consistency,
            vectors,
            keywords,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_survive_rescaling_and_catch_flipped_bits() {
        let v: Vec<f32> = (0..384)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 90.0)
            .collect();
        let fp = vector_fingerprint(&v);
        // A store that normalises keeps the fingerprint.
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let unit: Vec<f32> = v.iter().map(|x| x / norm).collect();
        assert!(fingerprint_matches(&unit, &fp));
        assert!(fingerprint_matches(&v, &fp));
        // A flipped exponent bit, a flipped high mantissa bit, a NaN: caught.
        for (i, bit) in [(5usize, 30u32), (100, 22), (383, 25)] {
            let mut w = unit.clone();
            w[i] = f32::from_bits(w[i].to_bits() ^ (1 << bit));
            assert!(!fingerprint_matches(&w, &fp), "bit {bit} of {i}");
        }
        let mut w = unit.clone();
        w[7] = f32::NAN;
        assert!(!fingerprint_matches(&w, &fp));
        assert!(!fingerprint_matches(&unit, &fp[..2]));
    }
}
