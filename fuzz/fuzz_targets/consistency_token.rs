//! Any `Consistency-Token` header: it parses or is refused, never panics, and a token that
//! parses prints back to a token that parses to the same position.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shared_events::ConsistencyToken;

fuzz_target!(|text: &str| {
    if let Ok(token) = text.parse::<ConsistencyToken>() {
        let again: ConsistencyToken = token.to_string().parse().unwrap();
        assert_eq!(again.topic, token.topic);
        assert_eq!(again.position, token.position);
    }
});
