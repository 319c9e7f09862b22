//! Who is asking, and what they may do (docs/control-plane.md, "Credentials and scopes").
//!
//! On TCP a request's bearer token maps to an [`Identity`]: the operator token
//! (`--token-file`) to [`Identity::Operator`], a node's token from the `--node-tokens`
//! file to [`Identity::Node`]. The unix socket (mode 0600) is the operator's: the kernel
//! already checked who connected. [`scope::authorize`] then decides what the identity may
//! ask: a node reads the config and acks as itself, nothing else, so a stolen node
//! credential changes routing nowhere. On Kubernetes a node's credential can instead be its
//! agent's projected ServiceAccount token, which the API server vouches for ([`review`]).

#[cfg(feature = "kubernetes")]
pub mod kube_review;
pub mod node_tokens;
pub mod review;
pub mod scope;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use sockmesh_model::{file_stamp, Token};
use tracing::{info, warn};

pub use node_tokens::{NodeTokens, NodeTokensError, MIN_TOKEN_CHARS};
pub use review::{ReviewPolicy, Reviewed, Reviews, TokenReviewer};
pub use scope::{authorize, Refusal, RefusedLabels, RefusedReason};

/// What a request's credential proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// `--token-file`, or the unix socket: every request.
    Operator,
    /// A node's token: snapshot, watch and ack, as that node only.
    Node(Arc<str>),
}

/// What a request's `Authorization` header proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authn {
    Known(Identity),
    /// No credential, or one nobody vouches for: 401.
    Unknown,
    /// The API server that would vouch for it could not be asked: 503, try again.
    Unavailable(String),
}

/// The credentials a TCP listener accepts. The node table is swapped whole when its file
/// changes ([`Credentials::follow`]), so a request sees the old table or the new one.
#[derive(Debug)]
pub struct Credentials {
    operator: Option<Token>,
    nodes: RwLock<Arc<NodeTokens>>,
    node_file: Option<PathBuf>,
    /// The node file's modification time and size when last read.
    seen: Mutex<Option<(SystemTime, u64)>>,
    /// `--kube-token-review`: agents' ServiceAccount tokens, vouched for by the API server.
    reviews: Option<Reviews>,
}

impl Credentials {
    /// The operator token, and the node tokens read from `node_file`.
    pub fn load(
        operator: Option<Token>,
        node_file: Option<&Path>,
    ) -> Result<Self, NodeTokensError> {
        let credentials = Credentials {
            operator,
            nodes: RwLock::new(Arc::new(NodeTokens::default())),
            node_file: node_file.map(Path::to_owned),
            seen: Mutex::new(None),
            reviews: None,
        };
        if let Some(path) = node_file {
            let stamp = file_stamp(path);
            credentials.swap(NodeTokens::read_file(path)?, stamp);
        }
        Ok(credentials)
    }

    /// Credentials from values, for tests and the fuzz target.
    pub fn new(operator: Option<Token>, nodes: NodeTokens) -> Self {
        Credentials {
            operator,
            nodes: RwLock::new(Arc::new(nodes)),
            node_file: None,
            seen: Mutex::new(None),
            reviews: None,
        }
    }

    /// Also takes tokens that `reviews` vouches for.
    pub fn with_reviews(mut self, reviews: Reviews) -> Self {
        self.reviews = Some(reviews);
        self
    }

    /// The identity an `Authorization` header value proves, if any: the operator token,
    /// a node token, else (with reviews) what the API server says of the bearer token.
    pub async fn authenticate(&self, header: Option<&[u8]>) -> Authn {
        if self
            .operator
            .as_ref()
            .is_some_and(|t| t.matches_header(header))
        {
            return Authn::Known(Identity::Operator);
        }
        if let Some(node) = self.node_table().node(header) {
            return Authn::Known(Identity::Node(node));
        }
        let bearer = header
            .and_then(|h| h.strip_prefix(b"Bearer "))
            .and_then(|t| std::str::from_utf8(t).ok());
        match (&self.reviews, bearer) {
            (Some(reviews), Some(token)) => match reviews.review(token).await {
                Reviewed::Node(node) => Authn::Known(Identity::Node(node)),
                Reviewed::Refused => Authn::Unknown,
                Reviewed::Unavailable(why) => Authn::Unavailable(why),
            },
            _ => Authn::Unknown,
        }
    }

    /// How many nodes have a token now.
    pub fn nodes(&self) -> usize {
        self.node_table().len()
    }

    fn node_table(&self) -> Arc<NodeTokens> {
        self.nodes.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn swap(&self, table: NodeTokens, stamp: Option<(SystemTime, u64)>) {
        *self.nodes.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = stamp;
    }

    /// Re-reads the node file when its modification time or size changed. A file that no
    /// longer parses is logged and the last good table stays in force: a typo must not
    /// lock every node out. Returns whether a new table was taken.
    pub fn reload_if_changed(&self) -> bool {
        let Some(path) = &self.node_file else {
            return false;
        };
        let now = file_stamp(path);
        if now == *self.seen.lock().unwrap_or_else(|e| e.into_inner()) {
            return false;
        }
        match NodeTokens::read_file(path) {
            Ok(table) => {
                info!(nodes = table.len(), file = %path.display(), "node tokens reloaded");
                self.swap(table, now);
                true
            }
            Err(e) => {
                warn!(error = %e, "node tokens file not reloaded; the previous tokens stay in force");
                // Not again until the file changes once more.
                *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = now;
                false
            }
        }
    }

    /// Checks the node file every `every`, forever.
    pub async fn follow(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.reload_if_changed()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OP: &str = "operator-token-0123456789";
    const A: &str = "token-of-node-a-0123";
    const B: &str = "token-of-node-b-4567";

    fn bearer(t: &str) -> Vec<u8> {
        format!("Bearer {t}").into_bytes()
    }

    fn authenticate(c: &Credentials, header: Option<&[u8]>) -> Option<Identity> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        match runtime.block_on(c.authenticate(header)) {
            Authn::Known(identity) => Some(identity),
            Authn::Unknown => None,
            Authn::Unavailable(why) => panic!("{why}"),
        }
    }

    #[test]
    fn tokens_map_to_identities() {
        let nodes = NodeTokens::parse(&format!("node-a {A}\n"), "t").unwrap();
        let c = Credentials::new(Some(Token::new(OP, "t").unwrap()), nodes);
        assert_eq!(
            authenticate(&c, Some(&bearer(OP))),
            Some(Identity::Operator)
        );
        assert_eq!(
            authenticate(&c, Some(&bearer(A))),
            Some(Identity::Node("node-a".into()))
        );
        assert_eq!(authenticate(&c, Some(&bearer(B))), None);
        assert_eq!(authenticate(&c, None), None);
    }

    #[test]
    fn the_node_file_is_reloaded_and_a_bad_edit_keeps_the_old_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nodes");
        std::fs::write(&path, format!("node-a {A}\n")).unwrap();
        let c = Credentials::load(None, Some(&path)).unwrap();
        assert_eq!(c.nodes(), 1);
        assert!(!c.reload_if_changed(), "unchanged file reloaded");

        std::fs::write(&path, format!("node-a {A}\nnode-b {B}\n")).unwrap();
        assert!(c.reload_if_changed());
        assert_eq!(
            authenticate(&c, Some(&bearer(B))),
            Some(Identity::Node("node-b".into()))
        );

        std::fs::write(&path, format!("node-a {A}\nnode-b {A}\nxx\n")).unwrap();
        assert!(!c.reload_if_changed());
        assert_eq!(c.nodes(), 2, "a bad edit replaced the tokens");
        assert!(authenticate(&c, Some(&bearer(B))).is_some());
    }

    #[test]
    fn a_bad_node_file_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nodes");
        std::fs::write(&path, format!("node-a {A}\nnode-a {B}\n")).unwrap();
        let e = Credentials::load(None, Some(&path)).unwrap_err();
        assert!(e.to_string().contains("line 2: node node-a already"), "{e}");
    }
}
