//! The customers domain's commands: validated command values, the rules that decide them into
//! events, and the state the command side folds from those events.
//!
//! Request bodies are parsed here into typed values; the rest of the service never sees an
//! unchecked field. Every offending field is reported, not just the first. [`CustomerState`] is
//! the customers aggregate the command engine runs ([`Aggregate`]).

use std::borrow::Cow;

use serde_json::{Map, Value};
use shared_events::aggregate::body_schema;
use shared_events::validation::{Checker, Text, fast, object, parse_fast_or_thorough};
use shared_events::{Aggregate, CommandError, CommandSpec, EventMetadata, Identifier, Rejection};

use crate::events::{CustomerEvent, CustomerPayload, Envelope};

const MIN_EMAIL_LEN: usize = 3;
/// The longest address SMTP can carry (RFC 5321's 256-octet path, less its angle brackets).
const MAX_EMAIL_LEN: usize = 254;

/// Format characters that render as nothing or reorder text (zero-width spaces and joiners,
/// bidirectional marks and overrides, the byte-order mark, the soft hyphen): an address with one
/// looks like another address.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}')
}

/// An e-mail address of a plausible shape: `local@domain.tld`. Deliverability is not checked
/// (only sending mail proves that); the shape keeps typos such as a missing `@` out of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, String> {
        // SMTP limits the path in octets (RFC 5321 §4.5.3.1.3), not characters.
        if !(MIN_EMAIL_LEN..=MAX_EMAIL_LEN).contains(&raw.len()) {
            return Err(format!("must be {MIN_EMAIL_LEN} to {MAX_EMAIL_LEN} bytes"));
        }
        if raw
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || is_invisible(c))
        {
            return Err("must not contain spaces, control or invisible characters".into());
        }
        // RFC 5322's specials, which only a quoted local part may hold: refused rather than
        // parsed, so that a display name or a list (`Ada <ada@x.org>`, `a@x.org,b@y.org`) is
        // never taken for one address.
        if raw.contains(['<', '>', '(', ')', ',', ';', ':', '"', '[', ']', '\\']) {
            return Err("must be a bare address, without quotes, brackets or separators".into());
        }
        let shape = "must be an address such as ada@example.com";
        let mut parts = raw.split('@');
        let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("{shape}, with exactly one `@`"));
        };
        if local.is_empty() {
            return Err(format!("{shape}, with a name before the `@`"));
        }
        if !domain.contains('.') || domain.split('.').any(str::is_empty) {
            return Err(format!("{shape}, with a domain such as example.com"));
        }
        Ok(Self(raw.to_owned()))
    }

    /// Whether two addresses reach the same mailbox as far as anyone can tell without asking
    /// the domain: the domain is case-insensitive (RFC 5321 §2.4), the local part is not.
    pub fn same_mailbox(&self, other: &str) -> bool {
        match (self.0.rsplit_once('@'), other.rsplit_once('@')) {
            (Some((local, domain)), Some((other_local, other_domain))) => {
                local == other_local && domain.eq_ignore_ascii_case(other_domain)
            }
            _ => self.0 == other,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `POST /customers`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterCustomer {
    /// The id the client chose, if any; otherwise the engine makes one up.
    pub customer_id: Option<Identifier>,
    pub name: Text,
    pub email: Email,
}

/// `POST /customers` as sent, before validation. Unknown fields are refused.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(
    as = RegisterCustomerRequest,
    example = json!({"customer_id": "c-42", "name": "Ada", "email": "ada@example.com"})
)]
pub struct RegisterBody<'a> {
    /// Optional: 1 to 64 letters, digits, `.`, `_` or `-`. Left out, the service chooses one.
    #[serde(default, borrow)]
    #[schema(value_type = Option<String>)]
    customer_id: Option<Cow<'a, str>>,
    /// 1 to 200 characters.
    #[serde(borrow)]
    #[schema(value_type = String)]
    name: Cow<'a, str>,
    /// 3 to 254 characters, with exactly one `@` and a domain such as example.com.
    #[serde(borrow)]
    #[schema(value_type = String)]
    email: Cow<'a, str>,
}

impl RegisterCustomer {
    pub fn parse(body: &[u8]) -> Result<Self, CommandError> {
        parse_fast_or_thorough(body, Self::parse_fast, Self::parse_thorough)
    }

    fn parse_fast(body: &[u8]) -> Option<Self> {
        fast(body, |b: RegisterBody<'_>| {
            Some(Self {
                customer_id: match b.customer_id {
                    Some(raw) => Some(Identifier::parse(&raw).ok()?),
                    None => None,
                },
                name: Text::parse(&b.name).ok()?,
                email: Email::parse(&b.email).ok()?,
            })
        })
    }

    fn parse_thorough(body: &[u8]) -> Result<Self, CommandError> {
        let body = object(body)?;
        let mut c = Checker { errors: Vec::new() };
        c.unknown_fields(&body, &["customer_id", "name", "email"], "");
        // Absent and null alike leave the choice to the service, as the fast way reads them.
        let customer_id = match body.get("customer_id") {
            None | Some(Value::Null) => Some(None),
            Some(Value::String(raw)) => Identifier::parse(raw)
                .map_or_else(|m| c.fail("customer_id", m), |id| Some(Some(id))),
            Some(_) => c.fail("customer_id", "must be a string"),
        };
        let name = c.text(&body, "name");
        let email = email_field(&mut c, &body, "email");
        let command = match (customer_id, name, email) {
            (Some(customer_id), Some(name), Some(email)) => Some(Self {
                customer_id,
                name,
                email,
            }),
            _ => None,
        };
        c.finish(command)
    }
}

/// `POST /customers/{id}/email`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEmail {
    pub email: Email,
}

/// `POST /customers/{id}/email` as sent.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ChangeEmailRequest, example = json!({"email": "ada.lovelace@example.org"}))]
pub struct ChangeEmailBody<'a> {
    /// 3 to 254 characters, with exactly one `@` and a domain such as example.com; not the
    /// customer's current address.
    #[serde(borrow)]
    #[schema(value_type = String)]
    email: Cow<'a, str>,
}

impl ChangeEmail {
    pub fn parse(body: &[u8]) -> Result<Self, CommandError> {
        parse_fast_or_thorough(body, Self::parse_fast, Self::parse_thorough)
    }

    fn parse_fast(body: &[u8]) -> Option<Self> {
        fast(body, |b: ChangeEmailBody<'_>| {
            Some(Self {
                email: Email::parse(&b.email).ok()?,
            })
        })
    }

    fn parse_thorough(body: &[u8]) -> Result<Self, CommandError> {
        let body = object(body)?;
        let mut c = Checker { errors: Vec::new() };
        c.unknown_fields(&body, &["email"], "");
        let email = email_field(&mut c, &body, "email");
        c.finish(email.map(|email| Self { email }))
    }
}

/// `POST /customers/{id}/deactivation`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeactivateCustomer {
    pub reason: Text,
}

/// `POST /customers/{id}/deactivation` as sent.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = DeactivateCustomerRequest, example = json!({"reason": "closed the account"}))]
pub struct DeactivateBody<'a> {
    /// 1 to 200 characters.
    #[serde(borrow)]
    #[schema(value_type = String)]
    reason: Cow<'a, str>,
}

impl DeactivateCustomer {
    pub fn parse(body: &[u8]) -> Result<Self, CommandError> {
        parse_fast_or_thorough(body, Self::parse_fast, Self::parse_thorough)
    }

    fn parse_fast(body: &[u8]) -> Option<Self> {
        fast(body, |b: DeactivateBody<'_>| {
            Some(Self {
                reason: Text::parse(&b.reason).ok()?,
            })
        })
    }

    fn parse_thorough(body: &[u8]) -> Result<Self, CommandError> {
        let body = object(body)?;
        let mut c = Checker { errors: Vec::new() };
        c.unknown_fields(&body, &["reason"], "");
        let reason = c.text(&body, "reason");
        c.finish(reason.map(|reason| Self { reason }))
    }
}

/// A required [`Email`] field. Beside `Checker`'s own checks because `Checker` is
/// shared-events' and knows no domain's types.
fn email_field(c: &mut Checker, object: &Map<String, Value>, name: &str) -> Option<Email> {
    let raw = c.string(object, name, name)?;
    Email::parse(raw).map_or_else(|m| c.fail(name, m), Some)
}

/// The commands on a customer, by name: what the service routes, counts and remembers
/// idempotency keys by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandKind {
    Register,
    ChangeEmail,
    Deactivate,
}

impl CommandKind {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::ChangeEmail => "change-email",
            Self::Deactivate => "deactivate",
        }
    }

    /// Whether the command creates its customer (the others need one that exists).
    pub const fn creates(self) -> bool {
        matches!(self, Self::Register)
    }

    /// The command of this name.
    pub fn named(name: &str) -> Option<Self> {
        [Self::Register, Self::ChangeEmail, Self::Deactivate]
            .into_iter()
            .find(|kind| kind.name() == name)
    }

    /// The command that writes an event with this payload.
    pub fn of_payload(payload: &CustomerPayload) -> Self {
        match payload {
            CustomerPayload::Registered { .. } => Self::Register,
            CustomerPayload::EmailChanged { .. } => Self::ChangeEmail,
            CustomerPayload::Deactivated { .. } => Self::Deactivate,
        }
    }
}

/// Any command on a customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomerCommand {
    Register(RegisterCustomer),
    ChangeEmail(ChangeEmail),
    Deactivate(DeactivateCustomer),
}

impl CustomerCommand {
    /// The event payload this command asks for. [`decide`] yields exactly this when it accepts
    /// the command, so the same value can be recomputed from the log: it is what makes two
    /// requests "the same" for an `Idempotency-Key`, before and after a restart.
    pub fn requested(&self) -> CustomerPayload {
        match self {
            Self::Register(register) => CustomerPayload::Registered {
                name: register.name.as_str().to_owned(),
                email: register.email.as_str().to_owned(),
            },
            Self::ChangeEmail(change) => CustomerPayload::EmailChanged {
                email: change.email.as_str().to_owned(),
            },
            Self::Deactivate(deactivate) => CustomerPayload::Deactivated {
                reason: deactivate.reason.as_str().to_owned(),
            },
        }
    }
}

/// Where a customer is in their life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CustomerStatus {
    Active,
    Deactivated,
}

/// What the command side remembers of a customer: just enough to check the rules (the email, so
/// that a change to the same address is refused).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CustomerState {
    pub status: CustomerStatus,
    pub email: String,
}

/// The payload of the event `command` yields on a customer in `state` (None: a new customer).
pub fn decide(
    state: Option<&CustomerState>,
    command: &CustomerCommand,
) -> Result<CustomerPayload, Rejection> {
    match (command, state) {
        (CustomerCommand::Register(_), None) => Ok(command.requested()),
        (CustomerCommand::Register(_), Some(_)) => {
            Err(Rejection("the customer already exists".into()))
        }
        (_, None) => Err(Rejection("the customer does not exist".into())),
        (_, Some(state)) if state.status == CustomerStatus::Deactivated => Err(Rejection(
            "the customer is deactivated; only an active customer can change".into(),
        )),
        (CustomerCommand::ChangeEmail(change), Some(state))
            if change.email.same_mailbox(&state.email) =>
        {
            Err(Rejection(format!(
                "the email is already {}",
                change.email.as_str()
            )))
        }
        (CustomerCommand::ChangeEmail(_) | CustomerCommand::Deactivate(_), Some(_)) => {
            Ok(command.requested())
        }
    }
}

/// The state after `payload` happened to a customer in `state`; None if it cannot follow.
///
/// Only the order of facts is checked (a registration first, never twice): whatever the log
/// holds beyond that has been decided already, and refusing it would strand the customer.
pub fn evolve(state: Option<&CustomerState>, payload: &CustomerPayload) -> Option<CustomerState> {
    match (state, payload) {
        (None, CustomerPayload::Registered { email, .. }) => Some(CustomerState {
            status: CustomerStatus::Active,
            email: email.clone(),
        }),
        (Some(s), CustomerPayload::EmailChanged { email }) => Some(CustomerState {
            status: s.status,
            email: email.clone(),
        }),
        (Some(s), CustomerPayload::Deactivated { .. }) => Some(CustomerState {
            status: CustomerStatus::Deactivated,
            email: s.email.clone(),
        }),
        _ => None,
    }
}

impl Aggregate for CustomerState {
    type Event = CustomerEvent;
    type Command = CustomerCommand;
    type Payload = CustomerPayload;

    const NAME: &'static str = "customer";
    const COLLECTION: &'static str = "customers";
    const COMMANDS: &'static [CommandSpec] = &[
        CommandSpec {
            name: CommandKind::Register.name(),
            segment: None,
            summary: "Register a customer",
            body_schema: body_schema::<RegisterBody<'static>>,
        },
        CommandSpec {
            name: CommandKind::ChangeEmail.name(),
            segment: Some("email"),
            summary: "Change an active customer's email address",
            body_schema: body_schema::<ChangeEmailBody<'static>>,
        },
        CommandSpec {
            name: CommandKind::Deactivate.name(),
            segment: Some("deactivation"),
            summary: "Deactivate an active customer",
            body_schema: body_schema::<DeactivateBody<'static>>,
        },
    ];

    fn parse(command: &'static str, body: &[u8]) -> Result<CustomerCommand, CommandError> {
        Ok(match CommandKind::named(command) {
            Some(CommandKind::Register) => {
                CustomerCommand::Register(RegisterCustomer::parse(body)?)
            }
            Some(CommandKind::ChangeEmail) => {
                CustomerCommand::ChangeEmail(ChangeEmail::parse(body)?)
            }
            Some(CommandKind::Deactivate) => {
                CustomerCommand::Deactivate(DeactivateCustomer::parse(body)?)
            }
            None => {
                return Err(CommandError::Malformed(format!(
                    "customers have no command `{command}`"
                )));
            }
        })
    }

    fn chosen_id(command: &CustomerCommand) -> Option<&str> {
        match command {
            CustomerCommand::Register(register) => {
                register.customer_id.as_ref().map(Identifier::as_str)
            }
            _ => None,
        }
    }

    fn requested(command: &CustomerCommand) -> CustomerPayload {
        command.requested()
    }

    fn decide(
        state: Option<&Self>,
        command: &CustomerCommand,
    ) -> Result<CustomerPayload, Rejection> {
        decide(state, command)
    }

    fn evolve(state: Option<&Self>, event: &CustomerEvent) -> Option<Self> {
        evolve(state, &event.payload)
    }

    fn event(
        metadata: EventMetadata,
        id: &str,
        version: i64,
        payload: CustomerPayload,
    ) -> CustomerEvent {
        CustomerEvent {
            envelope: Envelope::new(metadata, id, version),
            payload,
        }
    }

    fn payload(event: &CustomerEvent) -> &CustomerPayload {
        &event.payload
    }

    fn command_of(event: &CustomerEvent) -> &'static str {
        CommandKind::of_payload(&event.payload).name()
    }
}

/// For the `parse_agreement` fuzz target: on any body, the fast way alone accepts exactly what
/// the thorough way accepts, and as the same command, for every command of the domain.
#[cfg(feature = "fuzzing")]
pub fn fast_and_thorough_agree(body: &[u8]) -> Result<(), String> {
    shared_events::validation::parses_agree(
        body,
        RegisterCustomer::parse_fast,
        RegisterCustomer::parse_thorough,
    )?;
    shared_events::validation::parses_agree(
        body,
        ChangeEmail::parse_fast,
        ChangeEmail::parse_thorough,
    )?;
    shared_events::validation::parses_agree(
        body,
        DeactivateCustomer::parse_fast,
        DeactivateCustomer::parse_thorough,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn fields(err: CommandError) -> Vec<String> {
        match err {
            CommandError::Invalid(errors) => errors.into_iter().map(|e| e.field).collect(),
            other => panic!("expected invalid fields, got {other:?}"),
        }
    }

    fn invalid<C: std::fmt::Debug>(parsed: Result<C, CommandError>) -> Vec<String> {
        fields(parsed.err().unwrap_or(CommandError::Invalid(vec![])))
    }

    #[test]
    fn a_valid_registration_parses() {
        let body = br#"{"customer_id":"c-42","name":"Ada","email":"ada@example.com"}"#;
        let register = RegisterCustomer::parse(body).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            register.customer_id.as_ref().map(Identifier::as_str),
            Some("c-42")
        );
        assert_eq!(register.name.as_str(), "Ada");
        assert_eq!(register.email.as_str(), "ada@example.com");
        let command = CustomerCommand::Register(register);
        assert_eq!(CustomerState::chosen_id(&command), Some("c-42"));
    }

    #[test]
    fn without_an_id_the_service_chooses_one() {
        for body in [
            &br#"{"name":"Ada","email":"ada@example.com"}"#[..],
            br#"{"customer_id":null,"name":"Ada","email":"ada@example.com"}"#,
        ] {
            let register = RegisterCustomer::parse(body).unwrap_or_else(|e| panic!("{e:?}"));
            assert_eq!(register.customer_id, None);
            let command = CustomerCommand::Register(register);
            assert_eq!(CustomerState::chosen_id(&command), None);
        }
    }

    #[test]
    fn emails_are_checked() {
        let long_local = format!("{}@example.com", "a".repeat(254 - 12));
        for good in [
            "a@b.c",
            "ada@example.com",
            "ada.lovelace+shop@mail.example.org",
            "é@exämple.de",
            long_local.as_str(),
        ] {
            assert!(Email::parse(good).is_ok(), "{good}");
        }
        let too_long = format!("{}@example.com", "a".repeat(254 - 11));
        for bad in [
            "",
            "a@",
            "@b.c",
            "ada",
            "ada@example",
            "ada@.example.com",
            "ada@example.com.",
            "ada@@example.com",
            "ada@b@example.com",
            "ada @example.com",
            " ada@example.com",
            "ada@example.com\n",
            "ada@exa\u{0}mple.com",
            "ada@exa\u{a0}mple.com",
            "ada\u{200B}@example.com",
            "ada\u{202E}@example.com",
            "<ada@example.com>",
            "Ada <ada@example.com>",
            "a,b@example.com",
            "\"ada\"@example.com",
            "ada@example..com",
            too_long.as_str(),
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
    }

    /// Variants of a valid body: each field missing, null, of every other JSON type, out of
    /// range, escaped, duplicated; unknown fields; and the body itself broken.
    fn variants(valid: &str) -> Vec<String> {
        let long_text = format!("\"{}\"", "x".repeat(201));
        let longest_text = format!("\"{}\"", "x".repeat(200));
        let long_email = format!("\"{}@example.com\"", "a".repeat(243));
        let longest_email = format!("\"{}@example.com\"", "a".repeat(242));
        let replacements = [
            "null",
            "true",
            "0",
            "-1",
            "2.0",
            "\"\"",
            "\" \"",
            "\"c-42\"",
            "\"c\\u002d42\"",
            "\"bad id\"",
            "\".\"",
            "\"é\"",
            "\"a\\u0000b\"",
            "\"Ada Lovelace\"",
            "\"a@b.c\"",
            "\"ada@example.com\"",
            "\"ada\\u0040example.com\"",
            "\"ada@@example.com\"",
            "\"ada@example\"",
            "\"@example.com\"",
            "\"ada@.example.com\"",
            "\"ada@example.com.\"",
            "\"ada @example.com\"",
            "\"ada@example.com\\t\"",
            long_text.as_str(),
            longest_text.as_str(),
            long_email.as_str(),
            longest_email.as_str(),
            "[]",
            "{}",
            "[\"ada@example.com\"]",
        ];
        let mut out = vec![
            valid.to_owned(),
            format!(" {valid} "),
            format!("{valid}x"),
            valid.replacen('{', r#"{"extra":1,"#, 1),
            // Not an object (the fields in order, as an array, are added per command).
            format!("[{valid}]"),
        ];
        let Ok(Value::Object(map)) = serde_json::from_str::<Value>(valid) else {
            panic!("not an object: {valid}");
        };
        for (key, value) in &map {
            let mut without = map.clone();
            without.remove(key);
            out.push(Value::Object(without).to_string());
            // A duplicate key: the later one counts.
            out.push(valid.replacen('{', &format!(r#"{{"{key}":{value},"#), 1));
            for replacement in replacements {
                let mut changed = map.clone();
                changed.insert(key.clone(), serde_json::from_str(replacement).unwrap());
                out.push(Value::Object(changed).to_string());
            }
        }
        out
    }

    #[test]
    fn the_fast_and_the_thorough_parse_agree_on_every_body() {
        let mut register =
            variants(r#"{"customer_id":"c-42","name":"Ada","email":"ada@example.com"}"#);
        // serde's derived structs also take their fields in order as an array; the API does not.
        register.push(r#"["c-42","Ada","ada@example.com"]"#.into());
        register.push(r#"[null,"Ada","ada@example.com"]"#.into());
        let accepted = agree(
            &register,
            RegisterCustomer::parse_fast,
            RegisterCustomer::parse_thorough,
        );
        assert!(accepted > 10, "{accepted} of {} accepted", register.len());

        let mut change = variants(r#"{"email":"ada@example.com"}"#);
        change.push(r#"["ada@example.com"]"#.into());
        let accepted = agree(
            &change,
            ChangeEmail::parse_fast,
            ChangeEmail::parse_thorough,
        );
        assert!(accepted > 3, "{accepted} of {} accepted", change.len());
        let mut deactivate = variants(r#"{"reason":"closed the account"}"#);
        deactivate.push(r#"["closed the account"]"#.into());
        let accepted = agree(
            &deactivate,
            DeactivateCustomer::parse_fast,
            DeactivateCustomer::parse_thorough,
        );
        assert!(accepted > 3, "{accepted} of {} accepted", deactivate.len());
    }

    /// Checks that the fast way alone (no fallback) accepts a body exactly when the thorough way
    /// does, with the same command; returns how many were accepted. Both answers must occur, or
    /// the bodies prove nothing.
    fn agree<C: PartialEq + std::fmt::Debug>(
        bodies: &[String],
        fast: impl Fn(&[u8]) -> Option<C>,
        thorough: impl Fn(&[u8]) -> Result<C, CommandError>,
    ) -> usize {
        let mut accepted = 0;
        for body in bodies {
            let quick = fast(body.as_bytes());
            assert_eq!(quick, thorough(body.as_bytes()).ok(), "{body}");
            accepted += usize::from(quick.is_some());
        }
        assert!(accepted < bodies.len(), "every body was accepted");
        accepted
    }

    #[test]
    fn valid_bodies_take_the_fast_way() {
        let body = br#"{"customer_id":"c\u002d42","name":"Ada","email":"ada\u0040example.com"}"#;
        assert!(RegisterCustomer::parse_fast(body).is_some());
        assert!(RegisterCustomer::parse_fast(br#"{"name":"Ada","email":"a@b.c"}"#).is_some());
    }

    #[test]
    fn malformed_bodies_are_malformed() {
        for body in [&b"{"[..], b"[]", b"42", b"", b"\"x\""] {
            assert!(matches!(
                RegisterCustomer::parse(body),
                Err(CommandError::Malformed(_))
            ));
        }
    }

    #[test]
    fn a_repeated_key_is_malformed() {
        for body in [
            &br#"{"name":"Ada","name":"Bob","email":"ada@example.com"}"#[..],
            br#"{"name":"Ada","email":"ada@example.com","x":1,"x":2}"#,
        ] {
            assert!(
                matches!(RegisterCustomer::parse(body), Err(CommandError::Malformed(m)) if m.contains("duplicate key")),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(matches!(
            ChangeEmail::parse(br#"{"email":"a@b.c","email":"a@b.c"}"#),
            Err(CommandError::Malformed(_))
        ));
    }

    #[test]
    fn every_offending_field_is_named() {
        let body = br#"{"customer_id":"c 42","name":"","email":"ada@example","vip":true}"#;
        let mut got = invalid(RegisterCustomer::parse(body));
        got.sort();
        assert_eq!(got, ["customer_id", "email", "name", "vip"]);
        let mut got = invalid(RegisterCustomer::parse(br#"{"customer_id":7}"#));
        got.sort();
        assert_eq!(got, ["customer_id", "email", "name"]);
    }

    #[test]
    fn follow_up_commands_parse_and_name_bad_fields() {
        assert!(ChangeEmail::parse(br#"{"email":"ada@example.org"}"#).is_ok());
        assert!(DeactivateCustomer::parse(br#"{"reason":"closed the account"}"#).is_ok());
        assert_eq!(
            invalid(ChangeEmail::parse(br#"{"email":"ada","x":1}"#)),
            ["x", "email"]
        );
        assert_eq!(invalid(ChangeEmail::parse(b"{}")), ["email"]);
        assert_eq!(
            invalid(DeactivateCustomer::parse(br#"{"reason":"a\u0000b"}"#)),
            ["reason"]
        );
        assert!(matches!(
            DeactivateCustomer::parse(b"nope"),
            Err(CommandError::Malformed(_))
        ));
    }

    #[test]
    fn the_engine_parses_each_command_by_name() {
        for spec in CustomerState::COMMANDS {
            let (schema, _) = (spec.body_schema)();
            assert!(schema.ends_with("Request"), "{schema}");
        }
        let command = CustomerState::parse("change-email", br#"{"email":"a@b.c"}"#);
        assert!(matches!(command, Ok(CustomerCommand::ChangeEmail(_))));
        let command = CustomerState::parse("deactivate", br#"{"reason":"r"}"#);
        assert!(matches!(command, Ok(CustomerCommand::Deactivate(_))));
        assert!(matches!(
            CustomerState::parse("delete", b"{}"),
            Err(CommandError::Malformed(_))
        ));
        let names = CustomerState::COMMANDS.iter().map(|s| (s.name, s.segment));
        assert_eq!(
            names.collect::<Vec<_>>(),
            [
                ("register", None),
                ("change-email", Some("email")),
                ("deactivate", Some("deactivation"))
            ]
        );
    }

    /// Each command's documented example is a body its command accepts.
    #[test]
    fn every_example_parses() {
        for spec in CustomerState::COMMANDS {
            let (name, schema) = (spec.body_schema)();
            let schema = serde_json::to_value(schema).unwrap();
            let example = &schema["example"];
            assert!(example.is_object(), "{name}: no example");
            let body = serde_json::to_vec(example).unwrap();
            let parsed = CustomerState::parse(spec.name, &body);
            assert!(parsed.is_ok(), "{name}: {example}: {parsed:?}");
        }
    }

    fn register(email: &str) -> CustomerCommand {
        CustomerCommand::Register(RegisterCustomer {
            customer_id: None,
            name: Text::parse("Ada").unwrap(),
            email: Email::parse(email).unwrap(),
        })
    }

    fn change(email: &str) -> CustomerCommand {
        CustomerCommand::ChangeEmail(ChangeEmail {
            email: Email::parse(email).unwrap(),
        })
    }

    fn deactivate() -> CustomerCommand {
        CustomerCommand::Deactivate(DeactivateCustomer {
            reason: Text::parse("r").unwrap(),
        })
    }

    /// Decides and evolves in one step, as the command flow does after a commit.
    fn step(
        state: Option<&CustomerState>,
        command: &CustomerCommand,
    ) -> Result<CustomerState, Rejection> {
        let payload = decide(state, command)?;
        assert_eq!(payload, command.requested(), "decide yields what was asked");
        evolve(state, &payload).ok_or_else(|| Rejection("did not evolve".into()))
    }

    #[test]
    fn the_life_cycle_follows_the_rules() {
        assert!(
            step(None, &change("b@example.com")).is_err(),
            "no command but register on a missing customer"
        );
        assert!(step(None, &deactivate()).is_err());
        let ada = step(None, &register("a@example.com")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ada.status, CustomerStatus::Active);
        assert_eq!(ada.email, "a@example.com");
        let again = step(Some(&ada), &register("a@example.com")).unwrap_err();
        assert_eq!(again.0, "the customer already exists");
        let same = step(Some(&ada), &change("a@example.com")).unwrap_err();
        assert!(same.0.starts_with("the email is already"), "{same}");
        // Domains are case-insensitive; local parts are not.
        assert!(step(Some(&ada), &change("a@EXAMPLE.com")).is_err());
        assert!(step(Some(&ada), &change("A@example.com")).is_ok());
        let moved = step(Some(&ada), &change("b@example.com")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(moved.email, "b@example.com");
        assert_eq!(moved.status, CustomerStatus::Active);
        let gone = step(Some(&moved), &deactivate()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(gone.status, CustomerStatus::Deactivated);
        assert_eq!(gone.email, "b@example.com");
        assert!(step(Some(&gone), &deactivate()).is_err());
        assert!(step(Some(&gone), &change("c@example.com")).is_err());
        assert!(step(Some(&gone), &register("c@example.com")).is_err());
    }

    #[test]
    fn events_out_of_order_do_not_evolve() {
        let registered = register("a@example.com").requested();
        let state = evolve(None, &registered).unwrap();
        assert_eq!(evolve(Some(&state), &registered), None);
        assert_eq!(evolve(None, &change("b@example.com").requested()), None);
        assert_eq!(evolve(None, &deactivate().requested()), None);
    }

    #[test]
    fn the_event_wraps_the_payload_in_its_envelope() {
        let metadata = EventMetadata {
            event_id: "e-1".into(),
            occurred_at_ms: 1_795_000_000_000,
            command_id: "k-1".into(),
            idempotency_key: Some("key".into()),
            correlation_id: "r-1".into(),
        };
        let payload = deactivate().requested();
        let event = CustomerState::event(metadata, "c-42", 3, payload.clone());
        assert_eq!(event.envelope.aggregate_id, "c-42");
        assert_eq!(event.envelope.aggregate_version, 3);
        assert_eq!(event.envelope.idempotency_key.as_deref(), Some("key"));
        assert_eq!(CustomerState::payload(&event), &payload);
        assert_eq!(CustomerState::command_of(&event), "deactivate");
    }

    /// Generated bodies, beyond the hand-made variants: the fast way alone and the thorough
    /// way agree on every one. Each field is missing, right, wrong or any JSON value; an
    /// unknown field or a body written as an array of its values turns up too.
    mod generated {
        use proptest::prelude::*;
        use serde_json::Value;
        use shared_events::strategies::{body, field, text};

        use super::super::{ChangeEmail, DeactivateCustomer, RegisterCustomer};

        fn email() -> BoxedStrategy<Option<Value>> {
            field(
                "[a-z]{1,6}@[a-z]{1,6}\\.(com|org)".prop_map(Value::from),
                prop_oneof![Just("ada"), Just("a@b"), Just("<a@b.co>"), Just("a@b..co")]
                    .prop_map(Value::from),
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2_000))]

            #[test]
            fn registering(body in body(vec![
                (
                    "customer_id",
                    field(Just(Value::from("c-42")), Just(Value::from("c 42"))),
                ),
                ("name", text()),
                ("email", email()),
            ])) {
                let body = body.to_string().into_bytes();
                prop_assert_eq!(
                    RegisterCustomer::parse_fast(&body),
                    RegisterCustomer::parse_thorough(&body).ok()
                );
            }

            #[test]
            fn changing_email(body in body(vec![("email", email())])) {
                let body = body.to_string().into_bytes();
                prop_assert_eq!(ChangeEmail::parse_fast(&body), ChangeEmail::parse_thorough(&body).ok());
            }

            #[test]
            fn deactivating(body in body(vec![("reason", text())])) {
                let body = body.to_string().into_bytes();
                prop_assert_eq!(
                    DeactivateCustomer::parse_fast(&body),
                    DeactivateCustomer::parse_thorough(&body).ok()
                );
            }
        }
    }
}
