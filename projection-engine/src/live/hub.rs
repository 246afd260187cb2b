//! The open streams of a replica, by stream key: the tail offers each event to the subscribers
//! of the streams it belongs to, and to nobody else, so an idle stream costs its entry and its
//! buffer, not a share of every event.
//!
//! Each subscriber has a bounded buffer. An event never waits for a slow subscriber: a
//! subscriber whose buffer is full is dropped from the hub, marked overflowed, and its stream
//! ends after what was buffered, with the id to resume from (see [`super::stream`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use shared_events::live::StreamKey;
use tokio::sync::mpsc;

use super::resume::At;

/// One event as its streams send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub at: At,
    /// The record's timestamp, ms since the epoch: history is sent in this order across
    /// partitions, and push latency is measured from it.
    pub timestamp_ms: i64,
    pub event_type: String,
    /// The `data:` line: one JSON object, without newlines.
    pub data: String,
}

struct Subscriber {
    id: u64,
    buffer: mpsc::Sender<Arc<Delivery>>,
    overflowed: Arc<AtomicBool>,
}

/// The subscribers of every open stream.
pub struct Hub {
    streams: Mutex<HashMap<StreamKey, Vec<Subscriber>>>,
    buffer: usize,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("buffer", &self.buffer)
            .finish_non_exhaustive()
    }
}

/// A subscriber's end: its buffer, and whether the hub dropped it for being slow. Dropped, it
/// leaves the hub.
pub struct Subscription {
    pub events: mpsc::Receiver<Arc<Delivery>>,
    overflowed: Arc<AtomicBool>,
    hub: Arc<Hub>,
    key: StreamKey,
    id: u64,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// Whether the hub dropped this subscriber because its buffer was full.
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(&self.key, self.id);
    }
}

impl Hub {
    /// A hub whose subscribers each buffer up to `buffer` events.
    pub fn new(buffer: usize) -> Self {
        Self {
            streams: Mutex::new(HashMap::new()),
            buffer: buffer.max(1),
            next_id: AtomicU64::new(0),
        }
    }

    /// Subscribes to `key`: every event offered to it from now on, until dropped or too slow.
    pub fn subscribe(self: &Arc<Self>, key: StreamKey) -> Subscription {
        let (buffer, events) = mpsc::channel(self.buffer);
        let overflowed = Arc::new(AtomicBool::new(false));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock()
            .entry(key.clone())
            .or_default()
            .push(Subscriber {
                id,
                buffer,
                overflowed: Arc::clone(&overflowed),
            });
        Subscription {
            events,
            overflowed,
            hub: Arc::clone(self),
            key,
            id,
        }
    }

    /// Offers `delivery` to every subscriber of `streams`; the number it reached.
    pub fn publish(&self, streams: &[StreamKey], delivery: &Arc<Delivery>) -> Published {
        let mut published = Published::default();
        let mut subscribers = self.lock();
        for key in streams {
            let Some(list) = subscribers.get_mut(key) else {
                continue;
            };
            list.retain(|subscriber| {
                match subscriber.buffer.try_send(Arc::clone(delivery)) {
                    Ok(()) => {
                        published.reached += 1;
                        true
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        // Dropping the sender ends the stream after what it buffered.
                        subscriber.overflowed.store(true, Ordering::Release);
                        published.overflowed += 1;
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                }
            });
            if list.is_empty() {
                subscribers.remove(key);
            }
        }
        published
    }

    /// How many subscribers are open.
    pub fn subscribers(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    fn remove(&self, key: &StreamKey, id: u64) {
        let mut subscribers = self.lock();
        if let Some(list) = subscribers.get_mut(key) {
            list.retain(|subscriber| subscriber.id != id);
            if list.is_empty() {
                subscribers.remove(key);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<StreamKey, Vec<Subscriber>>> {
        // A panic while holding the lock leaves the map consistent (every change is one call).
        self.streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What one publication did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Subscribers it was buffered for.
    pub reached: usize,
    /// Subscribers dropped because their buffer was full.
    pub overflowed: usize,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn key(id: &str) -> StreamKey {
        StreamKey {
            collection: "orders",
            id: id.into(),
        }
    }

    fn delivery(offset: i64) -> Arc<Delivery> {
        Arc::new(Delivery {
            at: At {
                topic: 0,
                partition: 0,
                offset,
            },
            timestamp_ms: 0,
            event_type: "E".into(),
            data: "{}".into(),
        })
    }

    #[test]
    fn an_event_reaches_only_its_streams_subscribers() {
        let hub = Arc::new(Hub::new(8));
        let mut a = hub.subscribe(key("a"));
        let mut a2 = hub.subscribe(key("a"));
        let mut b = hub.subscribe(key("b"));
        let published = hub.publish(&[key("a")], &delivery(1));
        assert_eq!(published.reached, 2);
        assert_eq!(a.events.try_recv().unwrap().at.offset, 1);
        assert_eq!(a2.events.try_recv().unwrap().at.offset, 1);
        assert!(b.events.try_recv().is_err());
        drop(a2);
        assert_eq!(hub.subscribers(), 2);
        drop(a);
        drop(b);
        assert_eq!(hub.subscribers(), 0);
        assert_eq!(hub.publish(&[key("a")], &delivery(2)).reached, 0);
    }

    #[test]
    fn a_slow_subscriber_is_dropped_after_what_it_buffered() {
        let hub = Arc::new(Hub::new(2));
        let mut slow = hub.subscribe(key("a"));
        let mut quick = hub.subscribe(key("a"));
        for offset in 0..2 {
            hub.publish(&[key("a")], &delivery(offset));
            assert_eq!(quick.events.try_recv().unwrap().at.offset, offset);
        }
        let third = hub.publish(&[key("a")], &delivery(2));
        assert_eq!(
            third,
            Published {
                reached: 1,
                overflowed: 1
            }
        );
        assert!(slow.overflowed() && !quick.overflowed());
        // What it buffered is still there, then its stream ends.
        assert_eq!(slow.events.try_recv().unwrap().at.offset, 0);
        assert_eq!(slow.events.try_recv().unwrap().at.offset, 1);
        assert!(matches!(
            slow.events.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
        assert_eq!(quick.events.try_recv().unwrap().at.offset, 2);
    }
}
