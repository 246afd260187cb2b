//! The queries a replica serves, as the domains register them ([`shared_events::query`]): their
//! routes, their operations in the OpenAPI document, and their "not found" rows of the problem
//! table, all made from the same registration.

use http_edge::{ProblemType, Route};
use serde_json::{Value, json};
use shared_events::query::{Gather, Join, Keyed, Lookup, Queries, QueryDoc};
use utoipa::openapi::path::PathItem;
use utoipa::openapi::{OpenApi, RefOr, Schema};

use crate::problem::{not_found, types};
use crate::query::{gather_routes, internal_path, join_routes, lookup_route};

/// Every registered query's routes, operations, schemas and problem rows.
#[derive(Default)]
pub struct Catalog {
    routes: Vec<Route>,
    operations: Vec<(String, Value)>,
    schemas: Vec<(String, RefOr<Schema>)>,
    problems: Vec<ProblemType>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("routes", &self.routes.len())
            .finish_non_exhaustive()
    }
}

impl Catalog {
    /// The query routes.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The problem table: the engine's rows and each query's "not found".
    pub fn problems(&self) -> Vec<ProblemType> {
        let mut rows = types::ALL.to_vec();
        for row in &self.problems {
            if !rows.contains(row) {
                rows.push(*row);
            }
        }
        rows
    }

    /// Adds the queries' operations and schemas to `document`.
    pub fn document(&self, document: &mut OpenApi) -> Result<(), serde_json::Error> {
        let components = document.components.get_or_insert_with(Default::default);
        for (name, schema) in &self.schemas {
            components.schemas.insert(name.clone(), schema.clone());
        }
        for (path, operation) in &self.operations {
            let item: PathItem = serde_json::from_value(json!({ "get": operation }))?;
            document.paths.paths.insert(path.clone(), item);
        }
        Ok(())
    }

    fn schema<T: utoipa::ToSchema>(&mut self) -> Value {
        let name = T::name().into_owned();
        let mut nested = Vec::new();
        T::schemas(&mut nested);
        self.schemas.extend(nested);
        self.schemas.push((name.clone(), T::schema()));
        json!({ "$ref": format!("#/components/schemas/{name}") })
    }

    fn keyed<K: Keyed>(&mut self, answer: Value, token: &str) {
        self.problems.push(not_found(&K::NOT_FOUND));
        let operation = operation(
            &K::DOC,
            K::PATH,
            &[],
            token,
            answer,
            &[
                (400, "A bad id or consistency token"),
                (
                    404,
                    "Unknown (said only by the key's owner, caught up with its partition)",
                ),
                (
                    503,
                    "A partition in transit, a position not reached in time, or the projection not started (with Retry-After)",
                ),
            ],
        );
        self.operations.push((K::PATH.to_owned(), operation));
    }

    fn part<G: Gather>(&mut self) {
        let part = self.schema::<G::Part>();
        let answer = json!({
            "type": "object",
            "required": ["partitions", "part"],
            "properties": {
                "partitions": {
                    "type": "array", "items": { "type": "integer", "format": "int32" },
                    "description": "The partitions this replica serves, which the part covers"
                },
                "part": part
            }
        });
        let doc = QueryDoc {
            tag: "internal",
            summary: "Between replicas: this replica's part of a gathered query",
            description: G::DOC.summary,
            key: G::DOC.key,
        };
        let operation = operation(
            &doc,
            G::PATH,
            G::PARAMS,
            "From a command's answer: the partition's owner waits (bounded) until it applied it",
            answer,
            &[
                (400, "A bad id, parameter or consistency token"),
                (
                    503,
                    "Position not reached in time, or the projection not started (with Retry-After)",
                ),
            ],
        );
        self.operations.push((internal_path(G::PATH), operation));
    }
}

impl Queries for Catalog {
    fn lookup<L: Lookup>(&mut self) {
        self.routes.push(lookup_route::<L>());
        let answer = self.schema::<L::Answer>();
        self.keyed::<L>(
            answer,
            "From a command's answer: wait (bounded) until that position is applied",
        );
    }

    fn gather<G: Gather>(&mut self) {
        self.routes.extend(gather_routes::<G>());
        let answer = self.schema::<G::Answer>();
        let operation = operation(
            &G::DOC,
            G::PATH,
            G::PARAMS,
            "From a command's answer: the partition's owner waits (bounded) until it applied it",
            answer,
            &[
                (400, "A bad id, parameter or consistency token"),
                (
                    503,
                    "Some partition had no owner that answered, or the projection not started (with Retry-After)",
                ),
            ],
        );
        self.operations.push((G::PATH.to_owned(), operation));
        self.part::<G>();
    }

    fn join<J: Join>(&mut self) {
        self.routes.extend(join_routes::<J>());
        let answer = self.schema::<J::Answer>();
        self.keyed::<J>(
            answer,
            "From a command's answer (of either topic): wait (bounded) until that position is applied",
        );
        self.part::<J::Gather>();
    }
}

/// A `GET` operation keyed by the path's one parameter.
fn operation(
    doc: &QueryDoc,
    path: &str,
    params: &[(&str, &str)],
    token: &str,
    answer: Value,
    problems: &[(u16, &str)],
) -> Value {
    let key = path
        .split('{')
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .unwrap_or("id");
    let mut parameters = vec![json!({
        "name": key, "in": "path", "required": true, "description": doc.key,
        "schema": { "type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$" }
    })];
    for (name, description) in params {
        parameters.push(json!({
            "name": name, "in": "query", "required": false, "description": description,
            "schema": { "type": "string" }
        }));
    }
    parameters.push(json!({
        "name": "Consistency-Token", "in": "header", "required": false, "description": token,
        "schema": { "type": "string" }
    }));
    let mut responses = serde_json::Map::new();
    responses.insert(
        "200".into(),
        json!({
            "description": "OK",
            "headers": {
                "Served-By": {
                    "description": "The replica that answered", "schema": { "type": "string" }
                },
                "Standby-Lag": {
                    "description": "Present when a standby answered because the owner of the key's partition could not (or, on a gather, a standby gave a partition's part): the committed records it has not applied yet, or `unknown`",
                    "schema": { "type": "string" }
                },
                "Standby-Position": {
                    "description": "Present when a standby answered for the key: its last applied position, as `topic:partition:offset` (a consistency token's form)",
                    "schema": { "type": "string" }
                }
            },
            "content": { "application/json": { "schema": answer } }
        }),
    );
    for (status, description) in problems {
        responses.insert(
            status.to_string(),
            json!({
                "description": description,
                "content": { "application/problem+json": {
                    "schema": { "$ref": "#/components/schemas/Problem" }
                } }
            }),
        );
    }
    json!({
        "tags": [doc.tag],
        "summary": doc.summary,
        "description": doc.description,
        "parameters": parameters,
        "responses": responses,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeSet;

    use serde::{Deserialize, Serialize};
    use shared_events::query::{NotFound, Partitions};
    use shared_events::view::{Applied, Changes, ReadModel, ViewError, Views};

    use super::*;

    /// A toy read model: counters by key.
    #[derive(Debug, Clone)]
    struct Counters;

    impl ReadModel for Counters {
        type Event = ();
        const NAMESPACE: &'static str = "counters";
        const VERSION: u32 = 1;
        const TOPICS: &'static [&'static str] = &["counts"];

        fn apply(
            &self,
            _: &dyn Views,
            _: &mut dyn Changes,
            (): &(),
            _: i32,
        ) -> Result<Applied, ViewError> {
            Ok(Applied::Changed)
        }
    }

    #[derive(Debug, Default, Clone, Serialize, Deserialize, utoipa::ToSchema)]
    struct Count {
        n: u64,
    }

    struct ById;
    impl Keyed for ById {
        type Model = Counters;
        const PATH: &'static str = "/counters/{id}";
        const KEY_TOPIC: &'static str = "counts";
        const NOT_FOUND: NotFound = NotFound {
            code: "counter-not-found",
            title: "Counter not found",
            detail: ("counter ", " does not exist"),
        };
        const DOC: QueryDoc = QueryDoc {
            tag: "counters",
            summary: "A counter",
            description: "",
            key: "The counter id",
        };
    }
    impl Lookup for ById {
        type Answer = Count;
        fn read(views: &dyn Views, key: &str) -> Result<Option<Vec<u8>>, ViewError> {
            views.get(key)
        }
    }

    struct Total;
    impl Gather for Total {
        type Model = Counters;
        type Params = ();
        type Part = Count;
        type Answer = Count;
        const PATH: &'static str = "/totals/{id}";
        const TOPIC: &'static str = "counts";
        const DOC: QueryDoc = ById::DOC;
        const PARAMS: &'static [(&'static str, &'static str)] = &[("x", "unused")];
        fn params(_: &[(String, String)]) -> Result<(), String> {
            Ok(())
        }
        fn query_string((): &()) -> String {
            String::new()
        }
        fn part(_: &dyn Views, _: &str, (): &(), p: Partitions<'_>) -> Result<Count, ViewError> {
            Ok(Count {
                n: p.serving.len() as u64,
            })
        }
        fn merge(_: &str, (): &(), parts: Vec<Count>) -> Count {
            Count {
                n: parts.iter().map(|c| c.n).sum(),
            }
        }
    }

    struct Joined;
    impl Keyed for Joined {
        type Model = Counters;
        const PATH: &'static str = "/joined/{id}";
        const KEY_TOPIC: &'static str = "counts";
        const NOT_FOUND: NotFound = ById::NOT_FOUND;
        const DOC: QueryDoc = ById::DOC;
    }
    impl Join for Joined {
        type Found = Count;
        type Gather = Total;
        type Answer = Count;
        fn read(_: &dyn Views, _: &str) -> Result<Option<Count>, ViewError> {
            Ok(Some(Count::default()))
        }
        fn join(found: Count, gathered: Count) -> Count {
            Count {
                n: found.n + gathered.n,
            }
        }
    }

    #[test]
    fn the_routes_the_operations_and_the_problems_come_from_one_registration() {
        let mut catalog = Catalog::default();
        catalog.lookup::<ById>();
        catalog.gather::<Total>();
        catalog.join::<Joined>();
        let routes: BTreeSet<String> = catalog
            .routes()
            .iter()
            .map(|r| r.path.to_string())
            .collect();
        let expected: BTreeSet<String> = [
            "/counters/{id}",
            "/totals/{id}",
            "/internal/totals/{id}",
            "/joined/{id}",
        ]
        .map(String::from)
        .into();
        assert_eq!(routes, expected);

        let mut document = utoipa::openapi::OpenApiBuilder::new().build();
        catalog.document(&mut document).unwrap();
        let json = serde_json::to_value(&document).unwrap();
        let documented: BTreeSet<String> =
            json["paths"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(documented, expected);
        assert!(json["components"]["schemas"]["Count"].is_object());
        let totals = &json["paths"]["/totals/{id}"]["get"];
        assert_eq!(totals["parameters"][0]["name"], "id");
        assert_eq!(totals["parameters"][1]["name"], "x");
        assert!(
            json["paths"]["/counters/{id}"]["get"]["responses"]["404"].is_object(),
            "a lookup documents its not found"
        );
        assert!(
            catalog
                .problems()
                .iter()
                .any(|row| row.code == "counter-not-found" && row.status.as_u16() == 404)
        );
        assert_eq!(
            catalog
                .problems()
                .iter()
                .filter(|row| row.code == "counter-not-found")
                .count(),
            1,
            "two queries with one not-found row list it once"
        );
    }
}
