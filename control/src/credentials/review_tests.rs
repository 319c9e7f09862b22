use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;

use super::*;

const AGENT: &str = "system:serviceaccount:sockmesh-system:sockmesh-agent";
const JWT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";

fn policy() -> ReviewPolicy {
    ReviewPolicy::new(
        DEFAULT_AUDIENCE,
        &[DEFAULT_AGENT_SERVICE_ACCOUNT.to_owned()],
    )
    .unwrap()
}

fn status(user: &str, audience: &str, nodes: &[&str]) -> ReviewStatus {
    let mut extra = BTreeMap::new();
    if !nodes.is_empty() {
        extra.insert(
            NODE_NAME_EXTRA.to_owned(),
            nodes.iter().map(|n| n.to_string()).collect(),
        );
    }
    ReviewStatus {
        authenticated: true,
        username: Some(user.to_owned()),
        extra,
        audiences: vec![audience.to_owned()],
        error: None,
    }
}

#[test]
fn the_policy_names_service_accounts_as_namespace_slash_name() {
    assert_eq!(policy().service_accounts, vec![AGENT.to_owned()]);
    for bad in ["sockmesh-agent", "/x", "ns/", "a/b/c"] {
        let e = ReviewPolicy::new(DEFAULT_AUDIENCE, &[bad.to_owned()]).unwrap_err();
        assert!(e.contains("NAMESPACE/NAME"), "{bad}: {e}");
    }
    assert!(ReviewPolicy::new("", &[DEFAULT_AGENT_SERVICE_ACCOUNT.to_owned()]).is_err());
    assert!(ReviewPolicy::new(DEFAULT_AUDIENCE, &[]).is_err());
}

#[test]
fn only_an_agents_token_for_our_audience_bound_to_one_node_is_a_node() {
    let p = policy();
    assert_eq!(
        node_of(&p, &status(AGENT, DEFAULT_AUDIENCE, &["node-a"])),
        Ok("node-a".into())
    );
    let unauthenticated = ReviewStatus {
        authenticated: false,
        ..status(AGENT, DEFAULT_AUDIENCE, &["node-a"])
    };
    assert_eq!(
        node_of(&p, &unauthenticated),
        Err(ReviewResult::Unauthenticated)
    );
    assert_eq!(
        node_of(
            &p,
            &status(AGENT, "https://kubernetes.default.svc", &["node-a"])
        ),
        Err(ReviewResult::Audience)
    );
    let mut no_audience = status(AGENT, DEFAULT_AUDIENCE, &["node-a"]);
    no_audience.audiences.clear();
    assert_eq!(node_of(&p, &no_audience), Err(ReviewResult::Audience));
    for other in [
        "system:serviceaccount:default:sockmesh-agent",
        "system:serviceaccount:sockmesh-system:sockmesh-control",
        "system:node:node-a",
        "",
    ] {
        assert_eq!(
            node_of(&p, &status(other, DEFAULT_AUDIENCE, &["node-a"])),
            Err(ReviewResult::NotAgent),
            "{other}"
        );
    }
    for nodes in [&[][..], &["node-a", "node-b"], &[""], &["a b"]] {
        assert_eq!(
            node_of(&p, &status(AGENT, DEFAULT_AUDIENCE, nodes)),
            Err(ReviewResult::NoNode),
            "{nodes:?}"
        );
    }
}

#[test]
fn only_jwt_shaped_tokens_are_reviewed() {
    assert!(looks_like_jwt(JWT));
    for bad in [
        "",
        "a.b",
        "a.b.c.d",
        "a..c",
        "a.b.c=",
        "a b.c.d",
        "node-a-token-0123456789",
    ] {
        assert!(!looks_like_jwt(bad), "{bad}");
    }
    let long = format!("a.b.{}", "c".repeat(MAX_REVIEW_TOKEN_BYTES));
    assert!(!looks_like_jwt(&long));
}

#[test]
fn the_cache_keeps_answers_for_their_time_and_stays_bounded() {
    let t0 = Instant::now();
    let mut cache = ReviewCache::default();
    cache.put("accepted", Some("node-a".into()), t0, ACCEPTED_TTL);
    cache.put("refused", None, t0, ACCEPTED_TTL);
    assert_eq!(cache.get("accepted", t0), Some(Some("node-a".into())));
    assert_eq!(cache.get("refused", t0), Some(None));
    assert_eq!(cache.get("other", t0), None);
    let later = t0 + REFUSED_TTL;
    assert_eq!(
        cache.get("refused", later),
        None,
        "a refusal outlived its time"
    );
    assert_eq!(cache.get("accepted", later), Some(Some("node-a".into())));
    assert_eq!(cache.get("accepted", t0 + ACCEPTED_TTL), None);
    assert!(
        !format!("{cache:?}").contains("accepted"),
        "Debug shows a token"
    );

    // Full of refusals: an accepted node survives the next insert.
    let mut cache = ReviewCache::default();
    cache.put("node", Some("node-a".into()), t0, ACCEPTED_TTL);
    for i in 0..CACHE_CAPACITY * 2 {
        cache.put(&format!("junk-{i}"), None, t0, ACCEPTED_TTL);
        assert!(cache.len() <= CACHE_CAPACITY);
    }
    assert_eq!(cache.get("node", t0), Some(Some("node-a".into())));
}

/// A reviewer that answers from a fixed table and counts its calls.
#[derive(Debug, Default)]
struct Table {
    calls: AtomicUsize,
    fail: bool,
}

impl TokenReviewer for Table {
    fn review<'a>(
        &'a self,
        token: &'a str,
        audience: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<ReviewStatus, String>> + Send + 'a>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            if self.fail {
                return Err("connection refused".into());
            }
            Ok(if token == JWT {
                status(AGENT, audience, &["node-a"])
            } else {
                ReviewStatus::default()
            })
        })
    }
}

#[tokio::test]
async fn a_review_is_asked_once_then_kept_and_counted() {
    let table = Arc::new(Table::default());
    let reviews = Reviews::new(table.clone(), policy());
    for _ in 0..3 {
        assert_eq!(reviews.review(JWT).await, Reviewed::Node("node-a".into()));
    }
    assert_eq!(table.calls.load(Ordering::SeqCst), 1);
    let other = "eyJh.eyJz.b3RoZXI";
    assert_eq!(reviews.review(other).await, Reviewed::Refused);
    assert_eq!(reviews.review(other).await, Reviewed::Refused);
    assert_eq!(table.calls.load(Ordering::SeqCst), 2);
    // Not a JWT: never asked.
    assert_eq!(
        reviews.review("node-a-token-0123456789").await,
        Reviewed::Refused
    );
    assert_eq!(table.calls.load(Ordering::SeqCst), 2);
    let count = |result| {
        reviews
            .metrics
            .reviews
            .get_or_create(&ReviewLabels { result })
            .get()
    };
    assert_eq!(count(ReviewResult::Accepted), 1);
    assert_eq!(count(ReviewResult::Unauthenticated), 1);
    assert_eq!(reviews.metrics.cache_hits.get(), 3);
}

#[tokio::test]
async fn concurrent_requests_with_one_token_share_a_bounded_number_of_reviews() {
    let table = Arc::new(Table::default());
    let reviews = Arc::new(Reviews::new(table.clone(), policy()));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let r = reviews.clone();
            tokio::spawn(async move { r.review(JWT).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), Reviewed::Node("node-a".into()));
    }
    let calls = table.calls.load(Ordering::SeqCst);
    assert!(
        (1..=MAX_CONCURRENT_REVIEWS).contains(&calls),
        "{calls} reviews for one token"
    );
}

#[tokio::test]
async fn an_api_server_that_cannot_be_asked_is_unavailable_and_not_kept() {
    let table = Arc::new(Table {
        fail: true,
        ..Table::default()
    });
    let reviews = Reviews::new(table.clone(), policy());
    for _ in 0..2 {
        match reviews.review(JWT).await {
            Reviewed::Unavailable(m) => assert!(m.contains("connection refused"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(table.calls.load(Ordering::SeqCst), 2, "a failure was kept");
}

proptest! {
    /// Whatever the API server answers, a node comes only from an authenticated agent's
    /// token for our audience, and it is the node named.
    #[test]
    fn a_node_only_from_an_accepted_review(
        authenticated in any::<bool>(),
        user in prop_oneof![Just(AGENT.to_owned()), "[a-z:-]{0,40}"],
        audience in prop_oneof![Just(DEFAULT_AUDIENCE.to_owned()), "[a-z-]{0,20}"],
        nodes in proptest::collection::vec("[a-z0-9.-]{0,12}", 0..3),
    ) {
        let mut s = status(&user, &audience, &nodes.iter().map(String::as_str).collect::<Vec<_>>());
        s.authenticated = authenticated;
        if let Ok(node) = node_of(&policy(), &s) {
            prop_assert!(authenticated);
            prop_assert_eq!(&user, AGENT);
            prop_assert_eq!(&audience, DEFAULT_AUDIENCE);
            prop_assert_eq!(nodes.len(), 1);
            prop_assert_eq!(&*node, nodes[0].as_str());
        }
    }
}
