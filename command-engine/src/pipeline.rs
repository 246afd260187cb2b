//! The one command flow every aggregate's commands go through, and the routes that lead to it.
//!
//! parse → route to the partition's owner → `Idempotency-Key` claim → lock the aggregate →
//! check `If-Match` → decide → encode → queue → wait (bounded) for the commit → answer.
//!
//! Routing: a command is decided by the instance owning its aggregate's partition. Another
//! instance forwards it there once (the owner answers, `Served-By` names it), and answers `503`
//! while the partition changes owner. A command creating an aggregate with no id of its own gets
//! a new id in a partition owned here, so it is never forwarded; with an `Idempotency-Key`, the
//! new id is in the key's partition instead, so that a retry reaches the instance that knows
//! the key's first answer.
//!
//! Once queued, a command's aftermath belongs to its [`Settlement`]: the aggregate's lock and
//! the idempotency claim are released when the batcher learns the record's fate, even if the
//! request stopped waiting, and a settlement dropped unanswered releases them as "not
//! committed". So an aggregate is never left locked, and a key never left claimed, by a request
//! that went away.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, Resource, web};
use http_edge::Route;
use http_edge::precondition::IfMatch;
use shared_events::{
    Aggregate, CommandSpec, ConsistencyToken, EventEnvelope, EventMetadata, Identifier,
};
use tokio::sync::oneshot;
use tokio::time::{Instant, timeout_at};

use crate::batcher::{Batcher, CommitError, CommitResult, Record};
use crate::circuit::BrokerCircuit;
use crate::idempotency::{Begin, Claim, Receipt};
use crate::lane::{Lane, fingerprint, receipt_of};
use crate::metrics::{CommandLabels, Metrics};
use crate::ownership::Standing;
use crate::problem::ApiError;
use crate::write_model::{LockedSlot, WriteModel};
use partition_routing::forward::{FORWARDED_BY, Forwarder};

/// What every aggregate's commands share.
#[derive(Debug)]
pub struct Engine {
    pub batcher: Arc<Batcher>,
    pub circuit: Arc<BrokerCircuit>,
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: usize,
    /// From the request's arrival to its answer, body and commit included.
    pub request_timeout: Duration,
    /// This instance's id, as the command group knows it.
    pub instance_id: String,
    /// Sends commands on to the instance owning their partition.
    pub forwarder: Forwarder,
}

/// The path of a command's route: `/orders` or `/orders/{id}/payment`.
pub fn path_of<A: Aggregate>(spec: &CommandSpec) -> String {
    match spec.segment {
        None => format!("/{}", A::COLLECTION),
        Some(segment) => format!("/{}/{{id}}/{segment}", A::COLLECTION),
    }
}

/// The routes of `A`'s commands. Each answers `POST` only (else `405` with `Allow`).
///
/// The method is checked in the handler, not with a route guard: actix's method guards record
/// each method they test in the request's extensions, for their own `Allow` header, which
/// costs an allocation and a drop on every command.
pub fn routes<A: Aggregate>() -> Vec<Route> {
    A::COMMANDS
        .iter()
        .map(|spec| Route {
            path: Cow::Owned(path_of::<A>(spec)),
            methods: &["POST"],
            resource: resource::<A>,
        })
        .collect()
}

/// The command a resource serves, as an index into `A::COMMANDS`.
#[derive(Debug, Clone, Copy)]
struct CommandIndex(usize);

fn resource<A: Aggregate>(path: &str) -> Resource {
    let index = A::COMMANDS
        .iter()
        .position(|spec| path_of::<A>(spec) == path)
        .unwrap_or_default();
    web::resource(path)
        .app_data(CommandIndex(index))
        .to(handle::<A>)
}

async fn handle<A: Aggregate>(
    request: HttpRequest,
    payload: web::Payload,
    engine: web::Data<Engine>,
    lane: web::Data<Lane<A>>,
) -> Result<HttpResponse, ApiError> {
    let index = request.app_data::<CommandIndex>().map_or(0, |i| i.0);
    let spec = &A::COMMANDS[index.min(A::COMMANDS.len().saturating_sub(1))];
    let result = if request.method() == actix_web::http::Method::POST {
        execute(&request, payload, &engine, &lane, spec).await
    } else {
        Err(ApiError::MethodNotAllowed("POST"))
    };
    let status = match &result {
        Ok(response) => response.status().as_u16(),
        Err(error) => actix_web::ResponseError::status_code(error).as_u16(),
    };
    engine
        .metrics
        .commands
        .get_or_create(&CommandLabels {
            command: spec.name,
            status,
            aggregate: A::NAME,
        })
        .inc();
    result
}

async fn execute<A: Aggregate>(
    request: &HttpRequest,
    payload: web::Payload,
    engine: &Engine,
    lane: &Lane<A>,
    spec: &CommandSpec,
) -> Result<HttpResponse, ApiError> {
    let deadline = Instant::now() + engine.request_timeout;
    let target = request.match_info().get("id");
    if let Some(id) = target {
        Identifier::parse(id).map_err(|reason| ApiError::BadId {
            aggregate: A::NAME,
            id: id.to_owned(),
            reason,
        })?;
    }
    let body =
        http_edge::body::read_json(request, payload, engine.max_body_bytes, deadline).await?;
    let command = A::parse(spec.name, &body)?;
    let key = idempotency_key(request)?;
    let if_match = IfMatch::from_request(request)?;
    if engine.circuit.is_open() {
        return Err(ApiError::KafkaUnreachable);
    }

    // The aggregate: named in the path or chosen by the command, else a new time-ordered id.
    let named = target.or_else(|| A::chosen_id(&command));
    let id = named.map_or_else(|| new_id(lane, key.as_deref()), str::to_owned);
    let partition = lane.partition_of(&id);
    let lease = match lane.leases().acquire(partition.number) {
        Ok(lease) => lease,
        Err(standing) => {
            return forward(
                request,
                engine,
                lane,
                partition.number,
                standing,
                body.to_vec(),
            )
            .await;
        }
    };

    let claim = match &key {
        None => None,
        Some(key) => {
            let fingerprint = fingerprint::<A>(spec.name, target, &A::requested(&command));
            match timeout_at(deadline, lane.idempotency().begin(key, fingerprint)).await {
                Err(_) => {
                    return Err(ApiError::Busy(
                        "an earlier attempt with this Idempotency-Key is still in progress",
                    ));
                }
                // A registration that chose another id is another request, even if it asks
                // for the same values (the chosen id is not part of the event's payload).
                Ok(Begin::Replay(receipt))
                    if named.is_some_and(|named| named != receipt.aggregate_id) =>
                {
                    return Err(ApiError::KeyReused);
                }
                Ok(Begin::Replay(receipt)) => return Ok(respond::<A>(lane, &receipt, true)),
                Ok(Begin::Mismatch) => return Err(ApiError::KeyReused),
                Ok(Begin::InDoubt) => return Err(ApiError::OutcomeUnknown),
                Ok(Begin::First(claim)) => Some(claim),
            }
        }
    };

    let model = &partition.model;
    let cell = if spec.creates() && named.is_none() {
        // A time-ordered id generated just now: no store holds it.
        model.create_new(&id)
    } else if spec.creates() {
        model.find_or_create(&id)?
    } else {
        model.find(&id)?.ok_or_else(|| ApiError::Unknown {
            aggregate: A::NAME,
            id: id.clone(),
        })?
    };
    let slot = timeout_at(deadline, cell.lock_owned())
        .await
        .map_err(|_| ApiError::Busy("the aggregate is busy with another command"))?;
    if slot.in_doubt {
        return Err(ApiError::OutcomeUnknown);
    }
    if !spec.creates() && slot.state.is_none() {
        // Known only from a first command that is still failing or failed.
        return Err(ApiError::Unknown {
            aggregate: A::NAME,
            id,
        });
    }
    let current = slot.state.is_some().then_some(slot.version);
    if let Some(precondition) = &if_match
        && !precondition.holds(current)
    {
        model.forget_if_empty(&id, &slot);
        return Err(ApiError::PreconditionFailed {
            aggregate: A::NAME,
            current,
        });
    }
    let payload = match A::decide(slot.state.as_ref(), &command) {
        Ok(payload) => payload,
        Err(rejection) => {
            model.forget_if_empty(&id, &slot);
            return Err(ApiError::Conflict(rejection.0));
        }
    };
    let metadata = EventMetadata {
        event_id: uuid::Uuid::new_v4().to_string(),
        occurred_at_ms: now_ms(),
        command_id: uuid::Uuid::new_v4().to_string(),
        idempotency_key: key,
        correlation_id: header_or_new(request, "x-correlation-id"),
    };
    let event = A::event(metadata, &id, slot.version + 1, payload);
    let value = lane.codec().encode(&event).await.map_err(|error| {
        model.forget_if_empty(&id, &slot);
        ApiError::Encode(error)
    })?;

    let (settled, outcome) = oneshot::channel();
    let settlement = Settlement(Some(Aftermath {
        model: Arc::clone(model),
        slot,
        claim,
        event,
        settled,
    }));
    let on_outcome = Box::new(move |result| settlement.settle(result));
    let record = Record {
        topic: Arc::clone(lane.topic()),
        partition: partition.number,
        key: id,
        value,
        lease: Some(lease),
    };
    if let Err(refused) = engine.batcher.submit(record, on_outcome) {
        // Certainly not written: the settlement releases the aggregate and the key.
        (refused.on_outcome)(Err(CommitError::Aborted(refused.reason.to_string())));
        return Err(refused.reason.into());
    }
    // Kafka lost while the command waits: its batch may yet commit (or may have), so the
    // answer is that the outcome is not known yet, now rather than at the request timeout. The
    // settlement still holds the aggregate and the key until the batch's fate is known.
    let outcome = async {
        tokio::select! {
            outcome = outcome => Some(outcome),
            () = engine.circuit.opened() => None,
        }
    };
    match timeout_at(deadline, outcome).await {
        Ok(Some(Ok(Ok(receipt)))) => Ok(respond::<A>(lane, &receipt, false)),
        Ok(Some(Ok(Err(error)))) => Err(error.into()),
        Ok(Some(Err(_))) => Err(ApiError::ShuttingDown),
        Ok(None) => Err(ApiError::KafkaLost),
        Err(_) => Err(ApiError::CommitTimeout(engine.request_timeout)),
    }
}

/// A new time-ordered id for an aggregate: in the partition of `key` when there is one (a retry
/// must reach the instance holding the key's receipt, and its new id would differ), else in a
/// partition this instance owns, so the command is decided here. Murmur2 spreads ids evenly, so
/// a partition is hit within a few tries; after many misses the last id is used as it is.
fn new_id<A: Aggregate>(lane: &Lane<A>, key: Option<&str>) -> String {
    const TRIES: usize = 256;
    let wanted = key.map(|key| lane.partition_of(key).number);
    let mut id = uuid::Uuid::now_v7().to_string();
    for _ in 0..TRIES {
        let partition = lane.partition_of(&id).number;
        let fits = match wanted {
            Some(wanted) => partition == wanted,
            None => lane.leases().standing(partition) == Standing::Owned,
        };
        if fits {
            break;
        }
        id = uuid::Uuid::now_v7().to_string();
    }
    id
}

/// Sends a command for a partition this instance does not own to the instance that does, at
/// most once, and relays its answer.
async fn forward<A: Aggregate>(
    request: &HttpRequest,
    engine: &Engine,
    lane: &Lane<A>,
    partition: i32,
    standing: Standing,
    body: Vec<u8>,
) -> Result<HttpResponse, ApiError> {
    let handover = |why| ApiError::Handover {
        topic: lane.topic().to_string(),
        partition,
        why,
    };
    match standing {
        Standing::Restoring => return Err(handover("is being restored here")),
        Standing::Releasing => return Err(handover("is being handed over to another instance")),
        Standing::Owned | Standing::Unowned => {}
    }
    if request.headers().contains_key(FORWARDED_BY) {
        return Err(handover(
            "is not owned here (forwarded here from a stale view)",
        ));
    }
    let owner = lane
        .cluster()
        .and_then(|cluster| cluster.view().owner(partition).cloned());
    let owner = match owner {
        Some(owner) if owner.replica_id != engine.instance_id => owner,
        Some(_) => return Err(handover("is being assigned to this instance")),
        None => {
            return Err(handover(
                "has no owner right now (the command group is rebalancing)",
            ));
        }
    };
    let mut headers = vec![("content-type", "application/json")];
    for name in ["idempotency-key", "if-match", "x-correlation-id"] {
        if let Some(value) = request.headers().get(name).and_then(|v| v.to_str().ok()) {
            headers.push((name, value));
        }
    }
    let unreachable =
        |error: partition_routing::forward::ForwardError| ApiError::OwnerUnreachable {
            instance: error.replica.clone(),
            reason: error.source.to_string(),
        };
    engine.metrics.forwarded.inc();
    let response = engine
        .forwarder
        .post(&owner, request.path(), &headers, body)
        .await
        .map_err(unreachable)?;
    engine
        .forwarder
        .relay(&owner, response)
        .await
        .map_err(unreachable)
}

/// A queued command's aftermath, run by the producer worker that learned its record's fate:
/// apply the event to the write model, remember the idempotency receipt, release the aggregate,
/// tell the waiting request. On the worker's thread because it is quick and saves a task and a
/// wake-up per command.
pub(crate) struct Settlement<A: Aggregate>(Option<Aftermath<A>>);

pub(crate) struct Aftermath<A: Aggregate> {
    model: Arc<WriteModel<A>>,
    slot: LockedSlot<A>,
    claim: Option<Claim>,
    event: A::Event,
    settled: oneshot::Sender<Result<Receipt, CommitError>>,
}

impl<A: Aggregate> Settlement<A> {
    fn settle(mut self, result: CommitResult) {
        if let Some(aftermath) = self.0.take() {
            aftermath.settle(result);
        }
    }
}

impl<A: Aggregate> Drop for Settlement<A> {
    /// Dropped unsettled: the worker holding the record died (a record the queue refused is
    /// settled as not written, see [`execute`]). Whether it was written, nobody knows.
    fn drop(&mut self) {
        if let Some(aftermath) = self.0.take() {
            aftermath.settle(Err(CommitError::InDoubt(
                "the producer stopped before answering".into(),
            )));
        }
    }
}

impl<A: Aggregate> Aftermath<A> {
    fn settle(self, result: CommitResult) {
        let Self {
            model,
            mut slot,
            claim,
            event,
            settled,
        } = self;
        let outcome = match result {
            Ok(position) => {
                model.applied_up_to(position.offset + 1);
                if slot.apply(&event) {
                    model.changed(event.aggregate_id());
                } else {
                    tracing::error!(
                        aggregate = A::NAME,
                        id = event.aggregate_id(),
                        "a committed event did not apply to the write model"
                    );
                }
                let receipt = receipt_of::<A>(&event, position);
                if let Some(claim) = claim {
                    claim.committed(receipt.clone(), now_ms());
                }
                Ok(receipt)
            }
            // The event may be in the log: the aggregate takes no command and the key no retry
            // until a restart reads the log and knows.
            Err(error @ CommitError::InDoubt(_)) => {
                tracing::error!(
                    aggregate = A::NAME,
                    id = event.aggregate_id(),
                    %error,
                    "a command's outcome is unknown; its aggregate waits for a restart"
                );
                slot.in_doubt = true;
                model.note_in_doubt();
                if let Some(claim) = claim {
                    claim.in_doubt();
                }
                Err(error)
            }
            Err(error) => {
                model.forget_if_empty(event.aggregate_id(), &slot);
                // Dropping the claim lets a retry with the same key try again.
                drop(claim);
                Err(error)
            }
        };
        drop(slot);
        // A request that stopped waiting (client gone, timed out) is not our failure.
        let _ = settled.send(outcome);
    }
}

/// The success body of every command: `<aggregate>_id`, `version`, `event_id`, `position`.
fn respond<A: Aggregate>(lane: &Lane<A>, receipt: &Receipt, replayed: bool) -> HttpResponse {
    let token = ConsistencyToken {
        topic: lane.topic().to_string(),
        position: receipt.position,
    };
    let mut response = if receipt.created {
        let mut created = HttpResponse::Created();
        created.insert_header((
            header::LOCATION,
            format!("/{}/{}", A::COLLECTION, receipt.aggregate_id),
        ));
        created
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header(("Consistency-Token", token.to_string()))
        .insert_header((header::ETAG, format!("\"{}\"", receipt.version)));
    if replayed {
        response.insert_header(("Idempotent-Replayed", "true"));
    }
    // Written by hand: the name of the id member is the aggregate's.
    let body = format!(
        r#"{{"{}_id":{},"version":{},"event_id":{},"position":{{"partition":{},"offset":{}}}}}"#,
        A::NAME,
        json_string(&receipt.aggregate_id),
        receipt.version,
        json_string(&receipt.event_id),
        receipt.position.partition,
        receipt.position.offset,
    );
    response.content_type("application/json").body(body)
}

/// `text` as a JSON string.
fn json_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// The `Idempotency-Key` header: 1..=255 visible ASCII characters.
fn idempotency_key(request: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = request.headers().get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key)
            if !key.is_empty() && key.len() <= 255 && key.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(Some(key.to_owned()))
        }
        _ => Err(ApiError::BadHeader(
            "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
        )),
    }
}

/// A client-supplied id header (at most 128 visible ASCII characters), or a fresh UUID.
fn header_or_new(request: &HttpRequest, name: &str) -> String {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;
    use std::time::Duration;

    use shared_events::Position;
    use tokio::sync::oneshot;

    use super::{Aftermath, Settlement};
    use crate::batcher::CommitError;
    use crate::idempotency::{Begin, Fingerprint, IdempotencyIndex};
    use crate::toy::{Counter, event};
    use crate::write_model::WriteModel;

    /// Settles a first `open` of counter c-1 under key `k` with `result` (or drops it unsettled
    /// when None); returns the model, the index, and what the waiting request heard.
    async fn settle_open(
        result: Option<crate::batcher::CommitResult>,
    ) -> (
        Arc<WriteModel<Counter>>,
        Arc<IdempotencyIndex>,
        Result<Result<crate::idempotency::Receipt, CommitError>, oneshot::error::RecvError>,
    ) {
        let model = Arc::new(WriteModel::<Counter>::default());
        let index = IdempotencyIndex::new(Duration::from_secs(60), 10);
        let Begin::First(claim) = index.begin("k", open()).await else {
            panic!("expected a first attempt");
        };
        let slot = model.get_or_create("c-1").lock_owned().await;
        let (settled, outcome) = oneshot::channel();
        let settlement = Settlement(Some(Aftermath {
            model: Arc::clone(&model),
            slot,
            claim: Some(claim),
            event: event("c-1", 1, 0, Some("k")),
            settled,
        }));
        match result {
            Some(result) => settlement.settle(result),
            None => drop(settlement),
        }
        (model, index, outcome.await)
    }

    fn open() -> Fingerprint {
        Fingerprint::new("open", None, &1)
    }

    /// A settlement dropped unanswered (its producer worker died with the record): nobody knows
    /// whether the event is in the log, so the request hears "in doubt", the aggregate takes no
    /// command and the key no retry until a restart reads the log; the lock itself is free.
    #[tokio::test]
    async fn a_settlement_dropped_unanswered_is_in_doubt_and_holds_aggregate_and_key() {
        let (model, index, outcome) = settle_open(None).await;
        assert!(matches!(outcome, Ok(Err(CommitError::InDoubt(_)))));
        let cell = model.get("c-1").unwrap();
        let slot = cell.try_lock().unwrap();
        assert!(slot.in_doubt && slot.version == 0);
        assert!(
            matches!(index.begin("k", open()).await, Begin::InDoubt),
            "a retry is told the outcome is unknown"
        );
        assert!(matches!(
            index.begin("k", Fingerprint::new("open", None, &2)).await,
            Begin::Mismatch
        ));
    }

    /// Settled as certainly not written (aborted, or refused by the queue): everything is
    /// released, the new aggregate forgotten and the key free for a retry.
    #[tokio::test]
    async fn a_settlement_not_written_releases_all_it_held() {
        let (model, index, outcome) =
            settle_open(Some(Err(CommitError::Aborted("test".into())))).await;
        assert!(matches!(outcome, Ok(Err(CommitError::Aborted(_)))));
        assert!(
            model.get("c-1").is_none(),
            "the empty aggregate is forgotten"
        );
        assert!(
            matches!(index.begin("k", open()).await, Begin::First(_)),
            "the key is free for a retry"
        );
    }

    /// Settled as committed: the event is applied, the receipt remembered for the key.
    #[tokio::test]
    async fn a_committed_settlement_applies_the_event_and_keeps_the_receipt() {
        let model = Arc::new(WriteModel::<Counter>::default());
        let index = IdempotencyIndex::new(Duration::from_secs(60), 10);
        let fingerprint = || Fingerprint::new("open", None, &1);
        let Begin::First(claim) = index.begin("k", fingerprint()).await else {
            panic!("expected a first attempt");
        };
        let slot = model.get_or_create("c-1").lock_owned().await;
        let (settled, outcome) = oneshot::channel();
        let settlement = Settlement(Some(Aftermath {
            model: Arc::clone(&model),
            slot,
            claim: Some(claim),
            event: event("c-1", 1, 0, Some("k")),
            settled,
        }));
        let position = Position {
            partition: 2,
            offset: 7,
        };

        settlement.settle(Ok(position));

        let receipt = outcome.await.unwrap().unwrap();
        assert_eq!((receipt.version, receipt.position), (1, position));
        assert!(receipt.created);
        let slot = model.get("c-1").unwrap().lock_owned().await;
        assert_eq!(slot.version, 1);
        assert!(slot.state.is_some());
        assert!(matches!(
            index.begin("k", fingerprint()).await,
            Begin::Replay(_)
        ));
    }

    /// An aborted commit of an existing aggregate's command leaves its state as it was.
    #[tokio::test]
    async fn an_aborted_settlement_changes_nothing() {
        let model = Arc::new(WriteModel::<Counter>::default());
        model.apply_from_log(&event("c-1", 1, 0, None)).unwrap();
        let slot = model.get("c-1").unwrap().lock_owned().await;
        let (settled, outcome) = oneshot::channel();
        Settlement(Some(Aftermath {
            model: Arc::clone(&model),
            slot,
            claim: None,
            event: event("c-1", 2, 5, None),
            settled,
        }))
        .settle(Err(CommitError::Aborted("test".into())));

        assert!(matches!(outcome.await, Ok(Err(CommitError::Aborted(_)))));
        let slot = model.get("c-1").unwrap().lock_owned().await;
        assert_eq!((slot.version, slot.state), (1, Some(Counter { value: 0 })));
    }
}
