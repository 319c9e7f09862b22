//! Who may use the API. On TCP every request carries `Authorization: Bearer <token>`
//! (agents and operators share one token, read from a file or the environment); the unix
//! socket is created mode 0600, so the kernel already checked who connected.

use std::path::Path;

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
