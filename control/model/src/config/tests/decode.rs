//! Rejections found while decoding: they carry serde's reason and the YAML position.

use super::*;
use crate::Location;

#[test]
fn bad_backend_address_is_quoted_with_path_and_position() {
    let yaml = "\
services:
  - name: web
    vip: 127.100.0.1
    port: 80
    backends:
      - addr: 127.0.0.2:8081
  - name: api
    vip: 127.100.0.2
    port: 80
    backends:
      - addr: 127.0.0.300:80
";
    let err = assert_rejected(
        yaml,
        "services[1].backends[0].addr",
        "invalid socket address \"127.0.0.300:80\"",
    );
    assert_eq!(
        err.location(),
        Some(Location {
            line: 11,
            column: 15
        })
    );
    assert_eq!(
        err.to_string(),
        "services[1].backends[0].addr: invalid socket address \"127.0.0.300:80\" at line 11 column 15"
    );
}

#[test]
fn backend_address_without_port_is_rejected() {
    let yaml = ONE_SERVICE.replace("127.0.0.3:8081", "127.0.0.3");
    assert_rejected(
        &yaml,
        "services[0].backends[1].addr",
        "invalid socket address \"127.0.0.3\"",
    );
}

#[test]
fn bad_vip_is_rejected() {
    let yaml = ONE_SERVICE.replace("127.100.0.1", "127.100.0.256");
    let err = assert_rejected(
        &yaml,
        "services[0].vip",
        "invalid IP address \"127.100.0.256\"",
    );
    assert_eq!(err.location().map(|l| l.line), Some(3));
}

#[test]
fn vip_with_a_port_is_rejected() {
    let yaml = ONE_SERVICE.replace("127.100.0.1", "127.100.0.1:80");
    assert_rejected(
        &yaml,
        "services[0].vip",
        "invalid IP address \"127.100.0.1:80\"",
    );
}

#[test]
fn address_of_the_wrong_type_says_what_is_expected() {
    let yaml = ONE_SERVICE.replace("127.100.0.1", "[127, 100]");
    assert_rejected(&yaml, "services[0].vip", "expected an IP address string");
}

#[test]
fn unknown_lb_is_rejected_with_the_choices() {
    let yaml = ONE_SERVICE.replace("port: 80", "port: 80\n    lb: fastest");
    assert_rejected(
        &yaml,
        "services[0].lb",
        "unknown variant `fastest`, expected one of `weighted_random`, `round_robin`, `maglev`, \
         `least_conn`",
    );
}

#[test]
fn unknown_fields_are_rejected_by_name_at_every_level() {
    let top = format!("verison: 1\n{ONE_SERVICE}");
    assert_rejected(&top, "verison", "unknown field `verison`");

    let service = ONE_SERVICE.replace("port: 80", "port: 80\n    lb_policy: maglev");
    let err = assert_rejected(
        &service,
        "services[0].lb_policy",
        "unknown field `lb_policy`",
    );
    assert_eq!(err.location(), Some(Location { line: 5, column: 5 }));

    let backend = ONE_SERVICE.replace(
        "      - addr: 127.0.0.3:8081\n",
        "      - addr: 127.0.0.3:8081\n        weigth: 3\n",
    );
    assert_rejected(
        &backend,
        "services[0].backends[1].weigth",
        "unknown field `weigth`",
    );
}

#[test]
fn wrong_types_are_rejected() {
    let port = ONE_SERVICE.replace("port: 80", "port: http");
    assert_rejected(
        &port,
        "services[0].port",
        "invalid type: string \"http\", expected u16",
    );

    let big_port = ONE_SERVICE.replace("port: 80", "port: 65536");
    assert_rejected(&big_port, "services[0].port", "expected u16");

    let weight = ONE_SERVICE.replace(
        "      - addr: 127.0.0.3:8081\n",
        "      - addr: 127.0.0.3:8081\n        weight: -1\n",
    );
    assert_rejected(&weight, "services[0].backends[1].weight", "expected u32");

    assert_rejected("services: web\n", "services", "expected a sequence");
}

#[test]
fn missing_required_fields_are_named() {
    let no_port = ONE_SERVICE.replace("    port: 80\n", "");
    assert_rejected(&no_port, "services[0]", "missing field `port`");
    let no_backends = "services:\n  - name: web\n    vip: 127.100.0.1\n    port: 80\n";
    assert_rejected(no_backends, "services[0]", "missing field `backends`");
}

#[test]
fn empty_document_is_not_an_empty_mesh() {
    assert_rejected("", "(root)", "missing field `services`");
    assert_rejected("# nothing here\n", "(root)", "missing field `services`");
}

#[test]
fn yaml_syntax_error_has_no_path_but_a_position() {
    // An unquoted IPv6 socket address opens a YAML flow sequence: the classic mistake.
    let yaml = ONE_SERVICE.replace("127.0.0.3:8081", "[fd00::3]:8081");
    let err = parse_config(&yaml).unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err:?}");
    assert_eq!(err.path(), None);
    assert_eq!(err.location().map(|l| l.line), Some(7));
    assert!(err.reason().contains("did not find expected key"), "{err}");
    assert!(
        err.to_string().starts_with("invalid YAML at line 7 column"),
        "{err}"
    );
}

#[test]
fn several_documents_are_rejected() {
    let yaml = format!("{ONE_SERVICE}---\n{ONE_SERVICE}");
    let err = parse_config(&yaml).unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err:?}");
    assert!(err.reason().contains("more than one document"), "{err}");
}
