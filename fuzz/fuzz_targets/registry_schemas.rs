//! Any two schema texts and a compatibility level, as a client could send them to the
//! registry: parsing never panics; a schema's normalized form parses back to itself (same form,
//! same identity, hence the same id); the check never panics, and finds every schema
//! compatible with itself at every level.
//!
//! Input: one byte for the level, then the two texts split at the first `0xFF` byte (never
//! part of UTF-8), so that seeds are schema files laid end to end.

#![no_main]

use libfuzzer_sys::fuzz_target;
use schema_registry::fuzzing::{CompatibilityLevel, check_texts, normalize};

fuzz_target!(|data: &[u8]| {
    let Some((&level, rest)) = data.split_first() else {
        return;
    };
    let level = CompatibilityLevel::ALL[usize::from(level) % CompatibilityLevel::ALL.len()];
    let (first, second) = match rest.iter().position(|b| *b == 0xFF) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let (Ok(first), Ok(second)) = (std::str::from_utf8(first), std::str::from_utf8(second)) else {
        return;
    };
    for raw in [first, second] {
        if let Ok((normalized, identity)) = normalize(raw) {
            let again = normalize(&normalized).expect("a normalized schema parses");
            assert_eq!(
                again,
                (normalized.clone(), identity),
                "normalization is stable"
            );
            let own = check_texts(level, &normalized, &[&normalized]).expect("it parses");
            assert!(
                own.is_empty(),
                "{normalized} is incompatible with itself: {own:?}"
            );
        }
    }
    let _ = check_texts(level, first, &[second]);
    let _ = check_texts(level, second, &[first, second]);
});
