//! SMTP TLS Reporting (RFC 8460): the daily reports senders such as Google and Microsoft send
//! about their TLS sessions to our MX. A report body is decoded ([`decode`]: gzip or JSON,
//! capped), parsed and validated ([`report`]), de-duplicated and stored under
//! `SPOOL/tlsrpt/` ([`store`]), and counted in the `mxgate_tlsrpt_*` metrics with bounded
//! labels ([`reporter`], [`domains`]). [`ingest::ingest`] does all of it; the mail and HTTPS
//! intakes ([`intake`]; the report part of a mail: [`mail`]) call it, as configured in
//! `policies/tlsrpt.yaml` ([`settings`]); with `shared_state:` a report
//! is stored by the one gateway that claims it first ([`shared`]). Nothing is ever sent back to a reporter (no report loops).

pub mod decode;
pub mod domains;
pub mod ingest;
pub mod intake;
pub mod mail;
pub mod raw;
pub mod report;
pub mod reporter;
pub mod settings;
pub mod shared;
pub mod store;
