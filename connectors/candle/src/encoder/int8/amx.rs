//! The int8 tile on AMX: `tdpbusd` over 16-row tiles, two of them a call.

use std::arch::asm;
use std::arch::x86_64::*;

#[repr(C, align(64))]
struct Config([u8; 64]);

static CONFIG: Config = {
    let mut c = [0u8; 64];
    c[0] = 1; // palette 1
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = 64; // bytes per row
        c[48 + t] = 16; // rows
        t += 1;
    }
    Config(c)
};

pub(super) unsafe fn configure() {
    asm!("ldtilecfg [{0}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly));
}

/// `rows` ≤ 32 rows against a 32-column panel: C tiles 0–3 (rows 0–15 and
/// 16–31 × columns 0–15 and 16–31), A tiles 4–5, B tiles 6–7. Each step
/// takes 64 bytes of the rows (16 groups of 4 inputs) and 16 groups of the
/// panel (128 bytes apart: the panel holds 32 columns a group).
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn tile(rows: usize, steps: usize, o: super::Operands) {
    let (a, lda, b, t) = (o.a, o.lda, o.b, o.t);
    let (sw, ws, a_scale, a_min) = (o.sw, o.ws, o.a_scale, o.a_min);
    let two = rows > 16;
    asm!("tilezero tmm0", "tilezero tmm1", options(nostack, nomem));
    if two {
        asm!("tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
    }
    for s in 0..steps {
        let ap = a.add(s * 64);
        let bp = b.add(s * 16 * 128);
        asm!(
            "tileloadd tmm4, [{a} + {lda}*1]",
            "tileloadd tmm6, [{b} + {ldb}*1]",
            "tileloadd tmm7, [{b2} + {ldb}*1]",
            "tdpbusd tmm0, tmm4, tmm6",
            "tdpbusd tmm1, tmm4, tmm7",
            a = in(reg) ap,
            lda = in(reg) lda,
            b = in(reg) bp,
            b2 = in(reg) bp.add(64),
            ldb = in(reg) 128usize,
            options(nostack, readonly),
        );
        if two {
            asm!(
                "tileloadd tmm5, [{a} + {lda}*1]",
                "tdpbusd tmm2, tmm5, tmm6",
                "tdpbusd tmm3, tmm5, tmm7",
                a = in(reg) ap.add(16 * lda),
                lda = in(reg) lda,
                options(nostack, readonly),
            );
        }
    }
    #[repr(C, align(64))]
    struct Acc([i32; 32 * 32]);
    let mut acc = Acc([0; 32 * 32]);
    let c = acc.0.as_mut_ptr();
    asm!(
        "tilestored [{c0} + {ld}*1], tmm0",
        "tilestored [{c1} + {ld}*1], tmm1",
        c0 = in(reg) c,
        c1 = in(reg) c.add(16),
        ld = in(reg) 128usize,
        options(nostack),
    );
    if two {
        asm!(
            "tilestored [{c0} + {ld}*1], tmm2",
            "tilestored [{c1} + {ld}*1], tmm3",
            c0 = in(reg) c.add(16 * 32),
            c1 = in(reg) c.add(16 * 32 + 16),
            ld = in(reg) 128usize,
            options(nostack),
        );
    }
    for i in 0..rows {
        let acc0 = _mm512_load_si512(c.add(i * 32) as *const _);
        let acc1 = _mm512_load_si512(c.add(i * 32 + 16) as *const _);
        let (sa, ma) = (*a_scale.add(i), *a_min.add(i));
        super::scale_back(acc0, acc1, sw, ws, sa, ma, t.add(i * 32));
    }
}
