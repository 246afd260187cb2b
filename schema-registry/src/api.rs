//! HTTP routes and handlers of the Confluent Schema Registry REST API.
//!
//! Request bodies are parsed as JSON whatever their `Content-Type`:
//! clients send `application/vnd.schemaregistry.v1+json`,
//! `application/vnd.schemaregistry+json`, `application/json` or
//! `application/octet-stream`, and Confluent accepts them all.
//!
//! Query flags (`deleted`, `permanent`, `verbose`, `defaultToGlobal`) are
//! true only when equal to `true` ignoring case, because the Python client
//! sends Python's `True`/`False` spelling.

use std::collections::HashMap;

use actix_web::{
    HttpResponse, Resource,
    web::{self, Bytes, Data, Path, Payload, Query},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    compatibility::CompatibilityLevel,
    error::{CONTENT_TYPE, RegistryError},
    registry::Registry,
    schema::AvroSchema,
    store::{SubjectVersion, VersionSpec},
};

/// Largest accepted request body. Kafka's default record limit (1 MiB)
/// is the real ceiling for a schema; this only bounds memory per request.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

type Flags = Query<HashMap<String, String>>;
type Reply = Result<HttpResponse, RegistryError>;

/// Registers every route on `cfg`.
pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::QueryConfig::default()
            .error_handler(|e, _| RegistryError::MalformedRequest(e.to_string()).into()),
    )
    .app_data(
        web::PathConfig::default()
            .error_handler(|e, _| RegistryError::MalformedRequest(e.to_string()).into()),
    )
    .service(resource("/").get(root))
    .service(resource("/health/live").get(live))
    .service(resource("/schemas/types").get(schema_types))
    .service(resource("/schemas/ids/{id}").get(schema_by_id))
    .service(resource("/schemas/ids/{id}/schema").get(raw_schema_by_id))
    .service(resource("/schemas/ids/{id}/versions").get(versions_of_id))
    .service(resource("/schemas/ids/{id}/subjects").get(subjects_of_id))
    .service(resource("/subjects").get(list_subjects))
    .service(
        resource("/subjects/{subject}")
            .post(lookup)
            .delete(delete_subject),
    )
    .service(
        resource("/subjects/{subject}/versions")
            .get(list_versions)
            .post(register),
    )
    .service(
        resource("/subjects/{subject}/versions/{version}")
            .get(get_version)
            .delete(delete_version),
    )
    .service(resource("/subjects/{subject}/versions/{version}/schema").get(raw_version_schema))
    .service(resource("/subjects/{subject}/versions/{version}/referencedby").get(referenced_by))
    .service(
        resource("/config")
            .get(get_global_config)
            .put(put_global_config)
            .delete(delete_global_config),
    )
    .service(
        resource("/config/{subject}")
            .get(get_subject_config)
            .put(put_subject_config)
            .delete(delete_subject_config),
    )
    .service(resource("/compatibility/subjects/{subject}/versions").post(check_all))
    .service(resource("/compatibility/subjects/{subject}/versions/{version}").post(check_version))
    .service(resource("/mode").get(mode));
}

/// Fallback for paths that match no route.
pub(crate) async fn not_found() -> Reply {
    Err(RegistryError::RouteNotFound)
}

async fn method_not_allowed() -> Reply {
    Err(RegistryError::MethodNotAllowed)
}

/// A resource whose unsupported methods answer 405 with an error body.
fn resource(path: &str) -> ResourceBuilder {
    ResourceBuilder(web::resource(path).default_service(web::to(method_not_allowed)))
}

/// Thin wrapper so route registration reads as `resource(..).get(h).post(h)`.
struct ResourceBuilder(Resource);

macro_rules! method {
    ($name:ident, $route:ident) => {
        fn $name<F, Args>(self, handler: F) -> Self
        where
            F: actix_web::Handler<Args>,
            Args: actix_web::FromRequest + 'static,
            F::Output: actix_web::Responder + 'static,
        {
            Self(self.0.route(web::$route().to(handler)))
        }
    };
}

impl ResourceBuilder {
    method!(get, get);
    method!(post, post);
    method!(put, put);
    method!(delete, delete);
}

impl actix_web::dev::HttpServiceFactory for ResourceBuilder {
    fn register(self, config: &mut actix_web::dev::AppService) {
        self.0.register(config);
    }
}

// ----- helpers --------------------------------------------------------------

fn ok_json<T: Serialize + ?Sized>(value: &T) -> Reply {
    let body = serde_json::to_vec(value)
        .map_err(|e| RegistryError::Internal(format!("serializing response: {e}")))?;
    Ok(HttpResponse::Ok().content_type(CONTENT_TYPE).body(body))
}

/// A schema stored by this registry is normalized JSON already.
fn ok_raw_json(body: String) -> Reply {
    Ok(HttpResponse::Ok().content_type(CONTENT_TYPE).body(body))
}

fn flag(query: &Flags, name: &str) -> bool {
    query
        .get(name)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

fn parse_id(raw: &str) -> Result<i32, RegistryError> {
    // Confluent answers 404 for ids that are not numbers, since the path
    // then names no schema.
    raw.parse::<i32>()
        .map_err(|_| RegistryError::SchemaNotFound)
}

async fn read_body(payload: Payload) -> Result<Bytes, RegistryError> {
    match payload.to_bytes_limited(MAX_BODY_BYTES).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => Err(RegistryError::MalformedRequest(format!(
            "cannot read request body: {e}"
        ))),
        Err(_) => Err(RegistryError::MalformedRequest(format!(
            "request body exceeds {MAX_BODY_BYTES} bytes"
        ))),
    }
}

async fn json_body<T: serde::de::DeserializeOwned>(payload: Payload) -> Result<T, RegistryError> {
    let bytes = read_body(payload).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| RegistryError::MalformedRequest(format!("invalid JSON body: {e}")))
}

/// Body of register / lookup / compatibility requests.
#[derive(Debug, Deserialize)]
struct SchemaRequest {
    schema: Option<Value>,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
    references: Option<Vec<Value>>,
}

impl SchemaRequest {
    async fn from_payload(payload: Payload) -> Result<AvroSchema, RegistryError> {
        let request: Self = json_body(payload).await?;
        request.into_schema()
    }

    fn into_schema(self) -> Result<AvroSchema, RegistryError> {
        if let Some(kind) = self.schema_type.as_deref()
            && !kind.eq_ignore_ascii_case("AVRO")
        {
            return Err(RegistryError::InvalidSchema(format!(
                "schema type '{kind}' is not supported; only AVRO is"
            )));
        }
        if self.references.as_ref().is_some_and(|r| !r.is_empty()) {
            return Err(RegistryError::InvalidSchema(
                "schema references are not supported".to_owned(),
            ));
        }
        match self.schema {
            Some(Value::String(raw)) => AvroSchema::parse(&raw),
            Some(_) => Err(RegistryError::InvalidSchema(
                "the 'schema' field must be a string containing the schema JSON".to_owned(),
            )),
            None => Err(RegistryError::InvalidSchema(
                "the 'schema' field is required".to_owned(),
            )),
        }
    }
}

#[derive(Debug, Serialize)]
struct VersionResponse<'a> {
    subject: &'a str,
    version: i32,
    id: i32,
    schema: &'a str,
}

impl<'a> From<&'a SubjectVersion> for VersionResponse<'a> {
    fn from(v: &'a SubjectVersion) -> Self {
        Self {
            subject: &v.subject,
            version: v.version,
            id: v.id,
            schema: v.schema.normalized(),
        }
    }
}

// ----- misc -----------------------------------------------------------------

async fn root() -> Reply {
    ok_json(&json!({}))
}

async fn live() -> Reply {
    ok_json(&json!({ "status": "ok" }))
}

async fn mode() -> Reply {
    ok_json(&json!({ "mode": "READWRITE" }))
}

// ----- schemas by id --------------------------------------------------------

async fn schema_types() -> Reply {
    ok_json(&["AVRO"])
}

async fn schema_by_id(registry: Data<Registry>, id: Path<String>) -> Reply {
    let id = parse_id(&id)?;
    let state = registry.read().await;
    // Confluent only adds "schemaType" for non-Avro schemas.
    ok_json(&json!({ "schema": state.schema_by_id(id)?.normalized() }))
}

async fn raw_schema_by_id(registry: Data<Registry>, id: Path<String>) -> Reply {
    let id = parse_id(&id)?;
    let state = registry.read().await;
    ok_raw_json(state.schema_by_id(id)?.normalized().to_owned())
}

async fn versions_of_id(registry: Data<Registry>, id: Path<String>, query: Flags) -> Reply {
    let id = parse_id(&id)?;
    let state = registry.read().await;
    let pairs: Vec<Value> = state
        .versions_of_id(id, flag(&query, "deleted"))?
        .into_iter()
        .map(|(subject, version)| json!({ "subject": subject, "version": version }))
        .collect();
    ok_json(&pairs)
}

async fn subjects_of_id(registry: Data<Registry>, id: Path<String>, query: Flags) -> Reply {
    let id = parse_id(&id)?;
    let state = registry.read().await;
    let mut subjects: Vec<String> = state
        .versions_of_id(id, flag(&query, "deleted"))?
        .into_iter()
        .map(|(subject, _)| subject)
        .collect();
    subjects.dedup();
    ok_json(&subjects)
}

// ----- subjects -------------------------------------------------------------

async fn list_subjects(registry: Data<Registry>, query: Flags) -> Reply {
    let prefix = query.get("subjectPrefix").map_or("", String::as_str);
    let state = registry.read().await;
    ok_json(&state.subjects(flag(&query, "deleted"), prefix))
}

async fn lookup(
    registry: Data<Registry>,
    subject: Path<String>,
    query: Flags,
    payload: Payload,
) -> Reply {
    let schema = SchemaRequest::from_payload(payload).await?;
    let state = registry.read().await;
    let found = state.lookup(&subject, &schema, flag(&query, "deleted"))?;
    ok_json(&VersionResponse::from(&found))
}

async fn delete_subject(registry: Data<Registry>, subject: Path<String>, query: Flags) -> Reply {
    let versions = registry
        .delete_subject(&subject, flag(&query, "permanent"))
        .await?;
    ok_json(&versions)
}

async fn list_versions(registry: Data<Registry>, subject: Path<String>, query: Flags) -> Reply {
    let state = registry.read().await;
    ok_json(&state.versions(&subject, flag(&query, "deleted"))?)
}

async fn register(registry: Data<Registry>, subject: Path<String>, payload: Payload) -> Reply {
    let schema = SchemaRequest::from_payload(payload).await?;
    let id = registry.register(&subject, &schema).await?;
    ok_json(&json!({ "id": id }))
}

async fn get_version(
    registry: Data<Registry>,
    path: Path<(String, String)>,
    query: Flags,
) -> Reply {
    let (subject, version) = path.into_inner();
    let spec = VersionSpec::parse(&version)?;
    let state = registry.read().await;
    let found = state.version(&subject, spec, flag(&query, "deleted"))?;
    ok_json(&VersionResponse::from(&found))
}

async fn raw_version_schema(
    registry: Data<Registry>,
    path: Path<(String, String)>,
    query: Flags,
) -> Reply {
    let (subject, version) = path.into_inner();
    let spec = VersionSpec::parse(&version)?;
    let state = registry.read().await;
    let found = state.version(&subject, spec, flag(&query, "deleted"))?;
    ok_raw_json(found.schema.normalized().to_owned())
}

async fn referenced_by(
    registry: Data<Registry>,
    path: Path<(String, String)>,
    query: Flags,
) -> Reply {
    let (subject, version) = path.into_inner();
    let spec = VersionSpec::parse(&version)?;
    registry
        .read()
        .await
        .version(&subject, spec, flag(&query, "deleted"))?;
    // Schema references are not supported, so nothing refers to anything.
    ok_json(&Vec::<i32>::new())
}

async fn delete_version(
    registry: Data<Registry>,
    path: Path<(String, String)>,
    query: Flags,
) -> Reply {
    let (subject, version) = path.into_inner();
    let spec = VersionSpec::parse(&version)?;
    let deleted = registry
        .delete_version(&subject, spec, flag(&query, "permanent"))
        .await?;
    ok_json(&deleted)
}

// ----- config ---------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct ConfigUpdate {
    compatibility: Option<String>,
    // Accepted as well because it is the field name of GET responses, and
    // clients round-tripping a config object send it back.
    #[serde(rename = "compatibilityLevel")]
    compatibility_level: Option<String>,
}

async fn parse_level(payload: Payload) -> Result<CompatibilityLevel, RegistryError> {
    let update: ConfigUpdate = json_body(payload).await?;
    update
        .compatibility
        .or(update.compatibility_level)
        .ok_or_else(|| RegistryError::InvalidCompatibilityLevel(String::new()))?
        .parse()
}

fn level_response(level: CompatibilityLevel) -> Reply {
    ok_json(&json!({ "compatibilityLevel": level }))
}

async fn get_global_config(registry: Data<Registry>) -> Reply {
    level_response(registry.read().await.global_level())
}

async fn put_global_config(registry: Data<Registry>, payload: Payload) -> Reply {
    let level = parse_level(payload).await?;
    registry.set_level(None, level).await?;
    ok_json(&json!({ "compatibility": level }))
}

async fn delete_global_config(registry: Data<Registry>) -> Reply {
    level_response(registry.delete_level(None).await?)
}

async fn get_subject_config(
    registry: Data<Registry>,
    subject: Path<String>,
    query: Flags,
) -> Reply {
    let state = registry.read().await;
    match state.subject_level(&subject) {
        Some(level) => level_response(level),
        None if flag(&query, "defaultToGlobal") => level_response(state.global_level()),
        None => Err(RegistryError::SubjectConfigNotFound(subject.into_inner())),
    }
}

async fn put_subject_config(
    registry: Data<Registry>,
    subject: Path<String>,
    payload: Payload,
) -> Reply {
    let level = parse_level(payload).await?;
    registry.set_level(Some(&subject), level).await?;
    ok_json(&json!({ "compatibility": level }))
}

async fn delete_subject_config(registry: Data<Registry>, subject: Path<String>) -> Reply {
    level_response(registry.delete_level(Some(&subject)).await?)
}

// ----- compatibility --------------------------------------------------------

fn compatibility_response(messages: Vec<String>, verbose: bool) -> Reply {
    let is_compatible = messages.is_empty();
    if verbose {
        ok_json(&json!({ "is_compatible": is_compatible, "messages": messages }))
    } else {
        ok_json(&json!({ "is_compatible": is_compatible }))
    }
}

async fn check_all(
    registry: Data<Registry>,
    subject: Path<String>,
    query: Flags,
    payload: Payload,
) -> Reply {
    let schema = SchemaRequest::from_payload(payload).await?;
    let messages = registry
        .read()
        .await
        .check_compatibility(&subject, None, &schema)?;
    compatibility_response(messages, flag(&query, "verbose"))
}

async fn check_version(
    registry: Data<Registry>,
    path: Path<(String, String)>,
    query: Flags,
    payload: Payload,
) -> Reply {
    let (subject, version) = path.into_inner();
    let spec = VersionSpec::parse(&version)?;
    let schema = SchemaRequest::from_payload(payload).await?;
    let messages = registry
        .read()
        .await
        .check_compatibility(&subject, Some(spec), &schema)?;
    compatibility_response(messages, flag(&query, "verbose"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn request(body: Value) -> Result<AvroSchema, RegistryError> {
        serde_json::from_value::<SchemaRequest>(body)
            .unwrap()
            .into_schema()
    }

    #[test]
    fn schema_requests_are_validated() {
        assert!(request(json!({ "schema": "\"int\"" })).is_ok());
        assert!(
            request(json!({ "schema": "\"int\"", "schemaType": "AVRO", "references": [] })).is_ok()
        );
        assert!(request(json!({ "schema": "\"int\"", "schemaType": null, "references": null, "metadata": null })).is_ok());
        for bad in [
            json!({ "schema": "\"int\"", "schemaType": "JSON" }),
            json!({ "schema": "\"int\"", "references": [{ "name": "x", "subject": "y", "version": 1 }] }),
            json!({ "schema": 5 }),
            json!({}),
            json!({ "schema": "{" }),
        ] {
            let err = request(bad.clone()).unwrap_err();
            assert_eq!(err.status_and_code().1, 42201, "{bad}");
        }
    }
}
