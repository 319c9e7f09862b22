//! The config parser and validator on arbitrary UTF-8 text.
//!
//! `parse_config` must never panic, whatever the text. When it accepts a config:
//! - `validate()` agrees (the config `parse_config` returns is one `validate` accepts);
//! - serializing it and parsing it again gives an equal config with the same fingerprint,
//!   through YAML (what operators and `sockmesh` write) and JSON (how configs travel between
//!   agent, CLI and control plane).
//!
//! When it refuses one, the error must render (its message is built from serde_yaml's by
//! string surgery, see `parse.rs` `bare_reason`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use sockmesh_model::{parse_config, MeshConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = match parse_config(text) {
        Ok(config) => config,
        Err(err) => {
            // Exercise every accessor the agent and `sockmesh-agent check` print.
            let _ = (err.to_string(), err.path(), err.reason(), err.location());
            return;
        }
    };
    if let Err(err) = config.validate() {
        panic!("parse_config accepted a config validate() refuses: {err}\n{text}");
    }
    let fingerprint = config.fingerprint();

    let yaml = serde_yaml::to_string(&config).expect("an accepted config serializes to YAML");
    let from_yaml = parse_config(&yaml)
        .unwrap_or_else(|err| panic!("re-parsing the serialized config failed: {err}\n{yaml}"));
    assert_eq!(
        from_yaml, config,
        "YAML round trip changed the config\n{yaml}"
    );
    assert_eq!(
        from_yaml.fingerprint(),
        fingerprint,
        "YAML round trip\n{yaml}"
    );

    let json = serde_json::to_string(&config).expect("an accepted config serializes to JSON");
    let from_json: MeshConfig = serde_json::from_str(&json)
        .unwrap_or_else(|err| panic!("decoding the JSON config failed: {err}\n{json}"));
    if let Err(err) = from_json.validate() {
        panic!("the JSON round trip made the config invalid: {err}\n{json}");
    }
    assert_eq!(
        from_json, config,
        "JSON round trip changed the config\n{json}"
    );
    assert_eq!(
        from_json.fingerprint(),
        fingerprint,
        "JSON round trip\n{json}"
    );
});
