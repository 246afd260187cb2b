//! The customer as queries show them, folded from their events. The view is the public response
//! of `GET /customers/{id}` and what a replica stores for it.

use std::time::{Duration, UNIX_EPOCH};

use crate::events::{CustomerEvent, CustomerPayload};

/// An event that does not follow the view: not the next version, or not a valid next fact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("expected version {expected}, got {got}")]
pub struct VersionGap {
    pub expected: i64,
    pub got: i64,
}

/// A customer as `GET /customers/{id}` shows them. This is the public response contract and the
/// stored form of the view.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct CustomerView {
    pub customer_id: String,
    pub name: String,
    pub email: String,
    pub status: CustomerStatus,
    pub version: i64,
    pub registered_at: String,
    pub updated_at: String,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum CustomerStatus {
    Active,
    Deactivated,
}

/// RFC 3339 UTC with milliseconds.
fn timestamp(ms: i64) -> String {
    let ms = u64::try_from(ms).unwrap_or(0);
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The next view of a customer after `event`, or why the event does not follow.
pub fn evolve(
    current: Option<CustomerView>,
    event: &CustomerEvent,
) -> Result<CustomerView, VersionGap> {
    let envelope = &event.envelope;
    let expected = current.as_ref().map_or(1, |v| v.version + 1);
    if envelope.aggregate_version != expected {
        return Err(VersionGap {
            expected,
            got: envelope.aggregate_version,
        });
    }
    let at = timestamp(envelope.occurred_at_ms);
    let mut view = match (current, &event.payload) {
        (None, CustomerPayload::Registered { name, email }) => CustomerView {
            customer_id: envelope.aggregate_id.clone(),
            name: name.clone(),
            email: email.clone(),
            status: CustomerStatus::Active,
            version: 0,
            registered_at: at.clone(),
            updated_at: at.clone(),
        },
        // A first event that is not a registration, or a second registration: not a valid
        // history.
        (None, _) | (Some(_), CustomerPayload::Registered { .. }) => {
            return Err(VersionGap {
                expected,
                got: envelope.aggregate_version,
            });
        }
        (Some(mut view), CustomerPayload::EmailChanged { email }) => {
            view.email = email.clone();
            view
        }
        (Some(mut view), CustomerPayload::Deactivated { .. }) => {
            view.status = CustomerStatus::Deactivated;
            view
        }
    };
    view.version = envelope.aggregate_version;
    view.updated_at = at;
    Ok(view)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::events::Envelope;

    fn event(version: i64, payload: CustomerPayload) -> CustomerEvent {
        CustomerEvent {
            envelope: Envelope {
                event_id: format!("e-{version}"),
                aggregate_id: "c-42".into(),
                aggregate_version: version,
                occurred_at_ms: 1_795_000_000_000 + version * 1_000,
                command_id: format!("k-{version}"),
                idempotency_key: None,
                correlation_id: "r-1".into(),
            },
            payload,
        }
    }

    fn registered() -> CustomerPayload {
        CustomerPayload::Registered {
            name: "Ada".into(),
            email: "ada@example.com".into(),
        }
    }

    fn email_changed(email: &str) -> CustomerPayload {
        CustomerPayload::EmailChanged {
            email: email.into(),
        }
    }

    fn deactivated() -> CustomerPayload {
        CustomerPayload::Deactivated {
            reason: "closed the account".into(),
        }
    }

    #[test]
    fn a_customer_is_folded_from_their_history() {
        let view = evolve(None, &event(1, registered())).unwrap();
        assert_eq!(
            view,
            CustomerView {
                customer_id: "c-42".into(),
                name: "Ada".into(),
                email: "ada@example.com".into(),
                status: CustomerStatus::Active,
                version: 1,
                registered_at: "2026-11-18T11:06:41.000Z".into(),
                updated_at: "2026-11-18T11:06:41.000Z".into(),
            }
        );
        let view = evolve(Some(view), &event(2, email_changed("ada@example.org"))).unwrap();
        assert_eq!(view.email, "ada@example.org");
        assert_eq!(view.status, CustomerStatus::Active);
        assert_eq!(view.version, 2);
        assert_eq!(view.updated_at, "2026-11-18T11:06:42.000Z");
        let view = evolve(Some(view), &event(3, deactivated())).unwrap();
        assert_eq!(view.status, CustomerStatus::Deactivated);
        assert_eq!(view.email, "ada@example.org");
        assert_eq!(view.version, 3);
        assert_eq!(view.registered_at, "2026-11-18T11:06:41.000Z");
        assert_eq!(view.updated_at, "2026-11-18T11:06:43.000Z");
    }

    #[test]
    fn an_event_that_is_not_the_next_version_is_a_gap() {
        assert_eq!(
            evolve(None, &event(2, registered())),
            Err(VersionGap {
                expected: 1,
                got: 2
            })
        );
        let view = evolve(None, &event(1, registered())).unwrap();
        for version in [1, 3] {
            assert_eq!(
                evolve(Some(view.clone()), &event(version, deactivated())),
                Err(VersionGap {
                    expected: 2,
                    got: version
                })
            );
        }
    }

    #[test]
    fn an_event_that_cannot_follow_is_a_gap() {
        for payload in [email_changed("a@b.c"), deactivated()] {
            assert_eq!(
                evolve(None, &event(1, payload)),
                Err(VersionGap {
                    expected: 1,
                    got: 1
                })
            );
        }
        let view = evolve(None, &event(1, registered())).unwrap();
        assert_eq!(
            evolve(Some(view), &event(2, registered())),
            Err(VersionGap {
                expected: 2,
                got: 2
            })
        );
    }

    #[test]
    fn the_view_serialises_as_the_public_contract() {
        let view = evolve(None, &event(1, registered())).unwrap();
        let view = evolve(Some(view), &event(2, deactivated())).unwrap();
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "customer_id": "c-42",
                "name": "Ada",
                "email": "ada@example.com",
                "status": "deactivated",
                "version": 2,
                "registered_at": "2026-11-18T11:06:41.000Z",
                "updated_at": "2026-11-18T11:06:42.000Z",
            })
        );
        assert_eq!(serde_json::from_value::<CustomerView>(json).unwrap(), view);
    }
}
