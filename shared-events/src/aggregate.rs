//! The contract between a domain's aggregate and the command engine.
//!
//! A domain implements [`Aggregate`] on its command-side state: how a request body becomes a
//! command, how a command on the current state is decided into an event payload, how an event
//! changes the state, and how an event is built around a payload. The engine does everything
//! else (routing, `Idempotency-Key`, `If-Match`, locking, encoding, the transactional commit and
//! the answer) the same way for every aggregate, and knows none of them by name.
//!
//! Nothing here touches Kafka, a store or HTTP, so a domain is testable with plain values.

use std::hash::Hash;

use crate::event::{AvroEvent, EventEnvelope};

/// One command an aggregate accepts, as the engine routes, counts and documents it.
#[derive(Debug, Clone, Copy)]
pub struct CommandSpec {
    /// The command's name (`pay`): what metrics count and idempotency receipts remember.
    pub name: &'static str,
    /// The route below the aggregate: `None` for a command that creates one
    /// (`POST /orders`), else the last path segment (`payment` for `POST /orders/{id}/payment`).
    pub segment: Option<&'static str>,
    /// One line for the API documentation.
    pub summary: &'static str,
    /// The request body's schema for the API documentation: its name and the schema.
    pub body_schema: fn() -> (
        String,
        utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
    ),
}

/// A request body type's schema, named, for [`CommandSpec::body_schema`].
pub fn body_schema<T: utoipa::ToSchema>() -> (
    String,
    utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
) {
    (T::name().into_owned(), T::schema())
}

impl CommandSpec {
    /// Whether the command creates its aggregate (the others need one that exists).
    pub const fn creates(&self) -> bool {
        self.segment.is_none()
    }
}

/// A domain's aggregate, as the command engine runs it. Implemented on the state the command
/// side keeps of one aggregate: just enough to decide commands.
pub trait Aggregate:
    Sized + Send + Sync + serde::Serialize + serde::de::DeserializeOwned + 'static
{
    /// The aggregate's events, as they travel on its topic.
    type Event: AvroEvent + EventEnvelope + Send + Sync + 'static;
    /// A validated command.
    type Command: Send + Sync + 'static;
    /// What an event says happened, without its envelope.
    type Payload: Hash + Send + Sync + 'static;

    /// Its name in the singular (`order`): answers carry `<NAME>_id`, problems name it.
    const NAME: &'static str;
    /// Its collection (`orders`): the URL prefix and the default topic.
    const COLLECTION: &'static str;
    /// Every command it accepts.
    const COMMANDS: &'static [CommandSpec];

    /// Parses and validates the body of the command named `command` (one of [`Self::COMMANDS`]).
    fn parse(command: &'static str, body: &[u8]) -> Result<Self::Command, CommandError>;

    /// The id a creating command chooses for its aggregate, if it names one (otherwise the
    /// engine makes one up).
    fn chosen_id(command: &Self::Command) -> Option<&str> {
        let _ = command;
        None
    }

    /// The payload `command` asks for. [`Aggregate::decide`] yields exactly this when it accepts
    /// the command, so it can be recomputed from the log: it is what makes two requests "the
    /// same" for an `Idempotency-Key`, before and after a restart.
    fn requested(command: &Self::Command) -> Self::Payload;

    /// The payload of the event `command` yields on an aggregate in `state` (None: none yet),
    /// or why the command breaks a rule.
    fn decide(state: Option<&Self>, command: &Self::Command) -> Result<Self::Payload, Rejection>;

    /// The state after `event`, or None when the event cannot follow `state`.
    fn evolve(state: Option<&Self>, event: &Self::Event) -> Option<Self>;

    /// The event that records `payload` as version `version` of aggregate `id`.
    fn event(
        metadata: EventMetadata,
        id: &str,
        version: i64,
        payload: Self::Payload,
    ) -> Self::Event;

    /// The payload an event carries.
    fn payload(event: &Self::Event) -> &Self::Payload;

    /// The name of the command that writes events like `event`.
    fn command_of(event: &Self::Event) -> &'static str;
}

/// Who and when, for the envelope of an event being decided.
#[derive(Debug, Clone)]
pub struct EventMetadata {
    pub event_id: String,
    pub occurred_at_ms: i64,
    pub command_id: String,
    pub idempotency_key: Option<String>,
    pub correlation_id: String,
}

/// One field that failed validation, named by its JSON path (`items[1].quantity`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Why a body is not a command.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    /// Not JSON at all, or not a JSON object.
    #[error("{0}")]
    Malformed(String),
    /// JSON of the wrong shape or with values out of range.
    #[error("{} field(s) are invalid", .0.len())]
    Invalid(Vec<FieldError>),
}

/// A command that breaks a rule of the aggregate's life cycle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Rejection(pub String);
