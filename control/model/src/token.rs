//! Who may use the API. On TCP every request carries `Authorization: Bearer <token>` (the
//! operator's, a node's, or an agent's ServiceAccount token: docs/control-plane.md,
//! "Credentials and scopes"), read from a file or the environment; the unix socket is
//! created mode 0600, so the kernel already checked who connected.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// The bearer token TCP clients must present. `Debug` hides it, so it can sit in structs
/// that get logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the token file {}: {cause}", path.display())]
    Read {
        path: std::path::PathBuf,
        cause: std::io::Error,
    },
    #[error("the token {what} is empty: its first line must be the token")]
    Empty { what: String },
    #[error("the token {what} holds characters other than printable ASCII")]
    NotPrintable { what: String },
}

impl Token {
    /// The first line of `path`, whitespace trimmed (as the agent's `--admin-token-file`).
    pub fn read_file(path: &Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|cause| TokenError::Read {
            path: path.to_owned(),
            cause,
        })?;
        Token::new(
            text.lines().next().unwrap_or_default(),
            &format!("file {}", path.display()),
        )
    }

    /// `what` names where the text came from, for the error.
    pub fn new(text: &str, what: &str) -> Result<Self, TokenError> {
        let token = text.trim();
        if token.is_empty() {
            return Err(TokenError::Empty { what: what.into() });
        }
        // It travels in a header: a CR or LF would end the header early.
        if !token.bytes().all(|b| (b' '..=b'~').contains(&b)) {
            return Err(TokenError::NotPrintable { what: what.into() });
        }
        Ok(Token(token.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether an `Authorization` header value carries this token. The comparison takes
    /// the same time whatever the header holds (it depends only on the token's length), so
    /// timing does not tell an attacker how much of a guess was right.
    pub fn matches_header(&self, header: Option<&[u8]>) -> bool {
        let given = header
            .and_then(|h| h.strip_prefix(b"Bearer "))
            .unwrap_or_default();
        constant_time_eq(given, self.0.as_bytes())
    }
}

/// A client's token that may change under its file: a projected ServiceAccount token, which
/// the kubelet rewrites well before it expires, or a node token an operator rotates. The
/// file is looked at before each use and read again when its modification time or size
/// changed; a read that fails keeps the last good token (a half-written file must not cut
/// the client off), and says so once.
#[derive(Clone)]
pub struct TokenSource(Arc<Inner>);

enum Inner {
    Fixed(Token),
    File {
        path: PathBuf,
        /// The file's stamp when last looked at, and the last good token.
        state: Mutex<(Option<(SystemTime, u64)>, Token)>,
    },
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.0 {
            Inner::Fixed(_) => f.write_str("TokenSource(<redacted>)"),
            Inner::File { path, .. } => write!(f, "TokenSource(file {})", path.display()),
        }
    }
}

/// What [`TokenSource::current`] found when it looked at the file.
#[derive(Debug)]
pub enum TokenReload {
    /// The file changed and holds a new token, now in use.
    Taken,
    /// The file changed but does not hold a token: the last good one stays in use.
    Failed(TokenError),
}

impl TokenSource {
    /// A token that never changes (`SOCKMESH_CONTROL_TOKEN`, tests).
    pub fn fixed(token: Token) -> Self {
        TokenSource(Arc::new(Inner::Fixed(token)))
    }

    /// The token in `path`, read now (a start with an unreadable file fails) and again
    /// whenever the file changes.
    pub fn file(path: &Path) -> Result<Self, TokenError> {
        let stamp = file_stamp(path);
        let token = Token::read_file(path)?;
        Ok(TokenSource(Arc::new(Inner::File {
            path: path.to_owned(),
            state: Mutex::new((stamp, token)),
        })))
    }

    /// The token to send now, and what changed if the file did.
    pub fn current(&self) -> (Token, Option<TokenReload>) {
        let (path, state) = match &*self.0 {
            Inner::Fixed(token) => return (token.clone(), None),
            Inner::File { path, state } => (path, state),
        };
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        let stamp = file_stamp(path);
        if stamp == state.0 {
            return (state.1.clone(), None);
        }
        state.0 = stamp;
        match Token::read_file(path) {
            Ok(token) if token == state.1 => (token, None),
            Ok(token) => {
                state.1 = token.clone();
                (token, Some(TokenReload::Taken))
            }
            Err(e) => (state.1.clone(), Some(TokenReload::Failed(e))),
        }
    }
}

/// A file's modification time and size (through symlinks: a projected volume swaps a
/// `..data` link), or `None` when it cannot be read: what every "read it again when it
/// changed" file compares.
pub fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Compares every byte of `expected` whatever `given` is; only `expected`'s length shows.
fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != expected.len());
    for (i, &e) in expected.iter().enumerate() {
        diff |= e ^ given.get(i).copied().unwrap_or(!e);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_is_read_again_when_it_changes_and_a_bad_edit_keeps_the_last_token() {
        let dir = std::env::temp_dir().join(format!("sockmesh-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "first-token\n").unwrap();
        let source = TokenSource::file(&path).unwrap();
        assert!(!format!("{source:?}").contains("first"));
        let (token, reload) = source.current();
        assert_eq!((token.as_str(), reload.is_none()), ("first-token", true));

        // Rotated (a different size, so the stamp moves even within one mtime tick).
        std::fs::write(&path, "second-token-longer\n").unwrap();
        let (token, reload) = source.current();
        assert_eq!(token.as_str(), "second-token-longer");
        assert!(matches!(reload, Some(TokenReload::Taken)), "{reload:?}");
        assert!(
            source.current().1.is_none(),
            "an unchanged file reported again"
        );

        // Emptied mid-write: the last good token stays, said once.
        std::fs::write(&path, "").unwrap();
        let (token, reload) = source.current();
        assert_eq!(token.as_str(), "second-token-longer");
        assert!(matches!(reload, Some(TokenReload::Failed(_))), "{reload:?}");
        assert!(source.current().1.is_none());
        // Gone: the same.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(source.current().0.as_str(), "second-token-longer");
        std::fs::write(&path, "third\n").unwrap();
        assert_eq!(source.current().0.as_str(), "third");
        std::fs::remove_dir_all(&dir).unwrap();

        assert!(TokenSource::file(&path).is_err(), "a missing file at start");
    }

    #[test]
    fn only_the_exact_bearer_token_matches() {
        let t = Token::new(" s3cret \n", "test").unwrap();
        assert!(t.matches_header(Some(b"Bearer s3cret")));
        for bad in [
            &b"Bearer s3cre"[..],
            b"Bearer s3cret2",
            b"bearer s3cret",
            b"s3cret",
            b"Bearer ",
            b"",
        ] {
            assert!(
                !t.matches_header(Some(bad)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(!t.matches_header(None));
    }

    #[test]
    fn tokens_are_checked() {
        assert!(matches!(
            Token::new("  ", "x"),
            Err(TokenError::Empty { .. })
        ));
        assert!(matches!(
            Token::new("a\u{7f}b", "x"),
            Err(TokenError::NotPrintable { .. })
        ));
        assert_eq!(
            format!("{:?}", Token::new("abc", "x").unwrap()),
            "Token(<redacted>)"
        );
    }

    #[test]
    fn constant_time_eq_agrees_with_eq() {
        for (a, b) in [
            ("", ""),
            ("a", ""),
            ("", "a"),
            ("ab", "ab"),
            ("ab", "ac"),
            ("abc", "ab"),
        ] {
            assert_eq!(
                constant_time_eq(a.as_bytes(), b.as_bytes()),
                a == b,
                "{a:?} {b:?}"
            );
        }
    }
}
