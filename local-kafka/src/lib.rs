//! A real Apache Kafka for development, tests and benchmarks, without Docker: a single-node
//! KRaft broker (combined broker + controller), or a cluster of them, run with the installed
//! Java from the jars Maven resolves from Maven Central, plus the small process supervision the project's tooling shares
//! (log files, health waits, graceful-then-forceful stop).
//!
//! `cargo xtask` uses it to start the dev stack and the test broker; tests that must stop or
//! restart a broker start a private one with it (the classpath comes from `KAFKA_CLASSPATH`,
//! which `cargo xtask test` sets).

pub mod broker;
pub mod process;
pub mod secured;

pub use broker::{Broker, Cluster, KafkaConfig, KafkaRuntime, Membership, ProxiedListener};
pub use process::Service;
pub use secured::SecuredListener;
