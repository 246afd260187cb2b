//! The layering rule, checked from `cargo metadata`: every workspace crate names its layer in
//! `[package.metadata] layer = "…"`, and
//!
//! - the generic layers (`wire`, `engine`, `http`) never depend on a `domain` crate, directly or
//!   through another crate;
//! - a `domain` crate never depends on Kafka, RocksDB or actix-web, directly or through another
//!   crate: a domain is schemas, decisions and views, testable without infrastructure;
//! - `service` crates (the composition roots) and `tool` crates may depend on anything.
//!
//! Only normal dependencies count: tests may use whatever they need.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use anyhow::Context;
use serde_json::Value;

use crate::workspace::Workspace;

/// Packages a domain crate must not reach.
const INFRASTRUCTURE: &[&str] = &[
    "rdkafka",
    "rdkafka-sys",
    "rocksdb",
    "librocksdb-sys",
    "actix-web",
    "actix-http",
];
const LAYERS: &[&str] = &["wire", "engine", "http", "domain", "service", "tool"];
const GENERIC: &[&str] = &["wire", "engine", "http"];

/// A dependency graph: package id → (name, layer when a workspace member, normal dependencies).
#[derive(Debug, Default)]
struct Graph {
    names: BTreeMap<String, String>,
    layers: BTreeMap<String, Option<String>>,
    edges: BTreeMap<String, Vec<String>>,
}

impl Graph {
    fn from_metadata(metadata: &Value) -> anyhow::Result<Self> {
        let mut graph = Self::default();
        let members: BTreeSet<&str> = metadata["workspace_members"]
            .as_array()
            .context("no workspace_members")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for package in metadata["packages"].as_array().context("no packages")? {
            let id = package["id"]
                .as_str()
                .context("package without id")?
                .to_owned();
            let name = package["name"].as_str().unwrap_or_default().to_owned();
            if members.contains(id.as_str()) {
                let layer = package["metadata"]["layer"].as_str().map(str::to_owned);
                graph.layers.insert(id.clone(), layer);
            }
            graph.names.insert(id, name);
        }
        for node in metadata["resolve"]["nodes"]
            .as_array()
            .context("no resolve graph")?
        {
            let id = node["id"].as_str().unwrap_or_default().to_owned();
            let normal = node["deps"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|dep| {
                    dep["dep_kinds"]
                        .as_array()
                        .is_some_and(|kinds| kinds.iter().any(|k| k["kind"].is_null()))
                })
                .filter_map(|dep| dep["pkg"].as_str().map(str::to_owned))
                .collect();
            graph.edges.insert(id, normal);
        }
        Ok(graph)
    }

    fn name<'a>(&'a self, id: &'a str) -> &'a str {
        self.names.get(id).map_or(id, String::as_str)
    }

    /// The first path from `from` to a package `wanted` accepts, as names.
    fn path_to(&self, from: &str, wanted: impl Fn(&str) -> bool) -> Option<Vec<String>> {
        let mut previous: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = VecDeque::from([from]);
        let mut seen = BTreeSet::from([from]);
        while let Some(id) = queue.pop_front() {
            if id != from && wanted(id) {
                let mut path = vec![self.name(id).to_owned()];
                let mut at = id;
                while let Some(&before) = previous.get(at) {
                    path.push(self.name(before).to_owned());
                    at = before;
                }
                path.reverse();
                return Some(path);
            }
            for next in self.edges.get(id).into_iter().flatten() {
                if seen.insert(next) {
                    previous.insert(next, id);
                    queue.push_back(next);
                }
            }
        }
        None
    }

    /// Every breach of the rule, in words.
    fn violations(&self) -> Vec<String> {
        let mut found = Vec::new();
        for (id, layer) in &self.layers {
            let name = self.name(id);
            let Some(layer) = layer else {
                found.push(format!(
                    "{name} names no layer: add `[package.metadata] layer = \"…\"` ({})",
                    LAYERS.join(", ")
                ));
                continue;
            };
            if !LAYERS.contains(&layer.as_str()) {
                found.push(format!("{name} names an unknown layer `{layer}`"));
                continue;
            }
            if GENERIC.contains(&layer.as_str()) {
                let is_domain =
                    |dep: &str| self.layers.get(dep).and_then(Option::as_deref) == Some("domain");
                if let Some(path) = self.path_to(id, is_domain) {
                    found.push(format!(
                        "{name} ({layer}) depends on a domain crate: {}",
                        path.join(" → ")
                    ));
                }
            }
            if layer == "domain" {
                let is_infrastructure = |dep: &str| INFRASTRUCTURE.contains(&self.name(dep));
                if let Some(path) = self.path_to(id, is_infrastructure) {
                    found.push(format!(
                        "{name} (domain) depends on infrastructure: {}",
                        path.join(" → ")
                    ));
                }
            }
        }
        found
    }
}

/// Checks the workspace; the error lists every breach.
pub(crate) fn check(ws: &Workspace) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1"])
        .current_dir(&ws.root)
        .output()
        .context("running cargo metadata")?;
    anyhow::ensure!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout)?;
    let violations = Graph::from_metadata(&metadata)?.violations();
    anyhow::ensure!(
        violations.is_empty(),
        "the layering rule is broken:\n  {}",
        violations.join("\n  ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A workspace as `cargo metadata` describes it: `members` are `(name, layer)`, `deps` are
    /// `(from, to, kind)` with kind `None` for a normal dependency.
    fn metadata(
        members: &[(&str, Option<&str>)],
        others: &[&str],
        deps: &[(&str, &str, Option<&str>)],
    ) -> Value {
        let id = |name: &str| format!("id-{name}");
        let packages: Vec<Value> = members
            .iter()
            .map(|(name, layer)| {
                let metadata = layer.map_or(Value::Null, |l| serde_json::json!({ "layer": l }));
                serde_json::json!({ "id": id(name), "name": name, "metadata": metadata })
            })
            .chain(
                others
                    .iter()
                    .map(|name| serde_json::json!({ "id": id(name), "name": name })),
            )
            .collect();
        let names: Vec<&str> = members
            .iter()
            .map(|(n, _)| *n)
            .chain(others.iter().copied())
            .collect();
        let nodes: Vec<Value> = names
            .iter()
            .map(|name| {
                let deps: Vec<Value> = deps
                    .iter()
                    .filter(|(from, _, _)| from == name)
                    .map(|(_, to, kind)| {
                        serde_json::json!({ "pkg": id(to), "dep_kinds": [{ "kind": kind }] })
                    })
                    .collect();
                serde_json::json!({ "id": id(name), "deps": deps })
            })
            .collect();
        serde_json::json!({
            "packages": packages,
            "workspace_members": members.iter().map(|(n, _)| id(n)).collect::<Vec<_>>(),
            "resolve": { "nodes": nodes },
        })
    }

    fn violations(metadata: &Value) -> Vec<String> {
        Graph::from_metadata(metadata).unwrap().violations()
    }

    const MEMBERS: &[(&str, Option<&str>)] = &[
        ("wire", Some("wire")),
        ("engine", Some("engine")),
        ("orders", Some("domain")),
        ("service", Some("service")),
    ];

    #[test]
    fn a_layered_workspace_passes() {
        let good = metadata(
            MEMBERS,
            &["rdkafka", "serde"],
            &[
                ("engine", "wire", None),
                ("engine", "rdkafka", None),
                ("orders", "wire", None),
                ("orders", "serde", None),
                ("service", "engine", None),
                ("service", "orders", None),
                // Tests may use anything.
                ("engine", "orders", Some("dev")),
            ],
        );
        assert_eq!(violations(&good), Vec::<String>::new());
    }

    #[test]
    fn an_engine_reaching_a_domain_fails_even_through_another_crate() {
        let bad = metadata(
            MEMBERS,
            &[],
            &[("engine", "wire", None), ("wire", "orders", None)],
        );
        let found = violations(&bad);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found
                .iter()
                .any(|v| v
                    .contains("engine (engine) depends on a domain crate: engine → wire → orders")),
            "{found:?}"
        );
    }

    #[test]
    fn a_domain_reaching_infrastructure_fails() {
        let bad = metadata(
            MEMBERS,
            &["actix-web", "helper"],
            &[("orders", "helper", None), ("helper", "actix-web", None)],
        );
        let found = violations(&bad);
        assert_eq!(
            found,
            ["orders (domain) depends on infrastructure: orders → helper → actix-web"]
        );
    }

    #[test]
    fn every_crate_names_a_known_layer() {
        let bad = metadata(&[("stray", None), ("odd", Some("utils"))], &[], &[]);
        let found = violations(&bad);
        assert_eq!(found.len(), 2, "{found:?}");
    }

    #[test]
    fn this_workspace_keeps_the_rule() {
        let ws = Workspace::locate().unwrap();
        check(&ws).unwrap();
    }
}
