//! The queries a domain answers from its read models, described for the projection engine.
//!
//! A domain says what a query reads and how partial answers add up; the engine does the rest:
//! the route, the id check, the `Consistency-Token`, which replica answers, the forward to the
//! owner, the gather over every partition, and the problem answers. Three shapes cover the
//! queries a partitioned read side can answer:
//!
//! - [`Lookup`]: one key, answered by the replica owning the key's partition.
//! - [`Gather`]: one key whose data is spread over every partition of a topic (a customer's
//!   orders); each replica reads the partitions it serves and the receiving replica merges the
//!   parts, or answers a retryable `503` if some partition had no owner that answered.
//! - [`Join`]: a [`Lookup`]-like read on its owner, joined with a [`Gather`].
//!
//! A domain registers its queries through [`Queries`], which a service implements; the traits
//! carry no HTTP, store or Kafka type, so a query is testable with
//! [`MemoryViews`](crate::view::MemoryViews).

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::partitioner::partition_for_key;
use crate::view::{ReadModel, ViewError, Views};

/// What the API document says of a query.
#[derive(Debug, Clone, Copy)]
pub struct QueryDoc {
    /// The tag it is listed under: the collection it reads.
    pub tag: &'static str,
    pub summary: &'static str,
    pub description: &'static str,
    /// What the path's key is: "The order id".
    pub key: &'static str,
}

/// How a domain says a key is unknown: its problem type and its detail.
#[derive(Debug, Clone, Copy)]
pub struct NotFound {
    /// The problem type's code: `order-not-found`.
    pub code: &'static str,
    /// The problem type's title: `Order not found`.
    pub title: &'static str,
    /// The detail, around the key: `("order ", " does not exist")`.
    pub detail: (&'static str, &'static str),
}

impl NotFound {
    pub fn detail(&self, key: &str) -> String {
        format!("{}{key}{}", self.detail.0, self.detail.1)
    }
}

/// What a query keyed by one path parameter reads, and which partition answers for the key.
pub trait Keyed: Send + Sync + 'static {
    /// The read model whose views it reads.
    type Model: ReadModel;
    /// The route, with the key as its one parameter: `/orders/{id}`.
    const PATH: &'static str;
    /// The topic, of the model's [`ReadModel::TOPICS`], by whose partitions the key is placed.
    const KEY_TOPIC: &'static str;
    /// The answer when the key's owner, caught up, has no view of it.
    const NOT_FOUND: NotFound;
    const DOC: QueryDoc;
}

/// One key's view, read where the key's partition is served.
pub trait Lookup: Keyed {
    /// The answer's shape, for the API document.
    type Answer: utoipa::ToSchema;

    /// The key's answer as a JSON document, if the views hold it. A read model that stores its
    /// answers as JSON hands the stored bytes out as they are.
    fn read(views: &dyn Views, key: &str) -> Result<Option<Vec<u8>>, ViewError>;
}

/// The partitions of a topic a replica answers a gather for.
#[derive(Debug, Clone, Copy)]
pub struct Partitions<'a> {
    /// Owned and caught up: what this replica's part covers.
    pub serving: &'a [i32],
    /// The topic's partition count.
    pub count: i32,
}

impl Partitions<'_> {
    /// Whether the aggregate `key` (an event key of the topic) is in a partition served here.
    pub fn holds(&self, key: &str) -> bool {
        self.serving
            .contains(&partition_for_key(key.as_bytes(), self.count))
    }
}

/// One key's data spread over every partition of a topic: each replica reads a part, the
/// receiving replica merges the parts.
pub trait Gather: Send + Sync + 'static {
    /// The read model whose views it reads.
    type Model: ReadModel;
    /// What it takes from the query string.
    type Params: Clone + Send + Sync + 'static;
    /// One replica's part, sent between replicas.
    type Part: Serialize + DeserializeOwned + utoipa::ToSchema + Send + 'static;
    /// The merged answer.
    type Answer: Serialize + utoipa::ToSchema;

    /// The public route, with the key as its one parameter; the part is served between replicas
    /// at the same path under `/internal`.
    const PATH: &'static str;
    /// The topic, of the model's [`ReadModel::TOPICS`], every partition of which has a share.
    const TOPIC: &'static str;
    const DOC: QueryDoc;
    /// The query string's parameters, `(name, description)`, for the API document.
    const PARAMS: &'static [(&'static str, &'static str)];

    /// The parameters from the query string's pairs, or what is wrong with them.
    fn params(pairs: &[(String, String)]) -> Result<Self::Params, String>;

    /// The parameters as a query string (`limit=50&after=…`, or empty), passed on to the other
    /// replicas.
    fn query_string(params: &Self::Params) -> String;

    /// This replica's part: what the views hold for `key` in the `partitions` it serves.
    fn part(
        views: &dyn Views,
        key: &str,
        params: &Self::Params,
        partitions: Partitions<'_>,
    ) -> Result<Self::Part, ViewError>;

    /// The answer from every partition's part, each partition counted once.
    fn merge(key: &str, params: &Self::Params, parts: Vec<Self::Part>) -> Self::Answer;
}

/// A key's view on its owner, joined with what a [`Gather`] adds up over every partition of
/// another topic: a customer's profile and their orders' summary.
pub trait Join: Keyed {
    /// What the owner reads of the key.
    type Found: Send;
    /// What is gathered; its part is served between replicas, its public route is not.
    type Gather: Gather<Model = Self::Model, Params = ()>;
    type Answer: Serialize + utoipa::ToSchema;

    fn read(views: &dyn Views, key: &str) -> Result<Option<Self::Found>, ViewError>;

    fn join(found: Self::Found, gathered: <Self::Gather as Gather>::Answer) -> Self::Answer;
}

/// Where a domain registers its queries: a service that serves them implements it.
pub trait Queries {
    fn lookup<L: Lookup>(&mut self);
    fn gather<G: Gather>(&mut self);
    fn join<J: Join>(&mut self);
}
