//! Byte comparisons written for an interpreter: eight bytes at a time,
//! for the path and name checks policies make on every event.

/// Whether `s` starts with `prefix`, comparing eight bytes at a time (the
/// byte-at-a-time loop that `<[u8]>::starts_with` compiles to costs about
/// fifteen interpreted instructions per byte).
#[inline]
pub fn has_prefix(s: &[u8], prefix: &[u8]) -> bool {
    match s.get(..prefix.len()) {
        Some(head) => bytes_eq(head, prefix),
        None => false,
    }
}

/// `a == b`, eight bytes at a time (see [`has_prefix`]).
#[inline]
pub fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    #[inline(always)]
    fn word(s: &[u8], at: usize) -> u64 {
        match s.get(at..).and_then(<[u8]>::first_chunk::<8>) {
            Some(w) => u64::from_le_bytes(*w),
            None => 0,
        }
    }
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if n < 8 {
        return a == b;
    }
    let mut i = 0;
    while i + 8 < n {
        if word(a, i) != word(b, i) {
            return false;
        }
        i += 8;
    }
    // The last eight bytes, overlapping what was compared.
    word(a, n - 8) == word(b, n - 8)
}
