//! A transaction event: one financial instruction, as producers write it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::failure::{FailureKind, Poison};

/// Longest `event_id`, `account_id`, `counterparty_account_id` or `source` accepted, in
/// bytes.
pub const MAX_ID_LEN: usize = 256;

/// The most attributes an event may carry, and the longest key and value, in bytes.
pub const MAX_ATTRIBUTES: usize = 64;
pub const MAX_ATTRIBUTE_KEY_LEN: usize = 128;
pub const MAX_ATTRIBUTE_VALUE_LEN: usize = 1024;

/// The range of `occurred_at`: the Unix epoch to the last millisecond of year 9999, the
/// times RFC 3339 and every analyst's tool can write. A narrower window relative to now is
/// the gateway's to apply (a re-delivered or replayed event is old by design).
pub const OCCURRED_AT_RANGE: std::ops::RangeInclusive<i64> = 0..=253_402_300_799_999;

/// The three kinds of instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventType {
    /// Credits `account_id`.
    Deposit,
    /// Debits `account_id`.
    Withdrawal,
    /// Debits `account_id` and credits `counterparty_account_id`.
    Transfer,
}

/// One financial instruction; field for field the Avro record `TransactionEvent`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionEvent {
    /// Producer-chosen unique id; the idempotency key.
    pub event_id: String,
    pub event_type: EventType,
    /// The account debited or credited; the Kafka record key.
    pub account_id: String,
    /// Destination of a transfer; `None` otherwise.
    pub counterparty_account_id: Option<String>,
    /// Amount in minor units (cents), greater than zero.
    pub amount_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// When the producer saw it, milliseconds since the Unix epoch.
    pub occurred_at: i64,
    /// The producing system.
    pub source: String,
    /// Free-form attributes, matchable by routing rules. Sorted, so that equal events have
    /// equal fingerprints.
    pub attributes: BTreeMap<String, String>,
}

/// A digest of every field of an event: two deliveries of one `event_id` are the same
/// instruction exactly when their fingerprints are equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl TransactionEvent {
    /// Checks the rules that make an event well-formed; a malformed event is poison (the
    /// first broken rule says why).
    pub fn validate(&self) -> Result<(), Poison> {
        match self.problems().into_iter().next() {
            Some(problem) => Err(Poison::new(FailureKind::InvalidEvent, problem.message)),
            None => Ok(()),
        }
    }

    /// Every rule the event breaks, by field, in field order.
    pub fn problems(&self) -> Vec<FieldProblem> {
        let mut problems = Vec::new();
        let mut problem =
            |field: &'static str, message: String| problems.push(FieldProblem { field, message });
        for (field, id) in [
            ("event_id", &self.event_id),
            ("account_id", &self.account_id),
            ("source", &self.source),
        ] {
            if let Some(message) = id_problem(field, id) {
                problem(field, message);
            }
        }
        match (self.event_type, &self.counterparty_account_id) {
            (EventType::Transfer, None) => problem(
                "counterparty_account_id",
                "a TRANSFER needs counterparty_account_id".to_owned(),
            ),
            (EventType::Transfer, Some(counterparty)) => {
                if let Some(message) = id_problem("counterparty_account_id", counterparty) {
                    problem("counterparty_account_id", message);
                } else if *counterparty == self.account_id {
                    problem(
                        "counterparty_account_id",
                        format!(
                            "a TRANSFER to its own account {:?} is not allowed",
                            self.account_id
                        ),
                    );
                }
            }
            (kind, Some(_)) => problem(
                "counterparty_account_id",
                format!(
                    "counterparty_account_id must be null for a {kind:?}, it is only for TRANSFER"
                ),
            ),
            (_, None) => {}
        }
        if self.amount_minor <= 0 {
            problem(
                "amount_minor",
                format!(
                    "amount_minor must be greater than zero, got {}",
                    self.amount_minor
                ),
            );
        }
        if !is_currency_code(&self.currency) {
            problem(
                "currency",
                format!(
                    "currency must be an ISO 4217 currency code such as EUR, got {:?}",
                    self.currency
                ),
            );
        }
        if !OCCURRED_AT_RANGE.contains(&self.occurred_at) {
            problem(
                "occurred_at",
                format!(
                    "occurred_at must be milliseconds since the Unix epoch, from 0 to {} (the end of year 9999), got {}",
                    OCCURRED_AT_RANGE.end(),
                    self.occurred_at
                ),
            );
        }
        if let Some(message) = attributes_problem(&self.attributes) {
            problem("attributes", message);
        }
        problems
    }

    /// The digest of every field, in a fixed, length-prefixed layout independent of any
    /// wire format, so that a schema change does not turn a re-send into a conflict.
    pub fn fingerprint(&self) -> Fingerprint {
        let mut hash = Sha256::new();
        let mut field = |bytes: &[u8]| {
            hash.update((bytes.len() as u64).to_le_bytes());
            hash.update(bytes);
        };
        field(self.event_id.as_bytes());
        field(self.event_type.as_str().as_bytes());
        field(self.account_id.as_bytes());
        match &self.counterparty_account_id {
            Some(counterparty) => {
                field(b"some");
                field(counterparty.as_bytes());
            }
            None => field(b"none"),
        }
        field(&self.amount_minor.to_le_bytes());
        field(self.currency.as_bytes());
        field(&self.occurred_at.to_le_bytes());
        field(self.source.as_bytes());
        field(&(self.attributes.len() as u64).to_le_bytes());
        for (key, value) in &self.attributes {
            field(key.as_bytes());
            field(value.as_bytes());
        }
        Fingerprint(hash.finalize().into())
    }
}

/// An event's claim on its id. An `event_id` names one event across all accounts and types:
/// the first event to claim it holds it for good, and any other event sent under it is an
/// idempotency conflict wherever it lands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdClaim {
    pub event_id: String,
    pub fingerprint: Fingerprint,
    /// The accounts the event posts to: its own, and a transfer's counterparty.
    pub accounts: Vec<String>,
}

impl IdClaim {
    /// Whether the event of this claim may go on, given the claim that holds its id: only
    /// the holder itself (re-sent, retried or replayed) may.
    pub fn against(&self, holder: &IdClaim) -> Result<(), Poison> {
        if holder.fingerprint == self.fingerprint {
            return Ok(());
        }
        Err(Poison::new(
            FailureKind::IdempotencyConflict,
            format!(
                "event_id {:?} belongs to another event, on {}; an event id names one event across all accounts",
                self.event_id,
                holder.accounts.join(" and ")
            ),
        ))
    }
}

impl TransactionEvent {
    /// This event's claim on its id.
    pub fn id_claim(&self) -> IdClaim {
        IdClaim {
            event_id: self.event_id.clone(),
            fingerprint: self.fingerprint(),
            accounts: std::iter::once(&self.account_id)
                .chain(&self.counterparty_account_id)
                .cloned()
                .collect(),
        }
    }
}

impl EventType {
    /// The Avro enum symbol.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Deposit => "DEPOSIT",
            EventType::Withdrawal => "WITHDRAWAL",
            EventType::Transfer => "TRANSFER",
        }
    }
}

/// A broken rule of an event, and the field it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldProblem {
    pub field: &'static str,
    pub message: String,
}

/// Why an identifier is refused. Ids are compared byte for byte, so anything that makes two
/// ids look alike to a person (surrounding spaces, invisible or direction-changing
/// characters) is refused rather than normalised.
pub fn id_problem(name: &str, value: &str) -> Option<String> {
    if value.is_empty() {
        return Some(format!("{name} must not be empty"));
    }
    text_problem(&name, value, MAX_ID_LEN)
}

/// Why a piece of text that becomes part of the ledger's records is refused: too long,
/// surrounded by whitespace, or holding a character that is not printable.
fn text_problem(name: &dyn std::fmt::Display, value: &str, max_len: usize) -> Option<String> {
    if value.len() > max_len {
        return Some(format!(
            "{name} is {} bytes long, at most {max_len} are allowed",
            value.len()
        ));
    }
    if value.trim() != value {
        return Some(format!(
            "{name} must not begin or end with whitespace, got {value:?}"
        ));
    }
    // Control characters also guard the store: it keeps a transfer's reversal under the
    // event id and a control character.
    if let Some(c) = value.chars().find(|&c| !is_printable(c)) {
        return Some(format!(
            "{name} must hold printable characters only, it has U+{:04X}",
            c as u32
        ));
    }
    None
}

/// Not a control character (Cc), not an invisible format character (Cf: zero-width and
/// bidirectional controls, byte-order marks, tags), not a line or paragraph separator, not a
/// private-use or non-character code point.
fn is_printable(c: char) -> bool {
    if c.is_ascii() {
        return !c.is_ascii_control();
    }
    let code = c as u32;
    let format = matches!(
        code,
        0x00AD
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x180E
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
    );
    let separator = matches!(code, 0x2028 | 0x2029);
    let private_or_noncharacter = matches!(code, 0xE000..=0xF8FF | 0xF0000..=0x10FFFF | 0xFDD0..=0xFDEF)
        || code & 0xFFFE == 0xFFFE;
    !c.is_control() && !format && !separator && !private_or_noncharacter
}

fn attributes_problem(attributes: &BTreeMap<String, String>) -> Option<String> {
    if attributes.len() > MAX_ATTRIBUTES {
        return Some(format!(
            "attributes holds {} entries, at most {MAX_ATTRIBUTES} are allowed",
            attributes.len()
        ));
    }
    attributes.iter().find_map(|(key, value)| {
        if key.is_empty() {
            return Some("attributes must not have an empty key".to_owned());
        }
        text_problem(
            &format_args!("attribute key {key:?}"),
            key,
            MAX_ATTRIBUTE_KEY_LEN,
        )
        .or_else(|| {
            text_problem(
                &format_args!("attributes.{key}"),
                value,
                MAX_ATTRIBUTE_VALUE_LEN,
            )
        })
    })
}

/// An ISO 4217 currency code, from the standard's current list.
pub fn is_currency_code(code: &str) -> bool {
    iso_currency::Currency::from_code(code).is_some()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn event(
        event_id: &str,
        event_type: EventType,
        account: &str,
        amount: i64,
    ) -> TransactionEvent {
        TransactionEvent {
            event_id: event_id.to_owned(),
            event_type,
            account_id: account.to_owned(),
            counterparty_account_id: None,
            amount_minor: amount,
            currency: "EUR".to_owned(),
            occurred_at: 1_700_000_000_000,
            source: "test".to_owned(),
            attributes: BTreeMap::new(),
        }
    }

    pub(crate) fn transfer(event_id: &str, from: &str, to: &str, amount: i64) -> TransactionEvent {
        TransactionEvent {
            counterparty_account_id: Some(to.to_owned()),
            ..event(event_id, EventType::Transfer, from, amount)
        }
    }

    fn rejection(event: TransactionEvent) -> String {
        let poison = event.validate().expect_err("the event is invalid");
        assert_eq!(poison.kind, FailureKind::InvalidEvent);
        poison.message
    }

    #[test]
    fn well_formed_events_pass() {
        event("e1", EventType::Deposit, "a", 1).validate().unwrap();
        event("e2", EventType::Withdrawal, "a", 1)
            .validate()
            .unwrap();
        transfer("e3", "a", "b", 1).validate().unwrap();
    }

    #[test]
    fn malformed_events_say_which_field_is_wrong() {
        let deposit = || event("e1", EventType::Deposit, "a", 100);
        assert!(rejection(TransactionEvent {
            amount_minor: 0,
            ..deposit()
        })
        .contains("amount_minor"));
        assert!(rejection(TransactionEvent {
            amount_minor: -5,
            ..deposit()
        })
        .contains("-5"));
        assert!(rejection(TransactionEvent {
            currency: "eur".into(),
            ..deposit()
        })
        .contains("currency"));
        assert!(rejection(TransactionEvent {
            currency: "EURO".into(),
            ..deposit()
        })
        .contains("currency"));
        assert!(rejection(TransactionEvent {
            event_id: String::new(),
            ..deposit()
        })
        .contains("event_id"));
        assert!(rejection(TransactionEvent {
            account_id: "x".repeat(MAX_ID_LEN + 1),
            ..deposit()
        })
        .contains("account_id"));
        assert!(rejection(TransactionEvent {
            counterparty_account_id: Some("b".into()),
            ..deposit()
        })
        .contains("only for TRANSFER"));
        assert!(rejection(TransactionEvent {
            counterparty_account_id: None,
            ..transfer("e", "a", "b", 1)
        })
        .contains("needs counterparty"));
        assert!(rejection(transfer("e", "a", "a", 1)).contains("own account"));
        assert!(rejection(TransactionEvent {
            event_id: "e\u{1f}reversal".into(),
            ..deposit()
        })
        .contains("printable"));
    }

    #[test]
    fn ids_that_look_alike_to_a_person_are_refused() {
        let deposit = || event("e1", EventType::Deposit, "acct", 100);
        for look_alike in [
            " acct",
            "acct ",
            "ac\u{202E}ct",
            "ac\u{200D}ct",
            "\u{FEFF}acct",
        ] {
            let message = rejection(TransactionEvent {
                account_id: look_alike.into(),
                ..deposit()
            });
            assert!(message.contains("account_id"), "{look_alike:?}: {message}");
        }
        event("e1", EventType::Deposit, "konto-ünal-東京-😀", 1)
            .validate()
            .unwrap();
    }

    #[test]
    fn currencies_times_and_attributes_are_bounded() {
        let deposit = || event("e1", EventType::Deposit, "a", 100);
        for currency in ["ABC", "QQQ", "eur"] {
            assert!(rejection(TransactionEvent {
                currency: currency.into(),
                ..deposit()
            })
            .contains("ISO 4217"));
        }
        for at in [-1, 253_402_300_800_000] {
            assert!(rejection(TransactionEvent {
                occurred_at: at,
                ..deposit()
            })
            .contains("occurred_at"));
        }
        let many: BTreeMap<String, String> = (0..=MAX_ATTRIBUTES)
            .map(|i| (format!("k{i}"), "v".to_owned()))
            .collect();
        assert!(rejection(TransactionEvent {
            attributes: many,
            ..deposit()
        })
        .contains("attributes"));
        let padded = BTreeMap::from([("channel".to_owned(), "web\n".to_owned())]);
        assert!(rejection(TransactionEvent {
            attributes: padded,
            ..deposit()
        })
        .contains("attributes.channel"));
    }

    #[test]
    fn fingerprint_covers_every_field() {
        let base = transfer("e1", "a", "b", 100);
        let mut with_attribute = base.clone();
        with_attribute.attributes.insert("k".into(), "v".into());
        let variants = [
            TransactionEvent {
                event_id: "e2".into(),
                ..base.clone()
            },
            TransactionEvent {
                event_type: EventType::Deposit,
                ..base.clone()
            },
            TransactionEvent {
                account_id: "c".into(),
                ..base.clone()
            },
            TransactionEvent {
                counterparty_account_id: Some("c".into()),
                ..base.clone()
            },
            TransactionEvent {
                counterparty_account_id: None,
                ..base.clone()
            },
            TransactionEvent {
                amount_minor: 101,
                ..base.clone()
            },
            TransactionEvent {
                currency: "USD".into(),
                ..base.clone()
            },
            TransactionEvent {
                occurred_at: 1,
                ..base.clone()
            },
            TransactionEvent {
                source: "other".into(),
                ..base.clone()
            },
            with_attribute,
        ];
        for variant in &variants {
            assert_ne!(variant.fingerprint(), base.fingerprint(), "{variant:?}");
        }
        assert_eq!(base.clone().fingerprint(), base.fingerprint());
    }

    #[test]
    fn only_the_event_holding_an_id_may_go_on_under_it() {
        let deposit = event("x", EventType::Deposit, "a", 5);
        let holder = deposit.id_claim();
        assert_eq!(holder.accounts, ["a"]);
        deposit.id_claim().against(&holder).unwrap();
        let elsewhere = event("x", EventType::Deposit, "c", 5);
        let poison = elsewhere.id_claim().against(&holder).unwrap_err();
        assert_eq!(poison.kind, FailureKind::IdempotencyConflict);
        assert!(poison.message.contains("on a"), "{}", poison.message);
        let t = transfer("x", "b", "a", 5);
        assert_eq!(t.id_claim().accounts, ["b", "a"]);
        assert!(t.id_claim().against(&holder).is_err());
    }

    #[test]
    fn fingerprint_fields_do_not_run_into_each_other() {
        let mut a = event("e1", EventType::Deposit, "ab", 1);
        let mut b = event("e1", EventType::Deposit, "ab", 1);
        a.source = "c".into();
        b.account_id = "abc".into();
        b.source = String::new();
        assert_ne!(a.fingerprint(), b.fingerprint());
    }
}
