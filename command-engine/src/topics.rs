//! Creating an aggregate's topic when it does not exist yet, and learning its partitions.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("could not reach Kafka to create topic `{topic}`")]
    Client {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("could not create topic `{topic}`: {code}")]
    Create {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("topic `{0}` shows no partitions")]
    NoPartitions(String),
    #[error("the metadata request for topic `{0}` did not run")]
    Task(String),
}

/// Creates `topic` with the given shape and unlimited retention unless it exists (whatever its
/// shape: an existing topic's configuration is the operator's), and answers how many
/// partitions it has.
pub async fn ensure_topic(
    kafka: &service_config::KafkaArgs,
    topic: &str,
    partitions: i32,
    replication: i32,
    timeout: Duration,
) -> Result<i32, TopicError> {
    let client_error = |source| TopicError::Client {
        topic: topic.to_owned(),
        source,
    };
    let admin: Arc<AdminClient<DefaultClientContext>> =
        Arc::new(kafka.client_config().create().map_err(client_error)?);
    // The log is the system of record: the command side rebuilds its write model and every
    // replica its views from it, so nothing may age out.
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication))
        .set("retention.ms", "-1")
        .set("retention.bytes", "-1");
    let options = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    let results = admin
        .create_topics([&new_topic], &options)
        .await
        .map_err(client_error)?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => {
                return Err(TopicError::Create {
                    topic: topic.to_owned(),
                    code,
                });
            }
        }
    }
    // A topic just created may take a moment to show up in every broker's metadata.
    let deadline = std::time::Instant::now() + timeout;
    loop {
        // A blocking call: off the async runtime's threads.
        let (probe, name) = (Arc::clone(&admin), topic.to_owned());
        let metadata =
            tokio::task::spawn_blocking(move || probe.inner().fetch_metadata(Some(&name), timeout))
                .await
                .map_err(|_| TopicError::Task(topic.to_owned()))?
                .map_err(client_error)?;
        let found = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map_or(0, |t| t.partitions().len());
        if found > 0 {
            return Ok(i32::try_from(found).unwrap_or(i32::MAX));
        }
        if std::time::Instant::now() >= deadline {
            return Err(TopicError::NoPartitions(topic.to_owned()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
