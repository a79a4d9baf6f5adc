//! ISA features: the flags buyers ask about, and the x86-64 psABI level the flags reach.

use std::collections::BTreeSet;

/// ISA features that matter to buyers, in the order they are reported (kernel flag spellings).
pub const BUYER_FEATURES: &[&str] = &[
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "bmi2",
    "avx512f",
    "avx512dq",
    "avx512cd",
    "avx512bw",
    "avx512vl",
    "avx512ifma",
    "avx512vbmi",
    "avx512_vbmi2",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "aes",
    "vaes",
    "pclmulqdq",
    "vpclmulqdq",
    "sha_ni",
    "gfni",
    "rdrand",
    "rdseed",
    "sgx",
    "sev",
    "sev_snp",
    "tdx_guest",
    // aarch64 spellings
    "asimd",
    "sve",
    "sve2",
    "sha2",
    "sha3",
];

/// Flags each x86-64 psABI level adds, in kernel spellings (`pni` is SSE3, `abm` is LZCNT).
pub(super) const X86_64_LEVELS: [(u8, &[&str]); 4] = [
    (1, &["cmov", "cx8", "fpu", "fxsr", "mmx", "sse", "sse2"]),
    (
        2,
        &[
            "cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3",
        ],
    ),
    (
        3,
        &[
            "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave",
        ],
    ),
    (
        4,
        &["avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"],
    ),
];

/// The highest x86-64 psABI level whose flags (and all lower levels' flags) are present.
pub fn x86_64_level(flags: &BTreeSet<&str>) -> u8 {
    let mut level = 0;
    for (candidate, required) in X86_64_LEVELS {
        if required.iter().all(|flag| flags.contains(flag)) {
            level = candidate;
        } else {
            break;
        }
    }
    level.max(1)
}
