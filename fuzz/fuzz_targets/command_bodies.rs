//! Any request body, for every command of every aggregate: parsing answers a command or a
//! problem, and never panics.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shared_events::Aggregate;

fn parse_all<A: Aggregate>(body: &[u8]) {
    for spec in A::COMMANDS {
        let _ = A::parse(spec.name, body);
    }
}

fuzz_target!(|body: &[u8]| {
    parse_all::<orders::commands::OrderState>(body);
    parse_all::<customers::commands::CustomerState>(body);
});
