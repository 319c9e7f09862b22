//! The per-node credentials file (`--node-tokens`): one `NODE TOKEN` pair a line, `#`
//! comments and blank lines ignored. A node name follows the agent-name rules (it is what
//! the agent sends as `agent=`, `--node-name`); a token is at least [`MIN_TOKEN_CHARS`]
//! printable characters. A node named twice, or a token given to two nodes, is refused
//! with the line: either would make "which node is this" ambiguous.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sockmesh_model::agent_name::check_agent_name;
use sockmesh_model::Token;

/// Largest file read: 5,000 nodes with 64-character tokens take about 400 KiB.
pub const MAX_NODE_TOKENS_BYTES: u64 = 4 * 1024 * 1024;
/// Shortest token accepted: 16 random characters are beyond guessing over the network.
pub const MIN_TOKEN_CHARS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum NodeTokensError {
    #[error("cannot read the node tokens file {}: {cause}", path.display())]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("the node tokens file {} is over the {MAX_NODE_TOKENS_BYTES}-byte limit ({size} bytes read)", path.display())]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{what}, line {line}: {problem}")]
    Line {
        what: String,
        line: usize,
        problem: String,
    },
}

/// Node name by token. Lookups go through a keyed hash of the presented token (the key is
/// random per table), then a constant-time compare with the few tokens in that bucket: the
/// time taken says nothing an attacker can use about how close a guess was, and a lookup
/// does not cost one compare per node.
pub struct NodeTokens {
    hasher: RandomState,
    by_hash: HashMap<u64, Vec<(Arc<str>, Token)>>,
    nodes: usize,
}

impl std::fmt::Debug for NodeTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTokens")
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

impl Default for NodeTokens {
    fn default() -> Self {
        NodeTokens {
            hasher: RandomState::new(),
            by_hash: HashMap::new(),
            nodes: 0,
        }
    }
}

impl NodeTokens {
    /// Reads and parses `path`, refusing a file over [`MAX_NODE_TOKENS_BYTES`].
    pub fn read_file(path: &Path) -> Result<Self, NodeTokensError> {
        let read = |cause| NodeTokensError::Read {
            path: path.to_owned(),
            cause,
        };
        // Read through a limit rather than trusting a size read earlier: the file may grow
        // between the two.
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(read)?
            .take(MAX_NODE_TOKENS_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(read)?;
        let size = text.len() as u64;
        if size > MAX_NODE_TOKENS_BYTES {
            return Err(NodeTokensError::TooLarge {
                path: path.to_owned(),
                size,
            });
        }
        Self::parse(&text, &format!("node tokens file {}", path.display()))
    }

    /// `what` names where `text` came from, for errors.
    pub fn parse(text: &str, what: &str) -> Result<Self, NodeTokensError> {
        let mut table = NodeTokens::default();
        // Where each node and each token was first given, for the duplicate errors.
        let mut node_line: HashMap<&str, usize> = HashMap::new();
        let mut token_line: HashMap<&str, (usize, &str)> = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let problem = |problem: String| NodeTokensError::Line {
                what: what.to_owned(),
                line,
                problem,
            };
            let content = raw.trim();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let mut fields = content.split_whitespace();
            let (Some(node), Some(token), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(problem("expected `NODE TOKEN` (two fields)".into()));
            };
            check_agent_name(node).map_err(problem)?;
            if token.chars().count() < MIN_TOKEN_CHARS {
                return Err(problem(format!(
                    "the token of node {node} is shorter than {MIN_TOKEN_CHARS} characters"
                )));
            }
            let token_value = Token::new(token, &format!("of node {node}"))
                .map_err(|e| problem(e.to_string()))?;
            if let Some(first) = node_line.insert(node, line) {
                return Err(problem(format!(
                    "node {node} already has a token (line {first})"
                )));
            }
            if let Some((first, other)) = token_line.insert(token, (line, node)) {
                return Err(problem(format!(
                    "node {node} has the same token as node {other} (line {first}); every node needs its own"
                )));
            }
            let hash = table.hasher.hash_one(token.as_bytes());
            table
                .by_hash
                .entry(hash)
                .or_default()
                .push((Arc::from(node), token_value));
            table.nodes += 1;
        }
        Ok(table)
    }

    /// The node whose token an `Authorization` header carries.
    pub fn node(&self, header: Option<&[u8]>) -> Option<Arc<str>> {
        let given = header?.strip_prefix(b"Bearer ")?;
        let bucket = self.by_hash.get(&self.hasher.hash_one(given))?;
        // Every candidate is compared (no early exit), each in constant time.
        let mut found = None;
        for (node, token) in bucket {
            if token.matches_header(header) {
                found = Some(node.clone());
            }
        }
        found
    }

    /// How many nodes have a token.
    pub fn len(&self) -> usize {
        self.nodes
    }

    pub fn is_empty(&self) -> bool {
        self.nodes == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "token-of-node-a-0123";
    const B: &str = "token-of-node-b-4567";

    fn bearer(t: &str) -> Vec<u8> {
        format!("Bearer {t}").into_bytes()
    }

    #[test]
    fn maps_each_token_to_its_node() {
        let text = format!("# nodes\n\nnode-a {A}\n  node-b\t{B}  \n");
        let t = NodeTokens::parse(&text, "test").unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.node(Some(&bearer(A))).as_deref(), Some("node-a"));
        assert_eq!(t.node(Some(&bearer(B))).as_deref(), Some("node-b"));
        for bad in [
            &bearer("token-of-node-a-012")[..],
            A.as_bytes(),
            b"",
            b"Bearer ",
        ] {
            assert_eq!(t.node(Some(bad)), None, "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(t.node(None), None);
        assert!(!format!("{t:?}").contains(A), "Debug shows a token");
    }

    #[test]
    fn bad_lines_are_refused_with_their_number() {
        let err = |text: &str| NodeTokens::parse(text, "f").unwrap_err().to_string();
        assert_eq!(
            err(&format!("node-a {A}\nnode-a {B}\n")),
            "f, line 2: node node-a already has a token (line 1)"
        );
        assert_eq!(
            err(&format!("node-a {A}\n# x\nnode-b {A}\n")),
            "f, line 3: node node-b has the same token as node node-a (line 1); every node needs its own"
        );
        assert_eq!(
            err("node-a short\n"),
            "f, line 1: the token of node node-a is shorter than 16 characters"
        );
        assert_eq!(
            err(&format!("node-a {A} extra\n")),
            "f, line 1: expected `NODE TOKEN` (two fields)"
        );
        assert!(err(&format!("node/a {A}\n")).contains("may only hold"));
    }

    #[test]
    fn files_over_the_limit_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nodes");
        std::fs::write(&path, vec![b'#'; MAX_NODE_TOKENS_BYTES as usize + 1]).unwrap();
        assert!(matches!(
            NodeTokens::read_file(&path),
            Err(NodeTokensError::TooLarge { .. })
        ));
        std::fs::write(&path, format!("node-a {A}\n")).unwrap();
        assert_eq!(NodeTokens::read_file(&path).unwrap().len(), 1);
    }
}
