//! `docker-compose.yml` held to the binaries and to `cargo xtask dev`: every variable and flag
//! it gives one of our binaries is one that binary accepts (as its `--help` lists them), and
//! every port it publishes is the one the dev stack uses.

#![cfg(test)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_norway::Value;

use crate::workspace::Workspace;
use crate::{
    DEV_COMMAND_PORT, DEV_CONTROLLER_PORT, DEV_KAFKA_PORT, DEV_QUERY_PORTS, DEV_REGISTRY_PORT,
};

/// What a binary accepts: its long flags and the environment variables they read.
#[derive(Debug, Default)]
struct Accepted {
    flags: BTreeSet<String>,
    env: BTreeSet<String>,
    /// Whether it takes `--kafka-property`, and so `KAFKA_PROPERTY_*` variables.
    kafka_properties: bool,
}

impl Accepted {
    /// Reads `binary --help`: `--flag` and `[env: NAME=…]`.
    fn of(ws: &Workspace, binary: &str) -> Self {
        let path = ws.binary(binary);
        let output = Command::new(&path)
            .arg("--help")
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (build the binaries first; `cargo xtask test` does)",
                    path.display()
                )
            });
        let help = String::from_utf8_lossy(&output.stdout);
        let mut accepted = Self::default();
        for word in help.split_whitespace() {
            let word = word.trim_matches(|c: char| matches!(c, ',' | '[' | ']' | '<' | '>'));
            if let Some(flag) = word.strip_prefix("--") {
                accepted
                    .flags
                    .insert(flag.split('=').next().unwrap_or("").to_owned());
            }
        }
        for part in help.split("[env: ").skip(1) {
            if let Some(name) = part.split(['=', ']']).next() {
                accepted.env.insert(name.to_owned());
            }
        }
        accepted.kafka_properties = accepted.flags.contains("kafka-property");
        accepted
    }

    fn takes_variable(&self, name: &str) -> bool {
        self.env.contains(name) || (self.kafka_properties && name.starts_with("KAFKA_PROPERTY_"))
    }
}

fn compose(ws: &Workspace) -> Value {
    let path = ws.root.join("docker-compose.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_norway::from_str(&text).unwrap()
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// `environment` as a map, in either of compose's two spellings.
fn environment(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Mapping(map) => map.iter().map(|(k, v)| (text(k), text(v))).collect(),
        Value::Sequence(items) => items
            .iter()
            .map(|item| {
                let item = text(item);
                let (k, v) = item.split_once('=').unwrap_or((&item, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// Published ports, `host → container`.
fn ports(service: &Value) -> Vec<(u16, u16)> {
    service["ports"]
        .as_sequence()
        .map(|ports| {
            ports
                .iter()
                .map(|p| {
                    let p = text(p);
                    let (host, container) = p.split_once(':').unwrap_or((&p, &p));
                    (host.parse().unwrap(), container.parse().unwrap())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The port of a `host:port` listen address.
fn port_of(address: &str) -> u16 {
    address.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn compose_gives_each_binary_only_what_it_accepts() {
    let ws = Workspace::locate().unwrap();
    let compose = compose(&ws);
    let services = compose["services"].as_mapping().unwrap();
    let mut checked = 0;
    for (name, service) in services {
        let Some(command) = service["command"].as_sequence() else {
            continue;
        };
        let binary = text(&command[0]);
        let accepted = Accepted::of(&ws, &binary);
        assert!(
            !accepted.flags.is_empty(),
            "{binary} --help listed no flags"
        );
        for word in command.iter().skip(1).map(text) {
            if let Some(flag) = word.strip_prefix("--") {
                let flag = flag.split('=').next().unwrap();
                assert!(
                    accepted.flags.contains(flag),
                    "{} gives {binary} --{flag}, which it does not accept",
                    text(name)
                );
            }
        }
        for variable in environment(service).keys() {
            assert!(
                accepted.takes_variable(variable),
                "{} sets {variable}, which {binary} does not read",
                text(name)
            );
        }
        checked += 1;
    }
    assert_eq!(
        checked, 4,
        "the registry, the command service and two replicas"
    );
}

#[test]
fn compose_and_the_dev_stack_use_the_same_ports() {
    let ws = Workspace::locate().unwrap();
    let compose = compose(&ws);
    let services = &compose["services"];
    let published = |name: &str| ports(&services[name]);
    assert!(published("kafka").contains(&(DEV_KAFKA_PORT, DEV_KAFKA_PORT)));
    assert!(
        !published("kafka")
            .iter()
            .any(|(host, _)| *host == DEV_CONTROLLER_PORT)
    );

    let listen = |name: &str, variable: &str| {
        let service = &services[name];
        let from_env = environment(service).get(variable).cloned();
        let from_flag = service["command"].as_sequence().and_then(|command| {
            let words: Vec<String> = command.iter().map(text).collect();
            words
                .windows(2)
                .find(|w| w[0] == "--listen")
                .map(|w| w[1].clone())
        });
        port_of(
            &from_flag
                .or(from_env)
                .unwrap_or_else(|| panic!("{name} sets no listen address")),
        )
    };
    let expect = |name: &str, variable: &str, port: u16| {
        assert_eq!(listen(name, variable), port, "{name} listens elsewhere");
        assert_eq!(
            published(name),
            vec![(port, port)],
            "{name} publishes elsewhere"
        );
    };
    expect("schema-registry", "REGISTRY_LISTEN", DEV_REGISTRY_PORT);
    expect("command-service", "COMMAND_LISTEN", DEV_COMMAND_PORT);
    expect("query-1", "QUERY_LISTEN", DEV_QUERY_PORTS[0]);
    expect("query-2", "QUERY_LISTEN", DEV_QUERY_PORTS[1]);
}
