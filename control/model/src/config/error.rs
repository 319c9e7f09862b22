//! The one error a config can fail with: where (a field path) and why.

use std::fmt;

/// Why a config was rejected.
///
/// Every variant carries a human-readable [`reason`](ConfigError::reason); all but
/// [`Syntax`](ConfigError::Syntax) also name the field [`path`](ConfigError::path), in the
/// form `services[1].backends[0].addr` (`(root)` for the document itself).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The text is not well-formed YAML, so no field could be read. The location comes
    /// first: libyaml's reason may end with a second position, that of its context.
    #[error("invalid YAML{}: {reason}", At(location))]
    Syntax {
        reason: String,
        location: Option<Location>,
    },
    /// A field could not be decoded: wrong type, unknown key or `lb` value, bad address
    /// literal, missing required field. The reason is serde's message.
    #[error("{path}: {reason}{}", At(location))]
    Decode {
        path: String,
        reason: String,
        location: Option<Location>,
    },
    /// The config decoded but breaks a rule of [`MeshConfig::validate`](crate::MeshConfig::validate).
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

impl ConfigError {
    /// The field the error is about, or `None` for a YAML syntax error.
    pub fn path(&self) -> Option<&str> {
        match self {
            ConfigError::Syntax { .. } => None,
            ConfigError::Decode { path, .. } | ConfigError::Invalid { path, .. } => Some(path),
        }
    }

    /// What is wrong, without the path or location.
    pub fn reason(&self) -> &str {
        match self {
            ConfigError::Syntax { reason, .. }
            | ConfigError::Decode { reason, .. }
            | ConfigError::Invalid { reason, .. } => reason,
        }
    }

    /// Where in the YAML text the error was found, when the parser knew. Validation errors
    /// have none: they are found on the decoded model, which keeps no positions.
    pub fn location(&self) -> Option<Location> {
        match self {
            ConfigError::Syntax { location, .. } | ConfigError::Decode { location, .. } => {
                *location
            }
            ConfigError::Invalid { .. } => None,
        }
    }

    pub(crate) fn invalid(path: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// A position in the YAML text, both 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {} column {}", self.line, self.column)
    }
}

/// Renders an optional location as a ` at line L column C` suffix.
struct At<'a>(&'a Option<Location>);

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(location) => write!(f, " at {location}"),
            None => Ok(()),
        }
    }
}
