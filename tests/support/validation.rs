//! The configuration of the recipient-validation tests: one public listener, everybody
//! accepted, a RAT with the test's entries.

/// A configuration directory: one public listener `inbound` (everybody ACCEPTED, greeting at
/// once, no TLS), the RAT `inbound` with `rat_entries`, `routes` and, when given,
/// `policies/validation.yaml`; `global` is appended to `mxgate.yaml`.
pub fn config(
    global: &str,
    rat_entries: &str,
    routes: &str,
    validation: Option<&str>,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("listeners")).unwrap();
    std::fs::create_dir_all(d.join("policies")).unwrap();
    let mxgate = format!(
        "spool_dir: spool\nmail_log:\n  target: stdout\nmetrics:\n  listen: null\n\
         shutdown_grace: 5s\ndelivery:\n  retry_initial: 1s\n  retry_max: 1s\n  \
         hostname: mx.test.example\n{global}"
    );
    let files = [
        ("mxgate.yaml", mxgate.as_str()),
        (
            "listeners/inbound.yaml",
            "name: inbound\ntype: public\nbind: [\"127.0.0.1:0\"]\nhostname: mx.test.example\n\
             hat: inbound\nrat: inbound\n",
        ),
        (
            "policies/hat.yaml",
            "inbound:\n  sender_groups: []\n  default_policy: ACCEPTED\n",
        ),
        (
            "policies/mail_flow.yaml",
            "default:\n  max_message_size: 1M\n  max_messages_per_connection: 10\n  \
             max_recipients_per_message: 50\n  max_recipients_per_hour: unlimited\n  \
             tls: \"off\"\n  pre_greet_pause: 0s\npolicies:\n  ACCEPTED:\n    action: accept\n",
        ),
    ];
    for (name, text) in files {
        std::fs::write(d.join(name), text).unwrap();
    }
    std::fs::write(
        d.join("policies/rat.yaml"),
        format!("inbound:\n  entries:\n{rat_entries}"),
    )
    .unwrap();
    std::fs::write(d.join("policies/routes.yaml"), routes).unwrap();
    if let Some(v) = validation {
        std::fs::write(d.join("policies/validation.yaml"), v).unwrap();
    }
    dir
}
