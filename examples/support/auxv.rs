//! Shared by the `memory` and `idle` examples (included with `#[path]`; not an example itself).

/// A value of the ELF auxiliary vector (`/proc/self/auxv`: pairs of native-endian words).
pub fn auxv(key: u64) -> Option<u64> {
    let raw = std::fs::read("/proc/self/auxv").ok()?;
    raw.chunks_exact(16)
        .map(|pair| {
            let word = |b: &[u8]| u64::from_ne_bytes(b.try_into().expect("8 bytes"));
            (word(&pair[..8]), word(&pair[8..]))
        })
        .find(|&(k, _)| k == key)
        .map(|(_, v)| v)
}
