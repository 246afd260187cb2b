//! HTTP routes of the command service and the one command flow they share.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use futures::StreamExt;
use orders::events::OrderEvent;
use shared_events::{ConsistencyToken, EventCodec, Identifier, Position};
use tokio::sync::oneshot;
use tokio::time::{Instant, timeout_at};

use crate::batcher::{Batcher, CommitError, CommitResult};
use crate::circuit::BrokerCircuit;
use crate::idempotency::{Begin, Claim, Fingerprint, IdempotencyIndex, Receipt};
use crate::metrics::{CommandLabels, Metrics};
use crate::problem::ApiError;
use crate::write_model::{LockedSlot, WriteModel};
use http_edge::Route;
use http_edge::routes::readable;
use orders::commands::{
    CancelOrder, CommandKind, EventMetadata, OrderCommand, OrderState, PayOrder, PlaceOrder,
    ShipOrder, decide,
};

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    pub codec: Arc<EventCodec<OrderEvent>>,
    pub batcher: Arc<Batcher>,
    pub model: Arc<WriteModel<OrderState>>,
    pub idempotency: Arc<IdempotencyIndex>,
    pub metrics: Arc<Metrics>,
    pub topic: String,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub registry_url: String,
    pub http: reqwest::Client,
    pub circuit: Arc<BrokerCircuit>,
}

/// Every route answers the methods it does not serve with `405` and an `Allow` header; a `GET`
/// route serves `HEAD` too (actix sends the headers without the body).
///
/// The command routes check their method in the handler ([`post_only`]), not with a route
/// guard: actix's method guards record each method they test in the request's extensions, for
/// their own `Allow` header, which costs an allocation and a drop on every command.
pub fn routes(config: &mut web::ServiceConfig) {
    http_edge::routes::register(&ROUTES, config);
}

/// Every route this service serves; the router is built from it and the OpenAPI document
/// ([`crate::openapi`]) is held to it.
pub const ROUTES: [Route; 9] = [
    Route {
        path: "/orders",
        methods: &["POST"],
        resource: |path| web::resource(path).to(place_order),
    },
    Route {
        path: "/orders/{id}/payment",
        methods: &["POST"],
        resource: |path| web::resource(path).to(pay_order),
    },
    Route {
        path: "/orders/{id}/shipment",
        methods: &["POST"],
        resource: |path| web::resource(path).to(ship_order),
    },
    Route {
        path: "/orders/{id}/cancellation",
        methods: &["POST"],
        resource: |path| web::resource(path).to(cancel_order),
    },
    Route {
        path: "/health/live",
        methods: &["GET"],
        resource: |path| readable(path, http_edge::health::live),
    },
    Route {
        path: "/health/ready",
        methods: &["GET"],
        resource: |path| readable(path, ready),
    },
    Route {
        path: "/metrics",
        methods: &["GET"],
        resource: |path| readable(path, metrics),
    },
    http_edge::docs::ROUTES[0],
    http_edge::docs::ROUTES[1],
];

/// Ready when a producer is initialised, the schema registry answers and Kafka is reachable.
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "operations",
    summary = "Readiness: producers initialised and the schema registry reachable",
    responses(
        (status = 200, description = "Ready", content_type = "application/json"),
        (status = 503, description = "Not ready (with Retry-After)", content_type = "application/json")
    )
)]
async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let producers = state.batcher.live_producers();
    let registry = state
        .http
        .get(format!(
            "{}/config",
            state.registry_url.trim_end_matches('/')
        ))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    let kafka = !state.circuit.is_open();
    let ready = producers > 0 && registry && kafka;
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not ready" },
        "live_producers": producers,
        "registry_reachable": registry,
        "kafka_reachable": kafka,
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable()
            .insert_header((header::RETRY_AFTER, "2"))
            .json(body)
    }
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus / OpenMetrics text",
    responses((status = 200, description = "The metrics", content_type = "application/openmetrics-text"))
)]
async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let m = &state.metrics;
    m.queue_depth
        .set(i64::try_from(state.batcher.queue_depth()).unwrap_or(i64::MAX));
    m.aggregates
        .set(i64::try_from(state.model.len()).unwrap_or(i64::MAX));
    m.idempotency_keys
        .set(i64::try_from(state.idempotency.len()).unwrap_or(i64::MAX));
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(m.render())
}

/// `405` for any method but `POST`.
fn post_only(request: &HttpRequest) -> Result<(), ApiError> {
    if request.method() == actix_web::http::Method::POST {
        Ok(())
    } else {
        Err(ApiError::MethodNotAllowed("POST"))
    }
}

#[utoipa::path(
    post,
    path = "/orders",
    tag = "orders",
    summary = "Place an order",
    description = "Answers 201 only once the OrderPlaced event is in a committed Kafka transaction.",
    params(crate::openapi::CommandHeaders),
    request_body(content = orders::commands::PlaceBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Placed: the event is committed", body = Accepted,
            headers(
                ("Location" = String, description = "/orders/{order_id}"),
                ("Consistency-Token" = String, description = "Pass it to a query replica to read this write"),
                ("ETag" = String, description = "The order's version, quoted")
            )),
        crate::openapi::CommandProblems
    )
)]
async fn place_order(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    handle(&request, payload, &state, CommandKind::Place, None).await
}

#[utoipa::path(
    post,
    path = "/orders/{id}/payment",
    tag = "orders",
    summary = "Pay a placed order (the amount must equal its total)",
    params(("id" = String, Path, description = "The order id"), crate::openapi::CommandHeaders),
    request_body(content = orders::commands::PayBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Paid: the event is committed", body = Accepted),
        crate::openapi::CommandProblems
    )
)]
async fn pay_order(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    handle(
        &request,
        payload,
        &state,
        CommandKind::Pay,
        Some(id.into_inner()),
    )
    .await
}

#[utoipa::path(
    post,
    path = "/orders/{id}/shipment",
    tag = "orders",
    summary = "Ship a paid order",
    params(("id" = String, Path, description = "The order id"), crate::openapi::CommandHeaders),
    request_body(content = orders::commands::ShipBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Shipped: the event is committed", body = Accepted),
        crate::openapi::CommandProblems
    )
)]
async fn ship_order(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    handle(
        &request,
        payload,
        &state,
        CommandKind::Ship,
        Some(id.into_inner()),
    )
    .await
}

#[utoipa::path(
    post,
    path = "/orders/{id}/cancellation",
    tag = "orders",
    summary = "Cancel an order that is not shipped",
    params(("id" = String, Path, description = "The order id"), crate::openapi::CommandHeaders),
    request_body(content = orders::commands::CancelBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Cancelled: the event is committed", body = Accepted),
        crate::openapi::CommandProblems
    )
)]
async fn cancel_order(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    handle(
        &request,
        payload,
        &state,
        CommandKind::Cancel,
        Some(id.into_inner()),
    )
    .await
}

/// Runs a command (every command route answers `POST` only) and counts its answer.
async fn handle(
    request: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    kind: CommandKind,
    target: Option<String>,
) -> Result<HttpResponse, ApiError> {
    post_only(request)?;
    let result = execute(request, payload, state, kind, target).await;
    let status = match &result {
        Ok(response) => response.status().as_u16(),
        Err(error) => actix_web::ResponseError::status_code(error).as_u16(),
    };
    state
        .metrics
        .commands
        .get_or_create(&CommandLabels {
            command: kind.name(),
            status,
        })
        .inc();
    result
}

/// The command flow: parse → idempotency claim → lock the aggregate → check `If-Match` →
/// decide → encode → queue → wait (bounded) for the commit.
async fn execute(
    request: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    kind: CommandKind,
    target: Option<String>,
) -> Result<HttpResponse, ApiError> {
    let deadline = Instant::now() + state.request_timeout;
    if let Some(id) = &target {
        Identifier::parse(id).map_err(|reason| ApiError::BadId(id.clone(), reason))?;
    }
    let body = read_json_body(request, payload, state.max_body_bytes, deadline).await?;
    let command = match kind {
        CommandKind::Place => OrderCommand::Place(PlaceOrder::parse(&body)?),
        CommandKind::Pay => OrderCommand::Pay(PayOrder::parse(&body)?),
        CommandKind::Ship => OrderCommand::Ship(ShipOrder::parse(&body)?),
        CommandKind::Cancel => OrderCommand::Cancel(CancelOrder::parse(&body)?),
    };
    let key = idempotency_key(request)?;
    let if_match = IfMatch::from_request(request)?;
    if state.circuit.is_open() {
        return Err(ApiError::KafkaUnreachable);
    }

    let claim = match &key {
        None => None,
        Some(key) => {
            let fingerprint =
                Fingerprint::new(kind.name(), target.as_deref(), &command.requested());
            match timeout_at(deadline, state.idempotency.begin(key, fingerprint)).await {
                Err(_) => {
                    return Err(ApiError::Busy(
                        "an earlier attempt with this Idempotency-Key is still in progress",
                    ));
                }
                Ok(Begin::Replay(receipt)) => return Ok(respond(state, &receipt, true)),
                Ok(Begin::Mismatch) => return Err(ApiError::KeyReused),
                Ok(Begin::First(claim)) => Some(claim),
            }
        }
    };

    let order_id = target.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let cell = if kind.creates() {
        state.model.get_or_create(&order_id)
    } else {
        state
            .model
            .get(&order_id)
            .ok_or_else(|| ApiError::UnknownOrder(order_id.clone()))?
    };
    let slot = timeout_at(deadline, cell.lock_owned())
        .await
        .map_err(|_| ApiError::Busy("the order is busy with another command"))?;
    if !kind.creates() && slot.state.is_none() {
        // Known only from a first command that is still failing or failed.
        return Err(ApiError::UnknownOrder(order_id));
    }
    let current = slot.state.is_some().then_some(slot.version);
    if let Some(precondition) = &if_match
        && !precondition.holds(current)
    {
        state.model.forget_if_empty(&order_id, &slot);
        return Err(ApiError::PreconditionFailed { current });
    }
    let payload = match decide(slot.state.as_ref(), &command) {
        Ok(payload) => payload,
        Err(rejection) => {
            state.model.forget_if_empty(&order_id, &slot);
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
    let event = metadata.event(&order_id, slot.version + 1, payload);
    let value = state.codec.encode(&event).await.map_err(|error| {
        state.model.forget_if_empty(&order_id, &slot);
        ApiError::Encode(error)
    })?;

    // From here the settlement owns the aggregate's lock and the idempotency claim: they are
    // released when the batcher learns the record's fate, even if this request stops waiting.
    let (settled, outcome) = oneshot::channel();
    let settlement = Settlement(Some(Aftermath {
        model: Arc::clone(&state.model),
        slot,
        claim,
        event,
        kind,
        settled,
    }));
    let on_outcome = Box::new(move |result| settlement.settle(result));
    // A record that was not queued drops its settlement unsettled, which releases the aggregate.
    state.batcher.submit(order_id, value, on_outcome)?;
    match timeout_at(deadline, outcome).await {
        Ok(Ok(Ok(receipt))) => Ok(respond(state, &receipt, false)),
        Ok(Ok(Err(error))) => Err(error.into()),
        Ok(Err(_)) => Err(ApiError::ShuttingDown),
        Err(_) => Err(ApiError::CommitTimeout(state.request_timeout)),
    }
}

/// A queued command's aftermath, run by the producer worker that learned its record's fate:
/// apply the event to the write model, remember the idempotency receipt, release the aggregate,
/// tell the waiting request. On the worker's thread because it is quick and saves a task and a
/// wake-up per command.
struct Settlement(Option<Aftermath>);

struct Aftermath {
    model: Arc<WriteModel<OrderState>>,
    slot: LockedSlot<OrderState>,
    claim: Option<Claim>,
    event: OrderEvent,
    kind: CommandKind,
    settled: oneshot::Sender<Result<Receipt, CommitError>>,
}

impl Settlement {
    fn settle(mut self, result: CommitResult) {
        if let Some(aftermath) = self.0.take() {
            aftermath.settle(result);
        }
    }
}

impl Drop for Settlement {
    /// Dropped unsettled: the record was never queued, or the worker holding it died. Either
    /// way nothing will answer for it, so it is released as not committed (an empty aggregate is
    /// forgotten, the idempotency key is freed).
    fn drop(&mut self) {
        if let Some(aftermath) = self.0.take() {
            aftermath.settle(Err(CommitError::InDoubt(
                "the producer stopped before answering".into(),
            )));
        }
    }
}

impl Aftermath {
    fn settle(self, result: CommitResult) {
        let Self {
            model,
            mut slot,
            claim,
            event,
            kind,
            settled,
        } = self;
        let outcome = match result {
            Ok(position) => {
                if !slot.apply(&event) {
                    tracing::error!(order = %event.envelope.aggregate_id, "a committed event did not apply to the write model");
                }
                let receipt = receipt_of(&event, kind, position);
                if let Some(claim) = claim {
                    claim.committed(receipt.clone(), now_ms());
                }
                Ok(receipt)
            }
            Err(error) => {
                model.forget_if_empty(&event.envelope.aggregate_id, &slot);
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

/// The fingerprint of the request that wrote `event`, as the command handler computed it from
/// the request.
pub fn fingerprint_of(event: &OrderEvent, kind: CommandKind) -> Fingerprint {
    let target = (!kind.creates()).then_some(event.envelope.aggregate_id.as_str());
    Fingerprint::new(kind.name(), target, &event.payload)
}

pub fn receipt_of(event: &OrderEvent, kind: CommandKind, position: Position) -> Receipt {
    Receipt {
        command: kind.name(),
        created: kind.creates(),
        aggregate_id: event.envelope.aggregate_id.clone(),
        version: event.envelope.aggregate_version,
        event_id: event.envelope.event_id.clone(),
        position,
    }
}

/// Success body of every command.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Accepted<'a> {
    /// The order's id.
    order_id: &'a str,
    /// The order's version after this command: 1, 2, 3 … per order.
    version: i64,
    /// The id of the event the command wrote.
    event_id: &'a str,
    /// Where the event is in the log.
    position: PositionAnswer,
}

/// A place in the log, as answers show it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct PositionAnswer {
    partition: i32,
    offset: i64,
}

fn respond(state: &AppState, receipt: &Receipt, replayed: bool) -> HttpResponse {
    let token = ConsistencyToken {
        topic: state.topic.clone(),
        position: receipt.position,
    };
    let mut response = if receipt.created {
        let mut created = HttpResponse::Created();
        created.insert_header((
            header::LOCATION,
            format!("/orders/{}", receipt.aggregate_id),
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
    response.json(Accepted {
        order_id: &receipt.aggregate_id,
        version: receipt.version,
        event_id: &receipt.event_id,
        position: PositionAnswer {
            partition: receipt.position.partition,
            offset: receipt.position.offset,
        },
    })
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
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )),
    }
}

/// An `If-Match` precondition (RFC 9110 §13.1.1): `*`, or a list of entity tags compared
/// strongly with the order's `ETag`, which is its version in quotes. Weak tags never match.
#[derive(Debug, PartialEq, Eq)]
enum IfMatch {
    Any,
    Tags(Vec<EntityTag>),
}

#[derive(Debug, PartialEq, Eq)]
struct EntityTag {
    weak: bool,
    opaque: String,
}

impl IfMatch {
    /// Every `If-Match` line of the request, as one list; `None` without the header.
    fn from_request(request: &HttpRequest) -> Result<Option<Self>, ApiError> {
        const BAD: ApiError = ApiError::BadHeader(
            "If-Match must be `*` or entity tags such as \"3\" (an order version in quotes)",
        );
        let mut lines = request.headers().get_all(header::IF_MATCH).peekable();
        if lines.peek().is_none() {
            return Ok(None);
        }
        let mut text = String::new();
        for line in lines {
            text.push_str(line.to_str().map_err(|_| BAD)?);
            text.push(',');
        }
        Self::parse(&text).map(Some).ok_or(BAD)
    }

    fn parse(text: &str) -> Option<Self> {
        const SEPARATORS: [char; 3] = [' ', '\t', ','];
        if text.trim_matches(SEPARATORS) == "*" {
            return Some(Self::Any);
        }
        // `etagc` excludes `"` but not `,`: rejoin what splitting on commas cut inside a tag.
        let mut tags = Vec::new();
        let mut rest = text.trim_start_matches(SEPARATORS);
        while !rest.is_empty() {
            let (weak, quoted) = match rest.strip_prefix("W/") {
                Some(after) => (true, after),
                None => (false, rest),
            };
            let inner = quoted.strip_prefix('"')?;
            let end = inner.find('"')?;
            let opaque = &inner[..end];
            if !opaque
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x7e).contains(&b))
            {
                return None;
            }
            tags.push(EntityTag {
                weak,
                opaque: opaque.to_owned(),
            });
            let after = inner[end + 1..].trim_start_matches([' ', '\t']);
            if !(after.is_empty() || after.starts_with(',')) {
                return None;
            }
            rest = after.trim_start_matches(SEPARATORS);
        }
        (!tags.is_empty()).then_some(Self::Tags(tags))
    }

    /// Whether the precondition holds for an order at `version` (`None`: no such order yet).
    fn holds(&self, version: Option<i64>) -> bool {
        let Some(version) = version else {
            return false;
        };
        match self {
            Self::Any => true,
            Self::Tags(tags) => {
                let current = version.to_string();
                tags.iter().any(|t| !t.weak && t.opaque == current)
            }
        }
    }
}

/// Reads a JSON body of at most `limit` bytes, arriving by `deadline`: a body that trickles in
/// (or stops) must not hold a connection, and its file descriptor, for ever.
async fn read_json_body(
    request: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    deadline: Instant,
) -> Result<web::BytesMut, ApiError> {
    let is_json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<mime::Mime>().ok())
        .is_some_and(|m| {
            m.type_() == mime::APPLICATION
                && (m.subtype() == mime::JSON || m.suffix() == Some(mime::JSON))
        });
    if !is_json {
        return Err(ApiError::UnsupportedMediaType);
    }
    // A compressed body would otherwise reach the JSON parser and be called malformed.
    for coding in request.headers().get_all(header::CONTENT_ENCODING) {
        let text = coding.to_str().unwrap_or("?");
        if !text
            .split(',')
            .map(str::trim)
            .all(|c| c.is_empty() || c.eq_ignore_ascii_case("identity"))
        {
            return Err(ApiError::UnsupportedEncoding(
                text.chars().take(64).collect(),
            ));
        }
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::TooLarge { limit });
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    // Answering before the body is complete makes actix close the connection.
    while let Some(chunk) = timeout_at(deadline, payload.next())
        .await
        .map_err(|_| ApiError::BodyTimeout)?
    {
        let chunk =
            chunk.map_err(|e| ApiError::Malformed(format!("could not read the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
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

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Answers 404 in the problem format for routes that do not exist.
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::{EntityTag, IfMatch};

    fn tag(weak: bool, opaque: &str) -> EntityTag {
        EntityTag {
            weak,
            opaque: opaque.to_owned(),
        }
    }

    #[test]
    fn if_match_lists_parse_as_rfc_9110_writes_them() {
        assert_eq!(IfMatch::parse(" * "), Some(IfMatch::Any));
        assert_eq!(
            IfMatch::parse(r#""1", W/"2","a,b" ,"#),
            Some(IfMatch::Tags(vec![
                tag(false, "1"),
                tag(true, "2"),
                tag(false, "a,b")
            ]))
        );
        for bad in [
            "",
            "3",
            r#""3"#,
            r#"*, "3""#,
            r#""3" "4""#,
            "W/3",
            "\"a b\"",
        ] {
            assert_eq!(IfMatch::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn if_match_compares_strongly_with_the_version() {
        let list = IfMatch::parse(r#""2", W/"3""#).unwrap();
        assert!(list.holds(Some(2)));
        assert!(!list.holds(Some(3)), "weak tags never match");
        assert!(!list.holds(None), "no order, nothing to match");
        assert!(IfMatch::Any.holds(Some(1)));
        assert!(!IfMatch::Any.holds(None));
        assert!(!IfMatch::parse(r#""+2""#).unwrap().holds(Some(2)));
    }
}

#[cfg(test)]
mod settlement_tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;
    use std::time::Duration;

    use orders::commands::{CommandKind, OrderState};
    use orders::events::{Envelope, OrderEvent, OrderPayload};
    use tokio::sync::oneshot;

    use super::{Aftermath, Settlement};
    use crate::batcher::CommitError;
    use crate::idempotency::{Begin, Fingerprint, IdempotencyIndex};
    use crate::write_model::WriteModel;

    fn placed(id: &str) -> OrderEvent {
        OrderEvent {
            envelope: Envelope {
                event_id: "e-1".into(),
                aggregate_id: id.into(),
                aggregate_version: 1,
                occurred_at_ms: 1,
                command_id: "c-1".into(),
                idempotency_key: Some("k".into()),
                correlation_id: "r-1".into(),
            },
            payload: OrderPayload::Placed {
                customer_id: "c-42".into(),
                currency: "EUR".into(),
                items: Vec::new(),
                total_cents: 0,
            },
        }
    }

    /// A settlement dropped unanswered (never queued, or its worker died) releases everything
    /// it held, as "not committed": the waiting request hears so, the new aggregate is
    /// forgotten, its lock is free, and the idempotency key can be used again.
    #[tokio::test]
    async fn a_settlement_dropped_unanswered_releases_all_it_held() {
        let model = Arc::new(WriteModel::<OrderState>::default());
        let index = IdempotencyIndex::new(Duration::from_secs(60), 10);
        let fingerprint = || Fingerprint::new("place", None, &1);
        let Begin::First(claim) = index.begin("k", fingerprint()).await else {
            panic!("expected a first attempt");
        };
        let cell = model.get_or_create("o-1");
        let slot = Arc::clone(&cell).lock_owned().await;
        let (settled, outcome) = oneshot::channel();
        let settlement = Settlement(Some(Aftermath {
            model: Arc::clone(&model),
            slot,
            claim: Some(claim),
            event: placed("o-1"),
            kind: CommandKind::Place,
            settled,
        }));

        drop(settlement);

        assert!(matches!(outcome.await, Ok(Err(CommitError::InDoubt(_)))));
        assert!(
            model.get("o-1").is_none(),
            "the empty aggregate is forgotten"
        );
        assert!(cell.try_lock().is_ok(), "the lock is free");
        assert!(
            matches!(index.begin("k", fingerprint()).await, Begin::First(_)),
            "the key is free for a retry"
        );
    }

    /// Settled as committed: the event is applied, the receipt remembered for the key.
    #[tokio::test]
    async fn a_committed_settlement_applies_the_event_and_keeps_the_receipt() {
        let model = Arc::new(WriteModel::<OrderState>::default());
        let index = IdempotencyIndex::new(Duration::from_secs(60), 10);
        let fingerprint = || Fingerprint::new("place", None, &1);
        let Begin::First(claim) = index.begin("k", fingerprint()).await else {
            panic!("expected a first attempt");
        };
        let slot = model.get_or_create("o-1").lock_owned().await;
        let (settled, outcome) = oneshot::channel();
        let settlement = Settlement(Some(Aftermath {
            model: Arc::clone(&model),
            slot,
            claim: Some(claim),
            event: placed("o-1"),
            kind: CommandKind::Place,
            settled,
        }));
        let position = shared_events::Position {
            partition: 2,
            offset: 7,
        };

        settlement.settle(Ok(position));

        let receipt = outcome.await.unwrap().unwrap();
        assert_eq!((receipt.version, receipt.position), (1, position));
        assert!(receipt.created);
        let slot = model.get("o-1").unwrap().lock_owned().await;
        assert_eq!(slot.version, 1);
        assert!(slot.state.is_some());
        assert!(matches!(
            index.begin("k", fingerprint()).await,
            Begin::Replay(_)
        ));
    }
}
