//! The stream routes: `GET <stream path>` with `Accept: text/event-stream`.
//!
//! Where a stream starts: after the `Last-Event-ID` it resumes from (the header a browser's
//! `EventSource` sends when it reconnects), else after `?after=<id>`, else at the beginning
//! with `?from=beginning`, else now. Before it reads any history it subscribes to the hub, so
//! every event is in the store (history) or in its buffer (live); its position skips what it
//! already sent, so none is sent twice.
//!
//! Each message: `id:` the stream's position after it ([`super::resume`]), `event:` the event
//! type, `data:` one JSON object. A stream with nothing to say for a while sends a comment; one
//! that fell a buffer behind gets a last `resume` event naming where to resume, then ends; at
//! shutdown every stream ends with a `retry:` hint.

use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use http_edge::Route;
use http_edge::routes::readable;
use shared_events::Identifier;
use shared_events::live::{StreamKey, StreamSpec};
use shared_events::view::Views;

use super::hub::{Delivery, Subscription};
use super::resume::{At, Resume, Span};
use super::tail::{Live, offset_of, parse_entry, partition_prefix};
use crate::problem::QueryError;
use crate::store::StoreViews;

/// The route of every stream kind of the timeline `live` serves.
pub fn routes(streams: &[StreamSpec]) -> Vec<Route> {
    streams
        .iter()
        .map(|spec| Route {
            path: spec.path.into(),
            methods: &["GET"],
            resource: |path| readable(path, follow),
        })
        .collect()
}

/// The stream kind a request's route is for.
pub(crate) fn spec_of<'a>(
    live: &'a Live,
    request: &HttpRequest,
    page: bool,
) -> Option<&'a StreamSpec> {
    let pattern = request.match_pattern()?;
    live.streams.iter().find(|spec| {
        if page {
            spec.page == Some(pattern.as_str())
        } else {
            spec.path == pattern
        }
    })
}

/// Holds one of the replica's stream places; gives it back when dropped.
struct Place {
    live: Arc<Live>,
}

impl Place {
    fn take(live: &Arc<Live>) -> Option<Self> {
        let taken = live
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < live.limits.max_streams).then_some(open + 1)
            })
            .is_ok();
        taken.then(|| {
            live.metrics.live.streams.inc();
            Self {
                live: Arc::clone(live),
            }
        })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.live.open.fetch_sub(1, Ordering::AcqRel);
        self.live.metrics.live.streams.dec();
    }
}

/// Where the request asks the stream to start.
enum Start {
    After(Resume),
    Now,
}

fn start(request: &HttpRequest, span: &Span) -> Result<Start, QueryError> {
    if let Some(value) = request.headers().get("last-event-id") {
        let text = value
            .to_str()
            .map_err(|_| QueryError::BadResume("Last-Event-ID is not text".into()))?;
        return Resume::parse(text, span)
            .map(Start::After)
            .map_err(|e| QueryError::BadResume(e.to_string()));
    }
    let pairs = web::Query::<Vec<(String, String)>>::from_query(request.query_string())
        .map_err(|_| QueryError::BadQuery("the query string does not parse".into()))?;
    let mut start = Start::Now;
    for (name, value) in pairs.iter() {
        match name.as_str() {
            "after" => {
                start = Start::After(
                    Resume::parse(value, span).map_err(|e| QueryError::BadResume(e.to_string()))?,
                );
            }
            "from" if value == "beginning" => {
                if matches!(start, Start::Now) {
                    start = Start::After(Resume::beginning(span));
                }
            }
            "from" => {
                return Err(QueryError::BadQuery(
                    "from takes `beginning` only (or resume with `after`)".into(),
                ));
            }
            _ => {}
        }
    }
    Ok(start)
}

/// `GET` a stream: its history as asked, then its events as they are committed.
async fn follow(
    request: HttpRequest,
    id: web::Path<String>,
    live: web::Data<Live>,
) -> Result<HttpResponse, QueryError> {
    let id = id.into_inner();
    if Identifier::parse(&id).is_err() {
        return Err(QueryError::BadId(id));
    }
    let live = live.into_inner();
    let spec = spec_of(&live, &request, false)
        .ok_or_else(|| QueryError::Unavailable("no such stream kind".into()))?;
    let span = live.span(spec, &id).ok_or_else(|| {
        QueryError::Unavailable("the live tail has not started yet (do its topics exist?)".into())
    })?;
    let start = start(&request, &span)?;
    let place = Place::take(&live).ok_or(QueryError::TooManyStreams)?;
    let key = StreamKey {
        collection: spec.collection,
        id,
    };
    // Subscribed before anything is read: what the store does not hold yet will be buffered.
    let subscription = live.hub.subscribe(key.clone());
    let (resume, history) = match start {
        Start::After(resume) => {
            let history = History::new(&key, &resume);
            (resume, Some(history))
        }
        Start::Now => (Resume::at(&span, |t, p| live.now(t, p)), None),
    };
    let heartbeat = tokio::time::interval_at(
        tokio::time::Instant::now() + live.limits.heartbeat,
        live.limits.heartbeat,
    );
    let state = Following {
        live: Arc::clone(&live),
        resume,
        history,
        subscription,
        heartbeat,
        sent_any: false,
        hinted: false,
        ended: false,
        _place: place,
    };
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // Proxies that buffer responses (nginx) must pass each message on at once.
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(futures::stream::unfold(state, |mut state| async move {
            let frame = state.next_frame().await?;
            Some((Ok::<_, std::convert::Infallible>(frame), state))
        })))
}

/// One open stream.
struct Following {
    live: Arc<Live>,
    resume: Resume,
    history: Option<History>,
    subscription: Subscription,
    heartbeat: tokio::time::Interval,
    /// Whether an `id:` has been sent (an event, or the position after an empty history).
    sent_any: bool,
    /// Whether the `retry:` hint has been sent.
    hinted: bool,
    ended: bool,
    _place: Place,
}

/// History is sent in chunks of at most this many events.
const HISTORY_CHUNK: usize = 64;

impl Following {
    /// The next bytes of the stream; none when it has ended. The first carry the `retry:` hint,
    /// so that a client reconnects promptly however the connection ends.
    async fn next_frame(&mut self) -> Option<Bytes> {
        let frame = self.next_message().await?;
        if self.hinted {
            return Some(frame);
        }
        self.hinted = true;
        let retry = format!("retry: {}\n\n", self.live.limits.retry.as_millis());
        Some(Bytes::from([retry.as_bytes(), &frame].concat()))
    }

    async fn next_message(&mut self) -> Option<Bytes> {
        if self.ended {
            return None;
        }
        if let Some(mut history) = self.history.take() {
            let live = Arc::clone(&self.live);
            let views = StoreViews::new(&live.store, live.namespace);
            let mut frame = String::new();
            let mut count = 0;
            let mut done = false;
            while count < HISTORY_CHUNK {
                match history.next(&views) {
                    Ok(Some(delivery)) => {
                        if self.resume.owes(delivery.at) {
                            self.push(&mut frame, &delivery);
                            count += 1;
                        }
                    }
                    Ok(None) => {
                        done = true;
                        break;
                    }
                    Err(error) => {
                        tracing::error!(%error, "live: history unreadable; ending the stream");
                        return self.end_with_resume("the history could not be read");
                    }
                }
            }
            if done {
                if !self.sent_any {
                    self.mark(&mut frame);
                }
            } else {
                self.history = Some(history);
            }
            if !frame.is_empty() {
                return Some(Bytes::from(frame));
            }
        }
        if !self.sent_any {
            let mut frame = String::new();
            self.mark(&mut frame);
            return Some(Bytes::from(frame));
        }
        loop {
            tokio::select! {
                delivery = self.subscription.events.recv() => match delivery {
                    Some(delivery) => {
                        if !self.resume.owes(delivery.at) {
                            continue;
                        }
                        let mut frame = String::new();
                        self.push(&mut frame, &delivery);
                        let lag_ms = crate::cluster::now_ms() - delivery.timestamp_ms;
                        #[allow(clippy::cast_precision_loss, reason = "milliseconds to seconds")]
                        self.live
                            .metrics
                            .live
                            .push_latency
                            .observe(lag_ms.max(0) as f64 / 1000.0);
                        self.heartbeat.reset();
                        return Some(Bytes::from(frame));
                    }
                    None if self.subscription.overflowed() => {
                        return self.end_with_resume("the client fell a buffer behind");
                    }
                    None => return None,
                },
                _ = self.heartbeat.tick() => return Some(Bytes::from_static(b": keep-alive\n\n")),
                () = self.live.shutdown.cancelled() => {
                    self.ended = true;
                    let retry = self.live.limits.retry.as_millis();
                    return Some(Bytes::from(format!(": the replica is stopping\nretry: {retry}\n\n")));
                }
                () = self.live.stopped.cancelled(), if !self.live.shutdown.is_cancelled() => {
                    return self.end_with_resume("this replica's live tail stopped; resume on another");
                }
            }
        }
    }

    /// Appends `delivery` as an SSE message and records it delivered.
    fn push(&mut self, frame: &mut String, delivery: &Delivery) {
        self.resume.delivered(delivery.at);
        frame.push_str("id: ");
        frame.push_str(&self.resume.encode());
        frame.push_str("\nevent: ");
        frame.push_str(&delivery.event_type);
        frame.push_str("\ndata: ");
        frame.push_str(&delivery.data);
        frame.push_str("\n\n");
        self.sent_any = true;
        self.live.metrics.live.pushed.inc();
    }

    /// Appends the stream's position without an event: a client that reconnects before the
    /// first event resumes from here (`EventSource` keeps an `id:` even from a message with no
    /// data, and dispatches nothing for it).
    fn mark(&mut self, frame: &mut String) {
        frame.push_str("id: ");
        frame.push_str(&self.resume.encode());
        frame.push_str("\n\n");
        self.sent_any = true;
    }

    /// The last message of a stream the server ends early: where to resume, and a `retry:`.
    fn end_with_resume(&mut self, reason: &str) -> Option<Bytes> {
        self.ended = true;
        let id = self.resume.encode();
        let data = serde_json::json!({ "reason": reason, "resume_after": id });
        let retry = self.live.limits.retry.as_millis();
        Some(Bytes::from(format!(
            "retry: {retry}\nid: {id}\nevent: resume\ndata: {data}\n\n"
        )))
    }
}

/// A stream's stored events from a position on, across its partitions, in record time order
/// and, within a partition, in offset order.
struct History {
    cursors: Vec<Cursor>,
    heads: BinaryHeap<std::cmp::Reverse<(i64, At, usize)>>,
    started: bool,
}

/// One partition's stored events, read a chunk at a time.
struct Cursor {
    topic: u8,
    partition: i32,
    prefix: String,
    /// Where the next scan starts: past the last key scanned.
    start: Vec<u8>,
    buffer: VecDeque<Delivery>,
    exhausted: bool,
}

const CURSOR_CHUNK: usize = 128;

impl Cursor {
    fn fill(&mut self, views: &StoreViews<'_>) -> Result<(), shared_events::view::ViewError> {
        if !self.buffer.is_empty() || self.exhausted {
            return Ok(());
        }
        let keys = views.scan(self.prefix.as_bytes(), &self.start, CURSOR_CHUNK)?;
        self.exhausted = keys.len() < CURSOR_CHUNK;
        if let Some(last) = keys.last() {
            self.start.clone_from(last);
            self.start.push(0);
        }
        for key in keys {
            let Some(offset) = offset_of(&key) else {
                continue;
            };
            let at = At {
                topic: self.topic,
                partition: self.partition,
                offset,
            };
            let Ok(text) = String::from_utf8(key) else {
                continue;
            };
            if let Some(delivery) = views.get(&text)?.and_then(|value| parse_entry(at, &value)) {
                self.buffer.push_back(delivery);
            }
        }
        Ok(())
    }
}

impl History {
    fn new(key: &StreamKey, from: &Resume) -> Self {
        let cursors = from
            .partitions()
            .map(|(topic, partition, next)| {
                let prefix = partition_prefix(key, topic, partition);
                Cursor {
                    topic,
                    partition,
                    start: format!("{prefix}{next:016x}").into_bytes(),
                    prefix,
                    buffer: VecDeque::new(),
                    exhausted: false,
                }
            })
            .collect();
        Self {
            cursors,
            heads: BinaryHeap::new(),
            started: false,
        }
    }

    fn offer(
        &mut self,
        index: usize,
        views: &StoreViews<'_>,
    ) -> Result<(), shared_events::view::ViewError> {
        let cursor = &mut self.cursors[index];
        // A chunk may hold nothing readable; the cursor stays in the merge until it is exhausted.
        while cursor.buffer.is_empty() && !cursor.exhausted {
            cursor.fill(views)?;
        }
        if let Some(head) = cursor.buffer.front() {
            self.heads
                .push(std::cmp::Reverse((head.timestamp_ms, head.at, index)));
        }
        Ok(())
    }

    /// The next event, by record time across partitions.
    fn next(
        &mut self,
        views: &StoreViews<'_>,
    ) -> Result<Option<Delivery>, shared_events::view::ViewError> {
        if !self.started {
            self.started = true;
            for index in 0..self.cursors.len() {
                self.offer(index, views)?;
            }
        }
        let Some(std::cmp::Reverse((_, _, index))) = self.heads.pop() else {
            return Ok(None);
        };
        let delivery = self.cursors[index].buffer.pop_front();
        self.offer(index, views)?;
        Ok(delivery)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::live::tail::{entry_key, entry_value};
    use crate::store::{Namespace, Store, StoreBatch};

    const TIMELINE: Namespace = Namespace {
        name: "timeline",
        version: 1,
    };

    fn at(topic: u8, partition: i32, offset: i64) -> At {
        At {
            topic,
            partition,
            offset,
        }
    }

    #[test]
    fn history_merges_partitions_by_time_in_offset_order_from_a_position() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &[TIMELINE]).unwrap();
        let key = StreamKey {
            collection: "customers",
            id: "c-1".into(),
        };
        let other = StreamKey {
            collection: "customers",
            id: "c-10".into(),
        };
        let mut batch = StoreBatch::new(store.active(TIMELINE));
        let mut put = |stream: &StreamKey, at: At, value: Vec<u8>| {
            let entry = entry_key(stream, at);
            batch.put_index(entry.clone().into_bytes());
            batch.put_view(&entry, value);
        };
        // Partition (1, 0): 300 events, more than a chunk, at even times; partition (1, 1):
        // 100 at odd times; (0, 2): one, first of all. Another stream shares the prefix `c-1`.
        for n in 0..300 {
            put(&key, at(1, 0, n), entry_value("A", 2 * n, "{}"));
        }
        for n in 0..100 {
            put(&key, at(1, 1, n), entry_value("B", 2 * n + 1, "{}"));
        }
        put(&key, at(0, 2, 7), entry_value("C", -1, "{}"));
        put(&other, at(1, 0, 5), entry_value("X", 3, "{}"));
        // A whole chunk of entries that do not read as entries, between two readable ones.
        put(&key, at(1, 2, 0), entry_value("D", 1_000, "{}"));
        for n in 1..200 {
            put(&key, at(1, 2, n), b"not an entry".to_vec());
        }
        put(&key, at(1, 2, 200), entry_value("D", 1_001, "{}"));
        store.write(batch).unwrap();

        let span = Span::new(vec![(0, 2), (1, 0), (1, 1), (1, 2)]);
        // Resume past the first 10 events of (1, 0).
        let mut from = Resume::beginning(&span);
        from.delivered(at(1, 0, 9));
        let mut history = History::new(&key, &from);
        let views = StoreViews::new(&store, TIMELINE);
        let mut seen = Vec::new();
        while let Some(delivery) = history.next(&views).unwrap() {
            seen.push(delivery);
        }
        assert_eq!(seen.len(), 1 + 290 + 100 + 2);
        assert_eq!(seen[0].at, at(0, 2, 7));
        assert!(seen.iter().all(|d| d.event_type != "X"), "another stream's");
        assert!(
            seen.windows(2)
                .all(|w| w[0].timestamp_ms <= w[1].timestamp_ms),
            "by time across partitions"
        );
        for partition in 0..3 {
            let offsets: Vec<i64> = seen
                .iter()
                .filter(|d| d.at.topic == 1 && d.at.partition == partition)
                .map(|d| d.at.offset)
                .collect();
            assert!(offsets.windows(2).all(|w| w[0] < w[1]));
        }
        assert_eq!(
            seen.iter()
                .filter(|d| d.at.partition == 0 && d.at.topic == 1)
                .map(|d| d.at.offset)
                .next(),
            Some(10),
            "from the position on"
        );
        assert_eq!(
            seen.iter().filter(|d| d.event_type == "D").count(),
            2,
            "past the unreadable chunk"
        );
    }
}
