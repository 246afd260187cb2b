//! Live streams, as a domain describes them: which streams an event belongs to, and how it
//! shows there. The projection engine tails the topics, keeps every stream's history, and serves
//! the streams over Server-Sent Events, resumable on any replica.
//!
//! A domain implements [`Timeline`]: it places each event of its topics into the streams it
//! belongs to (an order's, and its customer's), reading and staging through [`Views`] and
//! [`Changes`] what later events need to be placed (which customer an order belongs to), and
//! renders it as an explicit JSON object: never the Avro record.

use crate::Envelope;
use crate::view::{Changes, ViewError, Views};

/// One stream clients follow: `("orders", "o-1")` is order o-1's events, `("customers", "c-1")`
/// customer c-1's events and their orders'.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    pub collection: &'static str,
    pub id: String,
}

/// An event as its streams show it: the SSE message's `event:` and `data:`.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveEvent {
    /// `OrderPlaced`, `CustomerRegistered`, …
    pub event_type: &'static str,
    /// One JSON object: the envelope's fields ([`envelope_json`]) and the payload's.
    pub data: serde_json::Map<String, serde_json::Value>,
    /// The streams it belongs to.
    pub streams: Vec<StreamKey>,
}

/// A kind of stream: its route, and where its events come from.
#[derive(Debug, Clone, Copy)]
pub struct StreamSpec {
    /// The streams' collection, as in their [`StreamKey`]s.
    pub collection: &'static str,
    /// The route, with the id as its one parameter: `/orders/{id}/events`.
    pub path: &'static str,
    /// The topic (of [`Timeline::TOPICS`]) whose partition of the id holds the stream's own
    /// events.
    pub keyed_on: &'static str,
    /// Topics any partition of which may hold events of the stream (a customer's orders are
    /// spread over every orders partition).
    pub spans: &'static [&'static str],
    /// The event types its streams carry (the SSE `event:` names), for the live page.
    pub event_types: &'static [&'static str],
    /// A page that follows one stream in a browser, with the id as its one parameter
    /// (`/live/orders/{id}`), or none.
    pub page: Option<&'static str>,
    /// What the API document says of it.
    pub summary: &'static str,
}

/// How a domain's events become live streams.
pub trait Timeline: Send + Sync + 'static {
    /// What it is fed: one topic's event type, or an enum over several topics' types.
    type Event: Send + Sync;

    /// Its namespace in the store, apart from every read model's.
    const NAMESPACE: &'static str;

    /// The version of what it stores; bump it whenever `place` changes what it writes.
    const VERSION: u32;

    /// The topics it reads, each named by the collection of the aggregate whose events it
    /// carries (`orders`, `customers`).
    const TOPICS: &'static [&'static str];

    /// The kinds of stream it serves.
    const STREAMS: &'static [StreamSpec];

    /// The event as its streams show it, and which streams those are (none: it is shown
    /// nowhere). May read and stage what later events need to be placed.
    fn place(
        &self,
        views: &dyn Views,
        changes: &mut dyn Changes,
        event: &Self::Event,
    ) -> Result<Option<LiveEvent>, ViewError>;
}

/// The envelope's fields every live event shows: `aggregate_id`, `version`, `event_id`,
/// `occurred_at` (RFC 3339, UTC, milliseconds) and `correlation_id`.
pub fn envelope_json(envelope: &Envelope) -> serde_json::Map<String, serde_json::Value> {
    let mut data = serde_json::Map::new();
    data.insert("aggregate_id".into(), envelope.aggregate_id.clone().into());
    data.insert("version".into(), envelope.aggregate_version.into());
    data.insert("event_id".into(), envelope.event_id.clone().into());
    data.insert(
        "occurred_at".into(),
        rfc3339_millis(envelope.occurred_at_ms).into(),
    );
    data.insert(
        "correlation_id".into(),
        envelope.correlation_id.clone().into(),
    );
    data
}

/// Milliseconds since the epoch as RFC 3339 UTC with milliseconds.
pub fn rfc3339_millis(ms: i64) -> String {
    // RFC 3339 ends at 9999-12-31T23:59:59.999Z; later times show as that.
    let ms = u64::try_from(ms).unwrap_or(0).min(253_402_300_799_999);
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_outside_rfc3339_show_at_its_ends() {
        assert_eq!(rfc3339_millis(-1), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(i64::MAX), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn the_envelope_shows_as_the_product_names_it() {
        let envelope = Envelope {
            event_id: "e-1".into(),
            aggregate_id: "o-1".into(),
            aggregate_version: 2,
            occurred_at_ms: 1_700_000_000_123,
            command_id: "c".into(),
            idempotency_key: None,
            correlation_id: "r-1".into(),
        };
        let data = serde_json::Value::Object(envelope_json(&envelope));
        assert_eq!(
            data,
            serde_json::json!({
                "aggregate_id": "o-1", "version": 2, "event_id": "e-1",
                "occurred_at": "2023-11-14T22:13:20.123Z", "correlation_id": "r-1"
            })
        );
    }
}
