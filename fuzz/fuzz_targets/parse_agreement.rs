//! Any request body, for every command of every aggregate: the fast parse alone accepts exactly
//! what the thorough parse accepts, as the same command. The property tests hold the two to
//! each other on generated bodies of the right shape; this reaches the shapes nobody thought of.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    if let Err(disagreement) = orders::commands::fast_and_thorough_agree(body) {
        panic!("{disagreement}: {}", String::from_utf8_lossy(body));
    }
    if let Err(disagreement) = customers::commands::fast_and_thorough_agree(body) {
        panic!("{disagreement}: {}", String::from_utf8_lossy(body));
    }
});
