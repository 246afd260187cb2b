//! A toy aggregate for the engine's own tests: a counter that is opened, added to and never
//! goes past a limit. Small enough to read at a glance, and no domain crate in sight.

#![allow(clippy::unwrap_used)]

use apache_avro::types::Value;
use shared_events::event::Fields;
use shared_events::{
    Aggregate, AvroEvent, AvroWriter, CommandError, CommandSpec, Envelope, EventEnvelope,
    EventError, EventMetadata, FieldError, Rejection,
};

pub(crate) const LIMIT: i64 = 100;

/// The command side's counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Counter {
    pub(crate) value: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CounterCommand {
    Open,
    Add(i64),
}

/// `Opened` is 0; any other amount was added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Step {
    pub(crate) amount: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CounterEvent {
    pub(crate) envelope: Envelope,
    pub(crate) step: Step,
}

fn no_schema() -> (
    String,
    utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
) {
    ("Toy".into(), utoipa::openapi::ObjectBuilder::new().into())
}

impl Aggregate for Counter {
    type Event = CounterEvent;
    type Command = CounterCommand;
    type Payload = Step;

    const NAME: &'static str = "counter";
    const COLLECTION: &'static str = "counters";
    const COMMANDS: &'static [CommandSpec] = &[
        CommandSpec {
            name: "open",
            segment: None,
            summary: "Open a counter",
            body_schema: no_schema,
        },
        CommandSpec {
            name: "add",
            segment: Some("additions"),
            summary: "Add to a counter",
            body_schema: no_schema,
        },
    ];

    fn parse(command: &'static str, body: &[u8]) -> Result<CounterCommand, CommandError> {
        match command {
            "open" => Ok(CounterCommand::Open),
            _ => {
                let text = std::str::from_utf8(body)
                    .map_err(|_| CommandError::Malformed("not UTF-8".into()))?;
                match text.trim().parse::<i64>() {
                    Ok(amount) if amount > 0 => Ok(CounterCommand::Add(amount)),
                    _ => Err(CommandError::Invalid(vec![FieldError::new(
                        "amount",
                        "must be a positive integer",
                    )])),
                }
            }
        }
    }

    fn requested(command: &CounterCommand) -> Step {
        match command {
            CounterCommand::Open => Step { amount: 0 },
            CounterCommand::Add(amount) => Step { amount: *amount },
        }
    }

    fn decide(state: Option<&Self>, command: &CounterCommand) -> Result<Step, Rejection> {
        match (state, command) {
            (None, CounterCommand::Open) => Ok(Step { amount: 0 }),
            (Some(_), CounterCommand::Open) => Err(Rejection("already open".into())),
            (None, CounterCommand::Add(_)) => Err(Rejection("not open".into())),
            (Some(counter), CounterCommand::Add(amount)) if counter.value + amount > LIMIT => {
                Err(Rejection("past the limit".into()))
            }
            (Some(_), CounterCommand::Add(amount)) => Ok(Step { amount: *amount }),
        }
    }

    fn evolve(state: Option<&Self>, event: &CounterEvent) -> Option<Self> {
        match (state, event.step.amount) {
            (None, 0) => Some(Self { value: 0 }),
            (Some(counter), amount) if amount > 0 => Some(Self {
                value: counter.value + amount,
            }),
            _ => None,
        }
    }

    fn event(metadata: EventMetadata, id: &str, version: i64, payload: Step) -> CounterEvent {
        CounterEvent {
            envelope: Envelope::new(metadata, id, version),
            step: payload,
        }
    }

    fn payload(event: &CounterEvent) -> &Step {
        &event.step
    }

    fn command_of(event: &CounterEvent) -> &'static str {
        if event.step.amount == 0 {
            "open"
        } else {
            "add"
        }
    }
}

impl EventEnvelope for CounterEvent {
    fn envelope(&self) -> &Envelope {
        &self.envelope
    }
}

impl AvroEvent for CounterEvent {
    const SCHEMA: &'static str = r#"{"type": "record", "name": "CounterEvent", "namespace": "toy", "fields": [
        {"name": "event_id", "type": "string"},
        {"name": "aggregate_id", "type": "string"},
        {"name": "aggregate_version", "type": "long"},
        {"name": "occurred_at", "type": "long"},
        {"name": "command_id", "type": "string"},
        {"name": "idempotency_key", "type": ["null", "string"]},
        {"name": "correlation_id", "type": "string"},
        {"name": "amount", "type": "long"}
    ]}"#;

    fn key(&self) -> &str {
        &self.envelope.aggregate_id
    }

    fn write_avro(&self, w: &mut AvroWriter<'_>) {
        self.envelope.write_avro(w);
        w.long(self.step.amount);
    }

    fn read_avro(r: &mut shared_events::AvroReader<'_>) -> Result<Self, EventError> {
        Ok(Self {
            envelope: Envelope::read_avro(r)?,
            step: Step { amount: r.long()? },
        })
    }

    fn from_avro(value: Value) -> Result<Self, EventError> {
        let mut f = Fields::of(value, "CounterEvent")?;
        Ok(Self {
            envelope: Envelope::from_fields(&mut f)?,
            step: Step {
                amount: f.long("amount")?,
            },
        })
    }
}

/// Version `version` of counter `id`, written by a command with `key`.
pub(crate) fn event(id: &str, version: i64, amount: i64, key: Option<&str>) -> CounterEvent {
    let metadata = EventMetadata {
        event_id: format!("e-{id}-{version}"),
        occurred_at_ms: 1_000 * version,
        command_id: "k".into(),
        idempotency_key: key.map(str::to_owned),
        correlation_id: "c".into(),
    };
    CounterEvent {
        envelope: Envelope::new(metadata, id, version),
        step: Step { amount },
    }
}
