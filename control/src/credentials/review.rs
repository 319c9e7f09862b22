//! Per-node identity on Kubernetes (`--kube-token-review`): an agent presents its pod's
//! projected ServiceAccount token (audience [`DEFAULT_AUDIENCE`], rotated by the kubelet),
//! the control plane asks the API server who it is (a `TokenReview`) and takes the node the
//! kubelet bound the token to (`user.extra["authentication.kubernetes.io/node-name"]`,
//! Kubernetes 1.30 and later) as the caller's [`Identity::Node`](super::Identity::Node).
//! The node is the API server's word, never the client's: a token lifted from one node's
//! agent works only as that node, and only until it expires (an hour in deploy/).
//!
//! Accepted only when the review says all of:
//! - authenticated, for our audience (a token minted for another audience, say the API
//!   server's own, is refused: it was not meant for us);
//! - the user is one of the agents' ServiceAccounts (`--kube-agent-service-account`); any
//!   other pod's token is refused;
//! - exactly one node name, and a valid one.
//!
//! The API server is asked at most [`MAX_CONCURRENT_REVIEWS`] at a time, only for
//! something shaped like a JWT, and each answer is kept ([`ReviewCache`]: accepted for
//! [`ACCEPTED_TTL`], refused for [`REFUSED_TTL`], at most [`CACHE_CAPACITY`] tokens), so an
//! agent's watches cost one review a minute, and a flood of made-up tokens costs the API
//! server a bounded rate. Each review's result is counted in
//! `sockmesh_control_token_reviews_total{result}`, each cached answer in
//! `sockmesh_control_token_review_cache_hits_total`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::{counter::Counter, family::Family};
use sockmesh_model::check_agent_name;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

/// The audience agents' tokens are minted for (deploy/'s projected volume).
pub const DEFAULT_AUDIENCE: &str = "sockmesh-control";
/// The agents' ServiceAccount in deploy/, as `NAMESPACE/NAME`.
pub const DEFAULT_AGENT_SERVICE_ACCOUNT: &str = "sockmesh-system/sockmesh-agent";
/// Where the API server puts the node a pod-bound token was issued on.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
/// Longer is not a ServiceAccount token (they are about 1 KiB); not reviewed.
pub const MAX_REVIEW_TOKEN_BYTES: usize = 8 * 1024;
/// How long an accepted token is taken without asking again, by default
/// (`--kube-token-review-cache-secs`). The kubelet rotates the token long before it expires,
/// and a deleted pod's token stops working at most this late.
pub const ACCEPTED_TTL: Duration = Duration::from_secs(60);
/// How long a refused token stays refused without asking again.
pub const REFUSED_TTL: Duration = Duration::from_secs(10);
/// Tokens remembered at most (a few per node).
pub const CACHE_CAPACITY: usize = 16_384;
/// Reviews in flight at most; more wait for a turn up to [`REVIEW_TIMEOUT`].
pub const MAX_CONCURRENT_REVIEWS: usize = 8;
/// A review (waiting for a turn included) that takes longer is given up: 503.
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// What a `TokenReview`'s status says, as far as this module reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReviewStatus {
    pub authenticated: bool,
    pub username: Option<String>,
    pub extra: BTreeMap<String, Vec<String>>,
    /// The audiences the token is valid for among those asked.
    pub audiences: Vec<String>,
    pub error: Option<String>,
}

/// Asks the API server about a token (the `kubernetes` feature's `KubeReviewer`; tests
/// may bring their own).
pub trait TokenReviewer: Send + Sync + fmt::Debug {
    fn review<'a>(
        &'a self,
        token: &'a str,
        audience: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<ReviewStatus, String>> + Send + 'a>>;
}

/// Whose tokens are taken (`--kube-token-audience`, `--kube-agent-service-account`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewPolicy {
    pub audience: String,
    /// Usernames: `system:serviceaccount:NAMESPACE:NAME`.
    pub service_accounts: Vec<String>,
    /// How long an accepted token is taken without asking again ([`ACCEPTED_TTL`]).
    pub accepted_ttl: Duration,
}

impl ReviewPolicy {
    /// `accounts` as `NAMESPACE/NAME`.
    pub fn new(audience: &str, accounts: &[String]) -> Result<Self, String> {
        if audience.is_empty() {
            return Err("the token audience is empty".into());
        }
        let service_accounts = accounts
            .iter()
            .map(|a| match a.split_once('/') {
                Some((ns, name))
                    if !ns.is_empty() && !name.is_empty() && !name.contains('/') =>
                {
                    Ok(format!("system:serviceaccount:{ns}:{name}"))
                }
                _ => Err(format!(
                    "service account {a:?}: expected NAMESPACE/NAME, like {DEFAULT_AGENT_SERVICE_ACCOUNT}"
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if service_accounts.is_empty() {
            return Err("no agent service account".into());
        }
        Ok(ReviewPolicy {
            audience: audience.to_owned(),
            service_accounts,
            accepted_ttl: ACCEPTED_TTL,
        })
    }
}

/// The result of a review: the label of `sockmesh_control_token_reviews_total`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ReviewResult {
    /// Taken: an agent's token bound to a node.
    Accepted,
    /// The API server does not know the token (expired, revoked, made up).
    Unauthenticated,
    /// Valid, but not for our audience.
    Audience,
    /// Valid, but not an agents' ServiceAccount.
    NotAgent,
    /// An agent's token without a node (not pod-bound, or a cluster before 1.30).
    NoNode,
    /// The API server could not be asked (down, slow, or no turn in time): 503.
    Error,
}

impl ReviewResult {
    pub const ALL: [ReviewResult; 6] = [
        ReviewResult::Accepted,
        ReviewResult::Unauthenticated,
        ReviewResult::Audience,
        ReviewResult::NotAgent,
        ReviewResult::NoNode,
        ReviewResult::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReviewResult::Accepted => "accepted",
            ReviewResult::Unauthenticated => "unauthenticated",
            ReviewResult::Audience => "audience",
            ReviewResult::NotAgent => "not_agent",
            ReviewResult::NoNode => "no_node",
            ReviewResult::Error => "error",
        }
    }
}

impl EncodeLabelValue for ReviewResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewLabels {
    pub result: ReviewResult,
}

/// The node a review's status proves, or why it proves none.
pub fn node_of(policy: &ReviewPolicy, status: &ReviewStatus) -> Result<Arc<str>, ReviewResult> {
    if !status.authenticated {
        return Err(ReviewResult::Unauthenticated);
    }
    if !status.audiences.contains(&policy.audience) {
        return Err(ReviewResult::Audience);
    }
    let user = status.username.as_deref().unwrap_or("");
    if !policy.service_accounts.iter().any(|a| a == user) {
        return Err(ReviewResult::NotAgent);
    }
    match status.extra.get(NODE_NAME_EXTRA).map(Vec::as_slice) {
        Some([node]) if check_agent_name(node).is_ok() => Ok(node.as_str().into()),
        _ => Err(ReviewResult::NoNode),
    }
}

/// Whether `token` is shaped like a JWT (three non-empty base64url parts), the only thing
/// worth asking the API server about.
pub fn looks_like_jwt(token: &str) -> bool {
    let b64url = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    };
    token.len() <= MAX_REVIEW_TOKEN_BYTES && {
        let parts: Vec<&str> = token.split('.').collect();
        parts.len() == 3 && parts.iter().all(|p| b64url(p))
    }
}

/// Answers kept per token, bounded: when full, the expired go first, then the refused, then
/// everything (agents are asked again; nothing is lost but a review each).
#[derive(Default)]
pub struct ReviewCache {
    entries: HashMap<Box<str>, (Option<Arc<str>>, Instant)>,
}

impl fmt::Debug for ReviewCache {
    // The keys are bearer tokens.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReviewCache({} tokens)", self.entries.len())
    }
}

impl ReviewCache {
    /// The kept answer for `token` at `now`: `Some(Some(node))` accepted, `Some(None)`
    /// refused, `None` not known (or expired).
    pub fn get(&self, token: &str, now: Instant) -> Option<Option<Arc<str>>> {
        match self.entries.get(token) {
            Some((answer, until)) if now < *until => Some(answer.clone()),
            _ => None,
        }
    }

    /// Keeps `answer` for `token`: an accepted one for `accepted_ttl`, a refusal for
    /// [`REFUSED_TTL`].
    pub fn put(
        &mut self,
        token: &str,
        answer: Option<Arc<str>>,
        now: Instant,
        accepted_ttl: Duration,
    ) {
        if self.entries.len() >= CACHE_CAPACITY && !self.entries.contains_key(token) {
            self.entries.retain(|_, (_, until)| now < *until);
            if self.entries.len() >= CACHE_CAPACITY {
                self.entries.retain(|_, (node, _)| node.is_some());
            }
            if self.entries.len() >= CACHE_CAPACITY {
                self.entries.clear();
            }
        }
        let ttl = match answer {
            Some(_) => accepted_ttl,
            None => REFUSED_TTL,
        };
        self.entries.insert(token.into(), (answer, now + ttl));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What a bearer token proved through a review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reviewed {
    Node(Arc<str>),
    Refused,
    /// The API server could not be asked; the message says why.
    Unavailable(String),
}

/// The metric handles a [`Reviews`] counts into (registered by `crate::metrics`).
#[derive(Debug, Clone, Default)]
pub struct ReviewMetrics {
    pub reviews: Family<ReviewLabels, Counter>,
    pub cache_hits: Counter,
}

/// Token reviews with their cache and their bound on concurrent requests.
#[derive(Debug)]
pub struct Reviews {
    reviewer: Arc<dyn TokenReviewer>,
    policy: ReviewPolicy,
    cache: Mutex<ReviewCache>,
    turns: Semaphore,
    metrics: ReviewMetrics,
}

impl Reviews {
    pub fn new(reviewer: Arc<dyn TokenReviewer>, policy: ReviewPolicy) -> Self {
        Reviews {
            reviewer,
            policy,
            cache: Mutex::new(ReviewCache::default()),
            turns: Semaphore::new(MAX_CONCURRENT_REVIEWS),
            metrics: ReviewMetrics::default(),
        }
    }

    /// Counts into `metrics` (the hub's) instead of handles of its own.
    pub fn with_metrics(mut self, metrics: ReviewMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Who `token` is, asking the API server unless the answer is kept.
    pub async fn review(&self, token: &str) -> Reviewed {
        if !looks_like_jwt(token) {
            return Reviewed::Refused;
        }
        if let Some(answer) = self.cached(token) {
            self.metrics.cache_hits.inc();
            return answer.map_or(Reviewed::Refused, Reviewed::Node);
        }
        let asked = tokio::time::timeout(REVIEW_TIMEOUT, async {
            let _turn = self.turns.acquire().await.map_err(|e| e.to_string())?;
            // Another request may have asked while this one waited.
            if let Some(answer) = self.cached(token) {
                return Ok(Err(answer));
            }
            self.reviewer
                .review(token, &self.policy.audience)
                .await
                .map(Ok)
        })
        .await;
        let status = match asked {
            Ok(Ok(Ok(status))) => status,
            Ok(Ok(Err(answer))) => {
                self.metrics.cache_hits.inc();
                return answer.map_or(Reviewed::Refused, Reviewed::Node);
            }
            Ok(Err(e)) => return self.unavailable(format!("the token review failed: {e}")),
            Err(_) => {
                return self.unavailable(format!(
                    "the token review took longer than {REVIEW_TIMEOUT:?}"
                ))
            }
        };
        let result = node_of(&self.policy, &status);
        let label = match &result {
            Ok(_) => ReviewResult::Accepted,
            Err(why) => *why,
        };
        self.count(label);
        match &result {
            Ok(node) => debug!(%node, "token review: accepted"),
            Err(why) => debug!(
                result = why.as_str(),
                user = status.username.as_deref().unwrap_or(""),
                error = status.error.as_deref().unwrap_or(""),
                "token review: refused"
            ),
        }
        let answer = result.ok();
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).put(
            token,
            answer.clone(),
            Instant::now(),
            self.policy.accepted_ttl,
        );
        answer.map_or(Reviewed::Refused, Reviewed::Node)
    }

    fn cached(&self, token: &str) -> Option<Option<Arc<str>>> {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(token, Instant::now())
    }

    fn unavailable(&self, message: String) -> Reviewed {
        self.count(ReviewResult::Error);
        warn!(error = %message, "token review unavailable");
        Reviewed::Unavailable(message)
    }

    fn count(&self, result: ReviewResult) {
        self.metrics
            .reviews
            .get_or_create(&ReviewLabels { result })
            .inc();
    }
}

#[cfg(test)]
#[path = "review_tests.rs"]
mod tests;
