//! A quantized weight matrix in its file's bytes, and its product with a
//! batch of activation rows over candle's thread pool.

use std::sync::Arc;

use candle_core::quantized::QTensor;

use super::formats::{dequantize_row, QType};
use super::{
    dots, packed, packed_k, quantize256, quantize32, Act256, Act32, Acts, Kernels, PackIsa,
};

/// `[rows, cols]` of one quantized type, in GGUF's block layout.
pub struct QMatrix {
    ty: QType,
    rows: usize,
    cols: usize,
    data: Bytes,
    /// Rows packed by eight (module `packed`), not the file's layout.
    packed: bool,
}

/// Where the bytes live: owned, a candle tensor's CPU storage (shared with
/// candle's kernels, so nothing is held twice), or the model file mapped
/// into memory (read in place: nothing copied at load).
enum Bytes {
    Owned(Arc<[u8]>),
    Mapped {
        map: Arc<memmap2::Mmap>,
        offset: usize,
        len: usize,
    },
    Tensor {
        _keep: Arc<QTensor>,
        ptr: *const u8,
        len: usize,
    },
}

// SAFETY: the tensor's storage is immutable and lives as long as `_keep`.
unsafe impl Send for Bytes {}
// SAFETY: as above.
unsafe impl Sync for Bytes {}

impl Bytes {
    fn get(&self) -> &[u8] {
        match self {
            Bytes::Owned(b) => b,
            Bytes::Mapped { map, offset, len } => &map[*offset..*offset + *len],
            // SAFETY: ptr/len were the tensor's CPU storage, kept alive by _keep.
            Bytes::Tensor { ptr, len, .. } => unsafe { std::slice::from_raw_parts(*ptr, *len) },
        }
    }
}

struct OutPtr(*mut f32);
// SAFETY: each task writes a disjoint set of output indices.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

/// Rows per task: few enough tasks to keep the pool's overhead small, enough
/// to balance two cores (640, 1,024 and 2,048 rows split evenly), and a
/// multiple of every tile's rows (2 and 3), so only a matrix's last task has
/// rows left over for the slower one-row path (with 16, a 3-row tile left
/// one row in sixteen to it: 5% of a prompt's samples in `perf`).
const ROWS_PER_TASK: usize = 12;

/// The rows of `x` (each `cols` long) quantized for the 32-value types
/// (`b32`) and for the K types (`b256`), on the pool's threads (each row the
/// same values whichever thread quantizes it).
pub fn quantize_rows(
    x: &[f32],
    cols: usize,
    b32: bool,
    b256: bool,
    a32: &mut Vec<Vec<Act32>>,
    a256: &mut Vec<Vec<Act256>>,
) {
    let t = x.len() / cols.max(1);
    a32.resize_with(if b32 { t } else { 0 }, Vec::new);
    a256.resize_with(if b256 { t } else { 0 }, Vec::new);
    let (p32, p256) = (VecPtr(a32.as_mut_ptr()), VecPtr(a256.as_mut_ptr()));
    let work = |rows: std::ops::Range<usize>| {
        for r in rows {
            let row = &x[r * cols..(r + 1) * cols];
            // SAFETY: row r's vectors are written by the task owning r only.
            unsafe {
                if b32 {
                    quantize32(row, &mut *p32.at(r));
                }
                if b256 {
                    quantize256(row, &mut *p256.at(r));
                }
            }
        }
    };
    if t * cols < 16 * 1024 {
        work(0..t);
    } else {
        crate::llm::pool::decode_pool().run(t, work);
    }
}

struct VecPtr<T>(*mut Vec<T>);
// SAFETY: each task touches a disjoint set of indices.
unsafe impl<T> Send for VecPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for VecPtr<T> {}

impl<T> VecPtr<T> {
    fn at(&self, i: usize) -> *mut Vec<T> {
        // SAFETY: callers stay inside the vector the pointer came from.
        unsafe { self.0.add(i) }
    }
}

/// Groups of eight packed rows per task (16 rows: 640, 1,024 and 2,048 split
/// evenly over two cores).
const GROUPS_PER_TASK: usize = 2;

impl QMatrix {
    /// A 2-D quantized tensor on the CPU of a type magpie has kernels for,
    /// read in place; anything else is handed back.
    pub fn from_qtensor(t: Arc<QTensor>) -> Result<Self, Arc<QTensor>> {
        let Some(ty) = QType::from_ggml(t.dtype()) else {
            return Err(t);
        };
        let Ok((rows, cols)) = t.shape().dims2() else {
            return Err(t);
        };
        if !t.device().is_cpu() {
            return Err(t);
        }
        let (ptr, len) = match t.data() {
            Ok(std::borrow::Cow::Borrowed(b)) => (b.as_ptr(), b.len()),
            _ => return Err(t),
        };
        let data = Bytes::Tensor {
            _keep: t.clone(),
            ptr,
            len,
        };
        Self::checked(ty, rows, cols, data).map_err(|_| t)
    }

    /// A `[rows, cols]` tensor of type `ty` at byte `offset` of a mapped file,
    /// read in place.
    pub fn mapped(
        ty: QType,
        rows: usize,
        cols: usize,
        map: Arc<memmap2::Mmap>,
        offset: usize,
    ) -> Result<Self, String> {
        let len = rows * ty.row_bytes(cols);
        if offset.checked_add(len).is_none_or(|end| end > map.len()) {
            return Err(format!(
                "{ty:?} [{rows}, {cols}] at byte {offset} runs past the end of the file ({} bytes)",
                map.len()
            ));
        }
        Self::checked(ty, rows, cols, Bytes::Mapped { map, offset, len })
    }

    /// From the bytes of a `[rows, cols]` tensor of type `ty`.
    pub fn new(ty: QType, rows: usize, cols: usize, data: Arc<[u8]>) -> Result<Self, String> {
        Self::checked(ty, rows, cols, Bytes::Owned(data))
    }

    fn checked(ty: QType, rows: usize, cols: usize, data: Bytes) -> Result<Self, String> {
        if !cols.is_multiple_of(ty.block()) {
            return Err(format!(
                "{ty:?} rows of {cols} values are not whole blocks of {}",
                ty.block()
            ));
        }
        if data.get().len() != rows * ty.row_bytes(cols) {
            return Err(format!(
                "{ty:?} [{rows}, {cols}] needs {} bytes, got {}",
                rows * ty.row_bytes(cols),
                data.get().len()
            ));
        }
        Ok(Self {
            ty,
            rows,
            cols,
            data,
            packed: false,
        })
    }

    /// A copy with its rows packed by eight for the vector kernels (AVX2, AVX-512 VNNI)
    /// (module `packed`: the same bytes, moved), where the type packs and
    /// the rows are a multiple of eight; `None` otherwise.
    pub fn packed(&self) -> Option<Self> {
        if self.packed || !self.rows.is_multiple_of(packed::GROUP) {
            return None;
        }
        let data = if packed::packable(self.ty) {
            packed::pack(self.ty, self.rows, self.cols, self.data.get())
        } else if packed_k::packable(self.ty) {
            packed_k::pack(self.ty, self.rows, self.cols, self.data.get())
        } else {
            return None;
        };
        if let Bytes::Mapped { map, offset, len } = &self.data {
            // The file's pages just read are not needed any more: out of this
            // process's resident memory (they stay in the page cache).
            // SAFETY: the mapping is read-only and file-backed, so dropped
            // pages read back from the file if anything touches them again.
            #[cfg(unix)]
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, *offset, *len)
            };
        }
        Some(Self {
            ty: self.ty,
            rows: self.rows,
            cols: self.cols,
            data: Bytes::Owned(data.into()),
            packed: true,
        })
    }

    /// Whether the rows are packed ([`Self::packed`]).
    pub fn is_packed(&self) -> bool {
        self.packed
    }

    /// The type.
    pub fn qtype(&self) -> QType {
        self.ty
    }

    /// Output width.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input width.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.get().len()
    }

    fn row(&self, r: usize) -> &[u8] {
        debug_assert!(
            !self.packed,
            "a packed matrix has no rows in the file's layout"
        );
        let stride = self.ty.row_bytes(self.cols);
        &self.data.get()[r * stride..(r + 1) * stride]
    }

    /// Row `r` as f32 (an embedding lookup).
    pub fn dequantize(&self, r: usize, out: &mut [f32]) {
        if self.packed && self.ty.is_k() {
            packed_k::dequantize_row(self.ty, self.data.get(), self.cols, r, out);
        } else if self.packed {
            let mut row = vec![0u8; self.ty.row_bytes(self.cols)];
            packed::unpack_row(self.ty, self.data.get(), self.cols, r, &mut row);
            dequantize_row(self.ty, &row, &mut out[..self.cols]);
        } else {
            dequantize_row(self.ty, self.row(r), &mut out[..self.cols]);
        }
    }

    /// Group `g`'s bytes in a packed matrix.
    fn group_bytes(&self, g: usize) -> &[u8] {
        let len = if self.ty.is_k() {
            self.cols / 256 * packed_k::group_block_bytes(self.ty)
        } else {
            packed::GROUP * self.ty.row_bytes(self.cols)
        };
        &self.data.get()[g * len..(g + 1) * len]
    }

    /// Packed group `g` against `N` tokens from `t` of the activations.
    fn group_tile<const N: usize>(
        &self,
        isa: PackIsa,
        g: usize,
        a32: &[Vec<Act32>],
        a256: &[Vec<Act256>],
        t: usize,
    ) -> [[f32; 8]; N] {
        let w = self.group_bytes(g);
        if self.ty.is_k() {
            let x: [&[Act256]; N] = std::array::from_fn(|j| &a256[t + j][..]);
            packed_k::group(isa, self.ty, w, x)
        } else {
            let x: [&[Act32]; N] = std::array::from_fn(|j| &a32[t + j][..]);
            packed::group(isa, self.ty, w, x)
        }
    }

    /// `out[i] = W[rows.start + i] · x` for one row of activations quantized
    /// for this type (a slice of a matrix-vector product), row by row: one
    /// sequential stream through the weights. Measured on Gemma 3 270M's
    /// decode step (2 threads, 2026-12-07): 65 tokens/s row by row against 43
    /// with two rows interleaved and 37 with four (`dots_rows`), which
    /// suits prompt tiles, where each weight block serves several tokens.
    pub fn dot_rows(
        &self,
        kernels: Kernels,
        x: Acts<'_>,
        rows: std::ops::Range<usize>,
        out: &mut [f32],
    ) {
        let n = rows.len().min(out.len());
        if self.packed {
            let mut r = rows.start;
            while r < rows.start + n {
                let g = r / packed::GROUP;
                let w = self.group_bytes(g);
                let v = match x {
                    Acts::B32(x) if !self.ty.is_k() => {
                        packed::group::<1>(kernels.pack_isa(), self.ty, w, [x])[0]
                    }
                    Acts::B256(x) if self.ty.is_k() => {
                        packed_k::group::<1>(kernels.pack_isa(), self.ty, w, [x])[0]
                    }
                    _ => panic!(
                        "activations quantized for another block size than {:?}",
                        self.ty
                    ),
                };
                let end = ((g + 1) * packed::GROUP).min(rows.start + n);
                out[r - rows.start..end - rows.start]
                    .copy_from_slice(&v[r - g * packed::GROUP..end - g * packed::GROUP]);
                r = end;
            }
            return;
        }
        let stride = self.ty.row_bytes(self.cols);
        let w = &self.data.get()[rows.start * stride..(rows.start + n) * stride];
        super::dot_range(kernels, self.ty, w, stride, x, &mut out[..n]);
    }

    /// `x · Wᵀ` for `x` of shape `[..., cols]`, as a candle tensor.
    pub fn forward(&self, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        let dims = x.dims().to_vec();
        let cols = *dims.last().unwrap_or(&0);
        if cols != self.cols {
            candle_core::bail!("matmul: input width {cols}, weights {}", self.cols);
        }
        let t = x.elem_count() / cols.max(1);
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0f32; t * self.rows];
        self.matmul(&xs, t, &mut out);
        let mut shape = dims;
        *shape.last_mut().unwrap_or(&mut 0) = self.rows;
        candle_core::Tensor::from_vec(out, shape, &candle_core::Device::Cpu)
    }

    /// Rows `r..r1` against every token in tiles of `R` rows × `N` tokens
    /// (tokens past the last whole tile one at a time), each value through
    /// `put(token, row, value)`; returns the first row not done (fewer than
    /// `R` rows remain).
    #[allow(clippy::too_many_arguments)]
    fn tiles<const R: usize, const N: usize>(
        &self,
        kernels: Kernels,
        a32: &[Vec<Act32>],
        acts: &[Acts<'_>],
        mut r: usize,
        r1: usize,
        put: &impl Fn(usize, usize, f32),
    ) -> usize {
        while r + R <= r1 {
            let w: [&[u8]; R] = std::array::from_fn(|i| self.row(r + i));
            let mut t = 0;
            while t + N <= a32.len() {
                let a: [&[Act32]; N] = std::array::from_fn(|j| &a32[t + j][..]);
                let v = super::dots_rows::<R, N>(kernels, self.ty, w, a);
                for (j, v) in v.iter().enumerate() {
                    for (i, v) in v.iter().enumerate() {
                        put(t + j, r + i, *v);
                    }
                }
                t += N;
            }
            for (t, x) in acts.iter().enumerate().skip(t) {
                for (i, w) in w.iter().enumerate() {
                    put(t, r + i, dots::<1>(kernels, self.ty, w, &[*x])[0]);
                }
            }
            r += R;
        }
        r
    }

    /// `out[t, r] = x[t] · W[r]` for `t` rows of `x` (`t × cols`), into
    /// `out` (`t × rows`), with `kernels`.
    pub fn matmul_with(&self, kernels: Kernels, x: &[f32], t: usize, out: &mut [f32]) {
        assert!(
            x.len() >= t * self.cols && out.len() >= t * self.rows,
            "matmul shapes"
        );
        let (mut a32, mut a256) = (Vec::new(), Vec::new());
        quantize_rows(
            &x[..t * self.cols],
            self.cols,
            !self.ty.is_k(),
            self.ty.is_k(),
            &mut a32,
            &mut a256,
        );
        self.matmul_quantized(kernels, &a32, &a256, out);
    }

    /// `out[t, r] = x[t] · W[r]` for activation rows already quantized
    /// ([`quantize_rows`]; those of this type's block size are read).
    pub fn matmul_quantized(
        &self,
        kernels: Kernels,
        a32: &[Vec<Act32>],
        a256: &[Vec<Act256>],
        out: &mut [f32],
    ) {
        let t = if self.ty.is_k() {
            a256.len()
        } else {
            a32.len()
        };
        assert!(out.len() >= t * self.rows, "matmul shapes");
        let (a32, a256) = if self.ty.is_k() {
            (&a32[..0], a256)
        } else {
            (a32, &a256[..0])
        };
        let ptr = OutPtr(out.as_mut_ptr());
        if self.packed {
            self.matmul_packed(kernels.pack_isa(), a32, a256, &ptr);
            return;
        }
        let acts: Vec<Acts<'_>> = if self.ty.is_k() {
            a256.iter().map(|v| Acts::B256(v)).collect()
        } else {
            a32.iter().map(|v| Acts::B32(v)).collect()
        };
        let tasks = self.rows.div_ceil(ROWS_PER_TASK);
        crate::llm::pool::decode_pool().run(tasks, |range| {
            let p = &ptr;
            let put = |t: usize, r: usize, v: f32| {
                // SAFETY: (t, r) is written by the task owning row r only.
                unsafe { *p.0.add(t * self.rows + r) = v };
            };
            for task in range {
                let r0 = task * ROWS_PER_TASK;
                let r1 = (r0 + ROWS_PER_TASK).min(self.rows);
                let mut r = r0;
                // the 32-value types: tiles of rows × tokens (each weight
                // block unpacked once for all the tile's tokens, each
                // activation block loaded once for all its rows). Two rows ×
                // four tokens with AVX2's 16 registers (measured against 4 × 2
                // and 1 × 8 on the Gemma output shape: 0.64× and 0.88× the
                // time); three × eight with AVX-512's 32 (Gemma 3 270M, a
                // 384-token prompt: 302–308 against 282–286 tokens/s for
                // 2 × 4, 292–295 for 4 × 4).
                if !self.ty.is_k() && kernels == Kernels::Avx512 && a32.len() >= 8 {
                    r = self.tiles::<3, 8>(kernels, a32, &acts, r, r1, &put);
                } else if !self.ty.is_k() && a32.len() >= 4 {
                    r = self.tiles::<2, 4>(kernels, a32, &acts, r, r1, &put);
                }
                // the rest: each weight row stays in L1 across the tokens,
                // each block unpacked once for up to four tokens
                for r in r..r1 {
                    let w = self.row(r);
                    let mut t0 = 0;
                    while t0 < acts.len() {
                        let n = (acts.len() - t0).min(4);
                        let a = &acts[t0..t0 + n];
                        let mut v = [0f32; 4];
                        match n {
                            4 => v = dots::<4>(kernels, self.ty, w, &[a[0], a[1], a[2], a[3]]),
                            3 => v[..3].copy_from_slice(&dots::<3>(
                                kernels,
                                self.ty,
                                w,
                                &[a[0], a[1], a[2]],
                            )),
                            2 => v[..2].copy_from_slice(&dots::<2>(
                                kernels,
                                self.ty,
                                w,
                                &[a[0], a[1]],
                            )),
                            _ => v[0] = dots::<1>(kernels, self.ty, w, &[a[0]])[0],
                        }
                        for (j, v) in v.iter().take(n).enumerate() {
                            put(t0 + j, r, *v);
                        }
                        t0 += n;
                    }
                }
            }
        });
    }

    /// The prompt on packed rows: each group of eight rows against the
    /// tokens in tiles of eight, then four, then one (the same values).
    fn matmul_packed(&self, isa: PackIsa, a32: &[Vec<Act32>], a256: &[Vec<Act256>], out: &OutPtr) {
        let groups = self.rows / packed::GROUP;
        let tokens = a32.len().max(a256.len());
        let tasks = groups.div_ceil(GROUPS_PER_TASK);
        crate::llm::pool::decode_pool().run(tasks, |range| {
            let put = |t: usize, g: usize, v: &[f32; 8]| {
                // SAFETY: group g's rows are written by the task owning it only.
                unsafe {
                    let p = out.0.add(t * self.rows + g * packed::GROUP);
                    std::ptr::copy_nonoverlapping(v.as_ptr(), p, packed::GROUP);
                }
            };
            for task in range {
                let g1 = ((task + 1) * GROUPS_PER_TASK).min(groups);
                for g in task * GROUPS_PER_TASK..g1 {
                    let mut t = 0;
                    // tokens a tile: as many as keep the accumulators in
                    // registers (AVX-512's 32 hold 8 for the 32-value types
                    // and 4 for the K types, which keep three a token;
                    // AVX2's 16 half that)
                    let tile = match (self.ty.is_k(), isa == PackIsa::Vnni) {
                        (false, true) => 8,
                        (false, false) | (true, true) => 4,
                        (true, false) => 2,
                    };
                    while t + tile <= tokens {
                        match tile {
                            8 => {
                                let v = self.group_tile::<8>(isa, g, a32, a256, t);
                                v.iter().enumerate().for_each(|(j, v)| put(t + j, g, v));
                            }
                            4 => {
                                let v = self.group_tile::<4>(isa, g, a32, a256, t);
                                v.iter().enumerate().for_each(|(j, v)| put(t + j, g, v));
                            }
                            _ => {
                                let v = self.group_tile::<2>(isa, g, a32, a256, t);
                                v.iter().enumerate().for_each(|(j, v)| put(t + j, g, v));
                            }
                        }
                        t += tile;
                    }
                    for t in t..tokens {
                        put(t, g, &self.group_tile::<1>(isa, g, a32, a256, t)[0]);
                    }
                }
            }
        });
    }

    /// [`Self::matmul_with`] on the best kernels this CPU has.
    pub fn matmul(&self, x: &[f32], t: usize, out: &mut [f32]) {
        self.matmul_with(Kernels::detect(), x, t, out)
    }
}
