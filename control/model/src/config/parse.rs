//! YAML text to a validated [`MeshConfig`], with errors that name the field.

use serde::de::IgnoredAny;

use super::{ConfigError, Location, MeshConfig};

/// Parses a mesh config from YAML and validates it.
///
/// Reports the first problem found: a YAML syntax error, then a field that cannot be decoded
/// (with its path and line/column), then the first rule of [`MeshConfig::validate`] broken.
pub fn parse_config(yaml: &str) -> Result<MeshConfig, ConfigError> {
    check_syntax(yaml)?;
    let config: MeshConfig =
        serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(yaml))
            .map_err(decode_error)?;
    config.validate()?;
    Ok(config)
}

/// Reads the whole document once without decoding it, so a malformed file is reported as
/// such instead of as a decode error on whatever field the parser had reached.
fn check_syntax(yaml: &str) -> Result<(), ConfigError> {
    match serde_yaml::from_str::<IgnoredAny>(yaml) {
        Ok(IgnoredAny) => Ok(()),
        Err(err) => {
            let location = location_of(&err);
            Err(ConfigError::Syntax {
                reason: bare_reason(&err, None, location),
                location,
            })
        }
    }
}

fn decode_error(err: serde_path_to_error::Error<serde_yaml::Error>) -> ConfigError {
    let path = match err.path().to_string() {
        // serde_path_to_error spells the document root ".", which reads as a typo in a message.
        root if root == "." => "(root)".to_owned(),
        path => path,
    };
    let location = location_of(err.inner());
    let reason = bare_reason(err.inner(), Some(&path), location);
    ConfigError::Decode {
        path,
        reason,
        location,
    }
}

fn location_of(err: &serde_yaml::Error) -> Option<Location> {
    err.location().map(|l| Location {
        line: l.line(),
        column: l.column(),
    })
}

/// serde_yaml folds its own path prefix and an ` at line L column C` suffix into the message
/// and offers no way to get the message alone; [`ConfigError`] keeps those apart, so strip
/// them here. When the text does not match, the full message is kept: too much beats lost.
fn bare_reason(err: &serde_yaml::Error, path: Option<&str>, location: Option<Location>) -> String {
    let mut reason = err.to_string();
    if let Some(location) = location {
        // The first occurrence is the problem's own mark; a syntax error may name a second
        // (its context) further on, which stays.
        let suffix = format!(" at {location}");
        if let Some(at) = reason.find(&suffix) {
            reason.replace_range(at..at + suffix.len(), "");
        }
    }
    // serde_yaml's path can stop short of serde_path_to_error's: for an unknown key it names
    // the mapping (`services[0]`) where the latter names the key (`services[0].lbb`).
    if let Some(path) = path {
        if let Some((head, rest)) = reason.split_once(": ") {
            if is_path_prefix(head, path) {
                reason = rest.to_owned();
            }
        }
    }
    reason
}

/// Whether `prefix` is `path` or one of its ancestors (`services[0]` of `services[0].lb`).
fn is_path_prefix(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with(['.', '[']),
        None => false,
    }
}
