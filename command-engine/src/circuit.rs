//! Whether Kafka is reachable, watched off the write path: while it is not, new commands get a
//! `503` with `Retry-After` at once instead of waiting for a commit that cannot happen.
//!
//! A thread asks the cluster for its metadata every `every`; two failed probes in a row open
//! the circuit, one answered probe closes it. The probe's client also says at once when it has
//! lost its connection to every broker: that counts as a failed probe and the next probe is
//! sent right away, so a broker that dies is noticed in about one probe timeout, not two
//! intervals and two timeouts. Commands already queued when it opens keep their
//! place: their transactions end (or resolve) as they would have, and the aggregate stays
//! locked until then; but their requests stop waiting and answer at once that the outcome is
//! not known yet ([`BrokerCircuit::opened`]), rather than at the request timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};
use service_config::KafkaArgs;

/// Probes in a row that must fail before commands are refused: one lost probe is not an outage.
const FAILURES_TO_OPEN: u32 = 2;

#[derive(Debug)]
pub struct BrokerCircuit {
    open: AtomicBool,
    stopping: AtomicBool,
    /// The same state, for requests waiting for it to open.
    changed: tokio::sync::watch::Sender<bool>,
}

impl BrokerCircuit {
    /// Starts watching; the circuit starts closed (the service checked Kafka at start). The
    /// watch ends when the returned [`Watch`] is dropped.
    pub fn start(
        kafka: &KafkaArgs,
        every: Duration,
        probe_timeout: Duration,
    ) -> Result<(Arc<Self>, Watch), KafkaError> {
        let probe: BaseProducer<ProbeContext> = kafka
            .client_config()
            // Notice a broker that is back within a second, not librdkafka's default ten.
            .set("reconnect.backoff.ms", "100")
            .set("reconnect.backoff.max.ms", "1000")
            .create_with_context(ProbeContext::default())?;
        let circuit = Arc::new(Self {
            open: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            changed: tokio::sync::watch::channel(false).0,
        });
        let watched = Arc::clone(&circuit);
        let thread = std::thread::Builder::new()
            .name("kafka-circuit".into())
            .spawn(move || watched.watch(&probe, every, probe_timeout))
            .map_err(|e| KafkaError::ClientCreation(format!("the circuit thread: {e}")))?;
        let watch = Watch {
            circuit: Arc::clone(&circuit),
            thread: Some(thread),
        };
        Ok((circuit, watch))
    }

    /// Whether Kafka is known to be unreachable now.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Resolves once Kafka is known to be unreachable (at once if it is now).
    pub async fn opened(&self) {
        let mut changed = self.changed.subscribe();
        // The sender lives as long as `self`: the wait ends only by opening.
        let _ = changed.wait_for(|open| *open).await;
    }

    fn set(&self, open: bool) -> bool {
        let was = self.open.swap(open, Ordering::AcqRel);
        self.changed.send_replace(open);
        was
    }

    fn watch(&self, probe: &BaseProducer<ProbeContext>, every: Duration, probe_timeout: Duration) {
        let mut failures = 0;
        while !self.stopping.load(Ordering::Acquire) {
            match probe.client().fetch_metadata(None, probe_timeout) {
                Ok(_) => {
                    failures = 0;
                    if self.set(false) {
                        tracing::info!("Kafka is reachable again; taking commands");
                    }
                }
                Err(error) => {
                    failures += 1;
                    if failures >= FAILURES_TO_OPEN && !self.set(true) {
                        tracing::warn!(%error, "Kafka is unreachable; refusing commands until it is back");
                    }
                }
            }
            // In steps, so that a stop does not wait for a whole interval; each step serves the
            // client's events, where it says it lost every broker.
            let started = std::time::Instant::now();
            while started.elapsed() < every && !self.stopping.load(Ordering::Acquire) {
                probe.poll(Duration::from_millis(50));
                if probe.context().all_down.swap(false, Ordering::AcqRel) {
                    failures += 1;
                    break;
                }
            }
        }
    }
}

/// The probe client's events: whether it has lost its connection to every broker since the
/// watch last looked.
#[derive(Debug, Default)]
struct ProbeContext {
    all_down: AtomicBool,
}

impl ClientContext for ProbeContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            tracing::debug!(reason, "the circuit's probe lost every broker");
            self.all_down.store(true, Ordering::Release);
        }
    }
}

impl ProducerContext for ProbeContext {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

/// The watching thread; dropping it ends the watch and waits for the thread (at most one
/// probe), so no Kafka client outlives the service.
#[derive(Debug)]
pub struct Watch {
    circuit: Arc<BrokerCircuit>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.circuit.stopping.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the circuit thread panicked");
        }
    }
}
