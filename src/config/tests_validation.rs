//! `policies/validation.yaml` and the validation keys of RAT entries: what loads, and every
//! mistake located.

use super::load::Overrides;
use super::tests::{config_dir, errors, loaded};
use crate::validate::rule::{OnTempFail, ValidationMethod};

const ROUTES: &str =
    "routes:\n  - domain: example.com\n    hosts: [{host: 127.0.0.1, port: 2525}]\n";

const VALIDATION: &str = "\
cache: {invalid_ttl: 30m, max_entries: 1000}
callahead: {timeout: 5s, max_concurrency: 2, mail_from: \"<probe@example.com>\"}
ldap:
  corp:
    url: ldap://127.0.0.1:389
    bind_dn: cn=mxgate,dc=example,dc=com
    password_file: ldap.pw
    base: dc=example,dc=com
    filter: \"(mail={address})\"
";

#[test]
fn rat_entries_name_their_method_and_replies() {
    let rat = "\
inbound:
  entries:
    - recipient: example.com
      validate: callahead
      tempfail_reply: {code: 450, text: Later}
    - recipient: corp.example
      validate: {ldap: corp}
      on_tempfail: accept
    - recipient: lists.example
      validate: {list: users.txt}
    - recipient: plain.example
      validate: none
";
    let d = config_dir(&[
        ("policies/rat.yaml", Some(rat)),
        ("policies/routes.yaml", Some(ROUTES)),
        ("policies/validation.yaml", Some(VALIDATION)),
        ("ldap.pw", Some("secret\n")),
        ("users.txt", Some("anne@lists.example\n@catchall.example\n")),
    ]);
    let c = loaded(&d, &Overrides::default());
    let v = &c.validation;
    assert_eq!(v.cache.invalid_ttl, 1800);
    assert_eq!(v.callahead.max_concurrency, 2);
    assert_eq!(v.callahead.mail_from, "probe@example.com");
    assert_eq!(
        v.ldap["corp"].password, "secret",
        "one line, without its newline"
    );
    let e = &c.rats["inbound"].entries;
    let rule = |i: usize| e[i].validation.clone();
    let call = rule(0).unwrap();
    assert_eq!(call.method, ValidationMethod::Callahead);
    assert_eq!(call.tempfail_reply.to_wire(), "450 4.4.3 Later\r\n");
    assert_eq!(
        call.invalid_reply.to_wire(),
        "550 5.1.1 Recipient address rejected: User unknown\r\n"
    );
    let corp = rule(1).unwrap();
    assert_eq!(
        (corp.method.clone(), corp.on_tempfail),
        (ValidationMethod::Ldap("corp".into()), OnTempFail::Accept)
    );
    assert_eq!(rule(2).unwrap().method.label(), "list");
    assert!(rule(3).is_none(), "validate: none is no rule");
}

#[test]
fn validation_mistakes_are_located() {
    let rat = "\
inbound:
  entries:
    - recipient: noroute.example
      validate: callahead
    - recipient: x.example
      validate: {ldap: nosuch}
    - recipient: y.example
      validate: magic
    - recipient: w.example
      on_tempfail: accept
    - recipient: example.com
      validate: callahead
      invalid_reply: {code: 451}
    - recipient: z.example
      action: reject
      validate: callahead
    - recipient: v.example
      validate: {list: users.txt}
    - recipient: u.example
      validate: {list: empty.txt}
";
    let validation = "\
cache: {valid_ttl: 1h, valid_refresh: 2h}
callahead: {mail_from: \"not an address\", max_concurrency: 0}
ldap:
  corp:
    url: http://dc1
    base: dc=example,dc=com
    bind_dn: cn=x
    filter: \"(mail={address}\"
";
    let d = config_dir(&[
        ("policies/rat.yaml", Some(rat)),
        ("policies/routes.yaml", Some(ROUTES)),
        ("policies/validation.yaml", Some(validation)),
        ("users.txt", Some("fine@z.example\nnot an address\n")),
        ("empty.txt", Some("# exported by cron\n")),
    ]);
    let errs = errors(&d, &Overrides::default()).join("\n");
    for want in [
        "policies/rat.yaml:4:17: inbound.entries[0].validate: no SMTP route covers noroute.example",
        "policies/rat.yaml:6:24: inbound.entries[1].validate.ldap: no LDAP directory \"nosuch\"",
        "policies/rat.yaml:8:17: inbound.entries[2].validate: \"magic\": write none, callahead",
        "policies/rat.yaml:10:20: inbound.entries[3].on_tempfail: `on_tempfail` needs `validate:`",
        "policies/rat.yaml:13:29: inbound.entries[4].invalid_reply.code: reply code 451 must be 5xx here",
        "policies/rat.yaml:16:17: inbound.entries[5].validate: only an accepting entry validates",
        "policies/rat.yaml:18:24: inbound.entries[6].validate.list: ",
        "users.txt:2: \"not an address\"",
        "policies/rat.yaml:20:24: inbound.entries[7].validate.list: ",
        "empty.txt lists no address: every recipient of this entry would be refused",
        "policies/validation.yaml:1:39: cache.valid_refresh: must be shorter than valid_ttl",
        "policies/validation.yaml:2:24: callahead.mail_from: \"not an address\" is not an address",
        "callahead.max_concurrency: 0 is out of range",
        "ldap.corp.url: write ldap://host:389 or ldaps://host:636",
        "ldap.corp.filter: \"(mail={address}\" is not an LDAP filter",
        "ldap.corp.password_file: bind_dn needs password_file",
    ] {
        assert!(errs.contains(want), "missing {want:?} in:\n{errs}");
    }
}
