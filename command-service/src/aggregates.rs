//! The aggregates this service runs: each domain's command-side state plugged into the write
//! model.

use orders::commands::OrderState;
use orders::events::OrderEvent;

use crate::write_model::Aggregate;

impl Aggregate for OrderState {
    type Event = OrderEvent;

    fn evolve(state: Option<&Self>, event: &OrderEvent) -> Option<Self> {
        orders::commands::evolve(state, &event.payload)
    }
}
