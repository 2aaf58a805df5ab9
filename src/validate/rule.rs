//! What a RAT entry says about validating its recipients (`validate:`, `on_tempfail:` and
//! the two replies of `policies/rat.yaml`): configuration, no I/O.

use std::sync::Arc;

use super::list::RecipientList;
use crate::smtp::reply::{Enhanced, Reply};

/// How a RAT entry's recipients are validated (`validate:`; `none` is no rule at all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValidationMethod {
    /// Ask the internal server of the recipient domain's SMTP route.
    Callahead,
    /// Look the address up in a list file (decided in memory at RCPT).
    List(Arc<RecipientList>),
    /// An LDAP accept query against the directory of this name (`policies/validation.yaml`).
    Ldap(String),
}

impl ValidationMethod {
    /// The `method` label of the metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ValidationMethod::Callahead => "callahead",
            ValidationMethod::List(_) => "list",
            ValidationMethod::Ldap(_) => "ldap",
        }
    }
}

/// What happens when a lookup gives no answer (`on_tempfail:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnTempFail {
    /// Refuse with the 4xx `tempfail_reply`: the sender retries (default).
    TempFail,
    /// Accept unverified (the internal server decides later, as without validation).
    Accept,
}

/// The validation rule of one accepting RAT entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientValidation {
    /// The method.
    pub method: ValidationMethod,
    /// What a lookup without an answer does.
    pub on_tempfail: OnTempFail,
    /// Reply to an invalid recipient (5xx; never the internal server's own text).
    pub invalid_reply: Reply,
    /// Reply when no answer could be had and `on_tempfail` is `tempfail` (4xx).
    pub tempfail_reply: Reply,
}

impl RecipientValidation {
    /// The default reply to an invalid recipient.
    pub fn default_invalid_reply() -> Reply {
        Reply::new(
            550,
            Enhanced(5, 1, 1),
            "Recipient address rejected: User unknown",
        )
    }

    /// The default reply when validation could not answer.
    pub fn default_tempfail_reply() -> Reply {
        Reply::new(
            451,
            Enhanced(4, 4, 3),
            "Recipient verification unavailable, try again later",
        )
    }

    /// A rule with the default replies and `on_tempfail: tempfail`.
    pub fn new(method: ValidationMethod) -> Self {
        RecipientValidation {
            method,
            on_tempfail: OnTempFail::TempFail,
            invalid_reply: Self::default_invalid_reply(),
            tempfail_reply: Self::default_tempfail_reply(),
        }
    }
}

/// A recipient to validate: what the session asks the driver (and the driver the validator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationRequest {
    /// The recipient address as stored.
    pub address: String,
    /// The RAT entry's rule.
    pub rule: Arc<RecipientValidation>,
}
