//! Self-attention over unpadded sequences: one task per (sequence, head).
//! No batch × heads × L × L tensor exists: a task packs its head's keys and
//! values into the matrix kernel's panel layout, then takes its queries `MR`
//! rows at a time: scores (`MR × L`, the kernel with k = head width),
//! softmax, then those rows of the output (the kernel with k = L).

use std::cell::RefCell;

use rayon::prelude::*;

use super::gemm::{Aligned, Isa};
use super::kernels::kernel;
use super::math;

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only to hand disjoint (rows, head columns) blocks to rayon tasks.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    // A method, so closures capture the wrapper (Send) rather than its field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Per-thread buffers: packed keys, packed values, a block of score rows, a tile.
#[derive(Default)]
struct Scratch {
    keys: Option<Aligned>,
    values: Option<Aligned>,
    scores: Vec<f32>,
}

fn ensure(buf: &mut Option<Aligned>, len: usize) -> &mut [f32] {
    if buf.as_ref().is_none_or(|b| b.as_slice().len() < len) {
        *buf = Some(Aligned::zeros(len.next_power_of_two()));
    }
    buf.as_mut().map(|b| b.as_mut_slice()).unwrap_or_default()
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
    #[cfg(target_arch = "x86_64")]
    static AMX_SCRATCH: RefCell<super::attention_amx::Scratch> = RefCell::new(Default::default());
}

/// `ctx[t, h·d..(h+1)·d] = softmax(q_t · Kᵀ) · V` within each sequence, for
/// `qkv` rows laid out `[q (H) | k (H) | v (H)]`, queries already scaled by
/// 1/√d. `starts` holds each sequence's first token row, then the total.
/// `bf16`: on AMX tiles in bf16 (only when [`super::attention_amx::usable`]).
pub fn attend(
    qkv: &[f32],
    ctx: &mut [f32],
    starts: &[usize],
    hidden: usize,
    heads: usize,
    isa: Isa,
    bf16: bool,
) {
    let d = hidden / heads;
    let seqs = starts.len() - 1;
    let out = SendPtr(ctx.as_mut_ptr());
    let total = starts[seqs];
    assert!(qkv.len() >= total * 3 * hidden && ctx.len() >= total * hidden);
    (0..seqs * heads).into_par_iter().for_each(|task| {
        let (s, h) = (task / heads, task % heads);
        let (t0, t1) = (starts[s], starts[s + 1]);
        if t1 == t0 {
            return;
        }
        let job = HeadJob {
            qkv,
            out: out.get(),
            t0,
            len: t1 - t0,
            hidden,
            col: h * d,
            d,
        };
        #[cfg(target_arch = "x86_64")]
        if bf16 {
            AMX_SCRATCH.with(|cell| {
                // SAFETY: the caller checked `usable(d)`; rows t0..t1, columns
                // h·d..(h+1)·d of ctx belong to this task.
                unsafe { super::attention_amx::head(job, &mut cell.borrow_mut()) };
            });
            return;
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = bf16;
        SCRATCH.with(|cell| {
            // SAFETY: rows t0..t1, columns h·d..(h+1)·d of ctx belong to this task.
            unsafe { head(job, isa, &mut cell.borrow_mut()) };
        });
    });
}

/// One (sequence, head) of [`attend`]: rows `t0..t0+len` of `qkv` (laid out
/// `[q | k | v]`, each `hidden` wide, queries scaled by 1/√d), head columns
/// `col..col+d`, written to `out`, the `tokens × hidden` context.
#[derive(Clone, Copy)]
pub(super) struct HeadJob<'a> {
    pub qkv: &'a [f32],
    pub out: *mut f32,
    pub t0: usize,
    pub len: usize,
    pub hidden: usize,
    pub col: usize,
    pub d: usize,
}

/// One (sequence, head).
///
/// # Safety
/// No other thread writes `job`'s rows `t0..t0+len` of `out` at columns
/// `col..col+d`.
unsafe fn head(job: HeadJob<'_>, isa: Isa, scratch: &mut Scratch) {
    let (qkv, out, t0, len) = (job.qkv, job.out, job.t0, job.len);
    let (hidden, col, d) = (job.hidden, job.col, job.d);
    let (mr, nr) = (isa.mr(), isa.nr());
    let row = 3 * hidden;
    let key_panels = len.div_ceil(nr);
    let val_panels = d.div_ceil(nr);
    let lpad = key_panels * nr;
    // Keys as panels of nr keys: panel p holds, for each c < d, keys p·nr.. side by side.
    let keys = ensure(&mut scratch.keys, key_panels * d * nr);
    for j in 0..len {
        let k = &qkv[(t0 + j) * row + hidden + col..][..d];
        let (p, lane) = (j / nr, j % nr);
        for (c, v) in k.iter().enumerate() {
            keys[(p * d + c) * nr + lane] = *v;
        }
    }
    // the padding lanes of the last panel score 0 and are never read after
    let last = key_panels - 1;
    for c in 0..d {
        keys[(last * d + c) * nr + (len - last * nr)..(last * d + c + 1) * nr].fill(0.0);
    }
    // Values as panels of nr columns: panel p holds, for each key j, columns p·nr..
    let values = ensure(&mut scratch.values, val_panels * lpad * nr);
    for p in 0..val_panels {
        let cols = nr.min(d - p * nr);
        for j in 0..len {
            let v = &qkv[(t0 + j) * row + 2 * hidden + col + p * nr..][..cols];
            values[(p * lpad + j) * nr..][..cols].copy_from_slice(v);
        }
        // keys past len have probability 0, but their values must not be NaN
        values[(p * lpad + len) * nr..(p + 1) * lpad * nr].fill(0.0);
    }
    if !d.is_multiple_of(nr) {
        // a partial last panel: its unused columns are never written out
        let p = val_panels - 1;
        let cols = d - p * nr;
        for j in 0..len {
            values[(p * lpad + j) * nr + cols..(p * lpad + j + 1) * nr].fill(0.0);
        }
    }
    if scratch.scores.len() < mr * lpad {
        scratch.scores.resize(mr * lpad, 0.0);
    }
    let scores = &mut scratch.scores;
    let mut tile = [0f32; 12 * 32];
    let mut inv_sum = [0f32; 12];
    let mut i = 0;
    while i < len {
        let rows = mr.min(len - i);
        let q = qkv.as_ptr().add((t0 + i) * row + col);
        for p in 0..key_panels {
            kernel(
                isa,
                rows,
                d,
                q,
                row,
                keys.as_ptr().add(p * d * nr),
                tile.as_mut_ptr(),
            );
            let valid = nr.min(len - p * nr);
            for r in 0..rows {
                let t = &tile[r * nr..][..valid];
                scores[r * lpad + p * nr..][..valid].copy_from_slice(t);
            }
        }
        // unnormalised probabilities; each output row is scaled by 1/Σ below
        for r in 0..rows {
            let s = &mut scores[r * lpad..r * lpad + lpad];
            let max = math::row_max(&s[..len], isa);
            inv_sum[r] = 1.0 / math::exp_sum(&mut s[..len], max, isa);
            s[len..].fill(0.0);
        }
        for p in 0..val_panels {
            let cols = nr.min(d - p * nr);
            kernel(
                isa,
                rows,
                lpad,
                scores.as_ptr(),
                lpad,
                values.as_ptr().add(p * lpad * nr),
                tile.as_mut_ptr(),
            );
            for r in 0..rows {
                let o = std::slice::from_raw_parts_mut(
                    out.add((t0 + i + r) * hidden + col + p * nr),
                    cols,
                );
                for (o, t) in o.iter_mut().zip(&tile[r * nr..][..cols]) {
                    *o = t * inv_sum[r];
                }
            }
        }
        i += rows;
    }
}
