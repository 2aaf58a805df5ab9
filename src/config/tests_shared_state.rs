//! Tests of `shared_state:` in `mxgate.yaml`: defaults, every error with its place.

use std::time::Duration;

use super::tests::{config_dir, errors, loaded};
use super::Overrides;
use crate::shared_state::settings::{Fallback, WhenUnavailable};

#[test]
fn absent_means_local_and_defaults_fill_the_rest() {
    let d = config_dir(&[]);
    assert!(loaded(&d, &Overrides::default())
        .global
        .shared_state
        .is_none());
    let d = config_dir(&[(
        "mxgate.yaml",
        Some("shared_state:\n  url: redis://127.0.0.1:6379/0\n"),
    )]);
    let s = loaded(&d, &Overrides::default())
        .global
        .shared_state
        .expect("configured");
    assert_eq!(s.url, "redis://127.0.0.1:6379/0");
    assert_eq!(s.key_prefix, "mxgate:");
    assert_eq!(s.timeout, Duration::from_millis(50));
    assert_eq!(s.password, None);
    assert_eq!(s.when_unavailable, WhenUnavailable::default());
}

#[test]
fn every_key_is_read() {
    let d = config_dir(&[
        (
            "mxgate.yaml",
            Some(
                "shared_state:\n  url: rediss://redis.example:6380/2\n  password_file: redis.pass\n  ca_file: ca.pem\n  key_prefix: \"mx1:\"\n  timeout: 20ms\n  when_unavailable:\n    connections: tempfail\n    recipients_per_hour: tempfail\n    harvest: local\n",
            ),
        ),
        ("redis.pass", Some("s3cret\nignored second line\n")),
        (
            "ca.pem",
            Some("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"),
        ),
    ]);
    let s = loaded(&d, &Overrides::default())
        .global
        .shared_state
        .expect("configured");
    assert_eq!(s.password.as_deref(), Some("s3cret"));
    assert_eq!(s.ca_file, Some(d.path().join("ca.pem")));
    assert_eq!(s.key_prefix, "mx1:");
    assert_eq!(s.timeout, Duration::from_millis(20));
    assert_eq!(
        s.when_unavailable,
        WhenUnavailable {
            connections: Fallback::Tempfail,
            recipients_per_hour: Fallback::Tempfail,
            harvest: Fallback::Local,
        }
    );
    assert!(
        !format!("{s:?}").contains("s3cret"),
        "the password never prints"
    );
}

#[test]
fn errors_name_file_line_and_field() {
    let cases = [
        (
            "shared_state:\n  url: redis://:hunter2@127.0.0.1:6379/0\n",
            "mxgate.yaml:2:8: shared_state.url: a password in the url is not allowed: use password_file",
        ),
        (
            "shared_state:\n  url: redis://user:hunter2@127.0.0.1/0\n",
            "mxgate.yaml:2:8: shared_state.url: a password in the url is not allowed: use password_file",
        ),
        (
            "shared_state:\n  url: redis://127.0.0.1:6379/0?password=s3cret\n",
            "mxgate.yaml:2:8: shared_state.url: a password in the url is not allowed: use password_file",
        ),
        (
            "shared_state:\n  url: redis://127.0.0.1:6379/0?db=2\n",
            "mxgate.yaml:2:8: shared_state.url: url parameter \"db\" is not supported (only protocol=)",
        ),
        (
            "shared_state:\n  url: redis://127.0.0.1:6379/0\n  timeout: 100h\n",
            "mxgate.yaml:3:12: shared_state.timeout: is at most 5s (an SMTP reply waits this long for the store)",
        ),
        (
            "shared_state:\n  url: redis://127.0.0.1:6379/0\n  key_prefix: \"\"\n",
            "mxgate.yaml:3:15: shared_state.key_prefix: must be 1 to 64 bytes (e.g. \"mxgate:\")",
        ),
        (
            // Not echoed: a url of another scheme may carry a password too (found by a new user).
            "shared_state:\n  url: http://u:s3cr3t@127.0.0.1:6379\n",
            "mxgate.yaml:2:8: shared_state.url: the url (http) is not a redis:// or rediss:// url (e.g. redis://127.0.0.1:6379/0)",
        ),
        (
            "shared_state:\n  url: redis://127.0.0.1:6379/abc\n",
            "mxgate.yaml:2:8: shared_state.url: the database after the host is a number (redis://host:port/0), not \"abc\"",
        ),
        (
            "shared_state:\n  url: redis://127.0.0.1:6379/0\n  timeout: soon\n",
            "mxgate.yaml:3:12: shared_state.timeout: \"soon\" is not a duration: write e.g. 250ms, 30s, 5m, 1h, 5d, 2w or a number of seconds",
        ),
        (
            "shared_state:\n  url: redis://127.0.0.1:6379/0\n  timeout: 0\n",
            "mxgate.yaml:3:12: shared_state.timeout: must be longer than 0",
        ),
        (
            "shared_state:\n  url: redis://127.0.0.1:6379/0\n  when_unavailable:\n    recipients_per_hour: refuse\n",
            "mxgate.yaml:4:26: shared_state.when_unavailable.recipients_per_hour: \"refuse\" is not local or tempfail",
        ),
        (
            "shared_state:\n  url: redis://127.0.0.1:6379/0\n  key_prefix: \"a b\"\n",
            "mxgate.yaml:3:15: shared_state.key_prefix: must not contain spaces or control characters",
        ),
        (
            "shared_state:\n  timeout: 50ms\n",
            "mxgate.yaml:2:3: shared_state: url is required: redis://host:port/db (or rediss:// for TLS)",
        ),
    ];
    for (yaml, want) in cases {
        let d = config_dir(&[("mxgate.yaml", Some(yaml))]);
        assert_eq!(errors(&d, &Overrides::default()), [want], "{yaml}");
    }
    let d = config_dir(&[(
        "mxgate.yaml",
        Some("shared_state:\n  url: redis://127.0.0.1:6379/0\n  password_file: nosuch.pass\n"),
    )]);
    let errs = errors(&d, &Overrides::default());
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("mxgate.yaml:3:18: shared_state.password_file: cannot read "),
        "{errs:?}"
    );
    let d = config_dir(&[
        (
            "mxgate.yaml",
            Some("shared_state:\n  url: redis://127.0.0.1:6379/0\n  password_file: empty.pass\n"),
        ),
        ("empty.pass", Some("\n")),
    ]);
    let errs = errors(&d, &Overrides::default());
    assert!(
        errs[0].starts_with("mxgate.yaml:3:18: shared_state.password_file: ")
            && errs[0].ends_with("the first line (the password) is empty"),
        "{errs:?}"
    );
}
