//! Request routes: which backend subset of an http service a request goes to.
//!
//! The service's `http.routes` are walked in order and the first whose `match` the request
//! satisfies decides ([`select`]); no match sends the request to the whole service. Within a
//! match every given attribute must hold:
//!
//! - `path_prefix`: the path (without the query) starts with it, byte for byte;
//! - `path_exact`: the path equals it;
//! - `method`: equal, case-sensitive (RFC 9110 §9.1);
//! - `headers`: for each name (case-insensitive, RFC 9110 §5.1), one of the request's values
//!   of that header equals the configured value exactly (a header sent twice matches if
//!   either value does; values are not split on commas).

use std::collections::BTreeMap;

use http::{HeaderMap, Method};
use sockmesh_model::{HttpMatch, HttpRouteSpec};

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// `http.routes[route]` matched: the backends carrying the labels of its `to`.
    Subset {
        route: usize,
        to: &'a BTreeMap<String, String>,
    },
    /// No route matched: every backend of the service.
    Service,
}

/// The parts of a request routes look at.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// The path as in the request target, without the query (`Uri::path`).
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

/// The first route of `routes` that `request` matches, or the whole service.
pub fn select<'a>(routes: &'a [HttpRouteSpec], request: RequestView<'_>) -> Target<'a> {
    routes
        .iter()
        .position(|route| matches(&route.matches, request))
        .map_or(Target::Service, |route| Target::Subset {
            route,
            to: &routes[route].to,
        })
}

/// Whether `request` has every attribute `m` asks for (an empty match: every request).
pub fn matches(m: &HttpMatch, request: RequestView<'_>) -> bool {
    if let Some(prefix) = &m.path_prefix {
        if !request.path.starts_with(prefix.as_str()) {
            return false;
        }
    }
    if let Some(exact) = &m.path_exact {
        if request.path != exact {
            return false;
        }
    }
    if let Some(method) = &m.method {
        if request.method.as_str() != method {
            return false;
        }
    }
    m.headers.iter().all(|(name, want)| {
        request
            .headers
            .get_all(name.as_str())
            .iter()
            .any(|value| value.as_bytes() == want.as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{HeaderName, HeaderValue};
    use proptest::prelude::*;

    fn route(m: HttpMatch, track: &str) -> HttpRouteSpec {
        HttpRouteSpec {
            matches: m,
            to: [("track".to_owned(), track.to_owned())].into(),
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for &(name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn picked(routes: &[HttpRouteSpec], method: &str, path: &str, h: &HeaderMap) -> Option<usize> {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let request = RequestView {
            method: &method,
            path,
            headers: h,
        };
        match select(routes, request) {
            Target::Subset { route, to } => {
                assert_eq!(to, &routes[route].to);
                Some(route)
            }
            Target::Service => None,
        }
    }

    /// The example: `/v2` with `x-canary: 1` goes to the canary, the rest to the
    /// service; the first matching route wins over later ones.
    #[test]
    fn first_match_wins_and_no_match_is_the_whole_service() {
        let routes = [
            route(
                HttpMatch {
                    path_prefix: Some("/v2".into()),
                    headers: [("x-canary".to_owned(), "1".to_owned())].into(),
                    ..Default::default()
                },
                "canary",
            ),
            route(
                HttpMatch {
                    path_exact: Some("/healthz".into()),
                    method: Some("GET".into()),
                    ..Default::default()
                },
                "stable",
            ),
            route(
                HttpMatch {
                    path_prefix: Some("/v2".into()),
                    ..Default::default()
                },
                "v2",
            ),
        ];
        let canary = headers(&[("X-Canary", "1")]);
        let none = HeaderMap::new();
        assert_eq!(picked(&routes, "GET", "/v2/items", &canary), Some(0));
        assert_eq!(picked(&routes, "POST", "/v2", &canary), Some(0));
        assert_eq!(picked(&routes, "GET", "/v2/items", &none), Some(2));
        assert_eq!(picked(&routes, "GET", "/v1/items", &canary), None);
        assert_eq!(picked(&routes, "GET", "/healthz", &none), Some(1));
        assert_eq!(picked(&routes, "HEAD", "/healthz", &none), None, "method");
        assert_eq!(picked(&routes, "GET", "/healthz/x", &none), None, "exact");
        assert_eq!(picked(&[], "GET", "/", &none), None);
    }

    #[test]
    fn header_names_are_case_insensitive_and_values_exact() {
        let routes = [route(
            HttpMatch {
                headers: [("x-lane".to_owned(), "Beta".to_owned())].into(),
                ..Default::default()
            },
            "beta",
        )];
        for (sent, want) in [
            (headers(&[("x-lane", "Beta")]), Some(0)),
            (headers(&[("X-LANE", "Beta")]), Some(0)),
            (headers(&[("x-lane", "beta")]), None),
            (headers(&[("x-lane", "Beta ")]), None),
            (headers(&[("x-lane", "Beta,Gamma")]), None),
            (headers(&[("x-lane", "alpha"), ("x-lane", "Beta")]), Some(0)),
            (headers(&[("x-lan", "Beta")]), None),
        ] {
            assert_eq!(picked(&routes, "GET", "/", &sent), want, "{sent:?}");
        }
    }

    fn arb_match() -> impl Strategy<Value = HttpMatch> {
        (
            proptest::option::of("/[ab/]{0,3}"),
            proptest::option::of("/[ab/]{0,3}"),
            proptest::option::of(prop_oneof![Just("GET"), Just("POST")]),
            proptest::collection::btree_map("x-[ab]", "[01]", 0..2),
        )
            .prop_map(|(prefix, exact, method, headers)| HttpMatch {
                path_prefix: prefix,
                path_exact: exact,
                method: method.map(str::to_owned),
                headers,
            })
    }

    proptest! {
        /// `select` is "the first route that matches", whatever the routes and request; and
        /// a request made from a route's own match is routed by that route or an earlier one.
        #[test]
        fn select_is_the_first_matching_route(
            drawn in proptest::collection::vec(arb_match(), 0..6),
            method in prop_oneof![Just("GET"), Just("POST")],
            path in "/[ab/]{0,4}",
            sent in proptest::collection::vec(("x-[ab]", "[01]"), 0..3),
        ) {
            let routes: Vec<_> = drawn.into_iter().map(|m| route(m, "t")).collect();
            let sent: Vec<(&str, &str)> = sent.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            let h = headers(&sent);
            let m = Method::from_bytes(method.as_bytes()).unwrap();
            let view = RequestView { method: &m, path: &path, headers: &h };
            let first = routes.iter().position(|r| matches(&r.matches, view));
            prop_assert_eq!(picked(&routes, method, &path, &h), first);
            for (k, r) in routes.iter().enumerate() {
                let own_path = r.matches.path_exact.clone()
                    .or(r.matches.path_prefix.clone()).unwrap_or_else(|| "/".into());
                if r.matches.path_exact.is_some() && r.matches.path_prefix.as_ref()
                    .is_some_and(|p| !own_path.starts_with(p.as_str())) {
                    continue; // a match no request can satisfy
                }
                let own_headers: Vec<(&str, &str)> = r.matches.headers.iter()
                    .map(|(n, v)| (n.as_str(), v.as_str())).collect();
                let own_method = r.matches.method.as_deref().unwrap_or("GET");
                let got = picked(&routes, own_method, &own_path, &headers(&own_headers));
                prop_assert!(got.is_some_and(|g| g <= k), "route {} got {:?}", k, got);
            }
        }
    }
}
