//! The admin API's endpoints, listed once: the router dispatches on [`Endpoint`], and a test
//! checks that README.md and docs/agent-interface.md name exactly these, so a new endpoint
//! cannot ship undocumented and a removed one cannot stay in the docs.

/// One admin endpoint (a method and a path; query parameters are the handler's business).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Ready,
    Status,
    Services,
    Backends,
    Workloads,
    Failures,
    Slos,
    Bans,
    Circuits,
    Lines,
    Top,
    Diagnose,
    Fault,
    ProxyRestart,
}

impl Endpoint {
    pub(crate) const ALL: [Endpoint; 14] = [
        Endpoint::Ready,
        Endpoint::Status,
        Endpoint::Services,
        Endpoint::Backends,
        Endpoint::Workloads,
        Endpoint::Failures,
        Endpoint::Slos,
        Endpoint::Bans,
        Endpoint::Circuits,
        Endpoint::Lines,
        Endpoint::Top,
        Endpoint::Diagnose,
        Endpoint::Fault,
        Endpoint::ProxyRestart,
    ];

    pub(crate) const fn path(self) -> &'static str {
        match self {
            Endpoint::Ready => "/ready",
            Endpoint::Status => "/status",
            Endpoint::Services => "/v1/services",
            Endpoint::Backends => "/v1/backends",
            Endpoint::Workloads => "/v1/workloads",
            Endpoint::Failures => "/v1/failures",
            Endpoint::Slos => "/v1/slos",
            Endpoint::Bans => "/v1/bans",
            Endpoint::Circuits => "/v1/circuits",
            Endpoint::Lines => "/v1/lines",
            Endpoint::Top => "/v1/top",
            Endpoint::Diagnose => "/v1/diagnose",
            Endpoint::Fault => "/v1/fault",
            Endpoint::ProxyRestart => "/v1/proxy/restart",
        }
    }

    /// The endpoints that change the agent are POSTs (and need the fault credential on
    /// TCP); every other one is a GET.
    pub(crate) const fn is_post(self) -> bool {
        matches!(self, Endpoint::Fault | Endpoint::ProxyRestart)
    }

    /// Answered from the health engine's views, which the engine task builds on request.
    pub(crate) const fn needs_engine(self) -> bool {
        matches!(
            self,
            Endpoint::Bans | Endpoint::Circuits | Endpoint::Diagnose
        )
    }

    pub(crate) fn from_path(path: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.path() == path)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// How the docs write an endpoint: `/v1/backends`, or `POST /v1/fault`.
    fn documented(e: Endpoint) -> String {
        if e.is_post() {
            format!("POST {}", e.path())
        } else {
            e.path().to_owned()
        }
    }

    fn doc(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The rows of the markdown table under `heading` whose first cell is code: `| `X` | ...`.
    fn table_keys(text: &str, heading: &str) -> BTreeSet<String> {
        let start = text
            .find(heading)
            .unwrap_or_else(|| panic!("no {heading:?} section"));
        text[start..]
            .lines()
            .skip(1)
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .filter_map(|l| {
                let cell = l.split('|').nth(1)?.trim();
                let code = cell.strip_prefix('`')?.split('`').next()?;
                Some(code.split('?').next().unwrap_or(code).to_owned())
            })
            .collect()
    }

    #[test]
    fn paths_round_trip_and_are_unique() {
        let mut seen = BTreeSet::new();
        for e in Endpoint::ALL {
            assert_eq!(Endpoint::from_path(e.path()), Some(e));
            assert!(seen.insert(e.path()), "{} twice", e.path());
        }
        assert_eq!(Endpoint::from_path("/v1/nope"), None);
    }

    #[test]
    fn readme_lists_exactly_the_endpoints_the_router_serves() {
        let listed = table_keys(&doc("README.md"), "### Admin API");
        let served: BTreeSet<String> = Endpoint::ALL.iter().map(|e| documented(*e)).collect();
        assert_eq!(
            listed, served,
            "README.md's admin API table and agent/src/admin/endpoint.rs disagree"
        );
    }

    #[test]
    fn agent_interface_doc_describes_every_endpoint() {
        let text = doc("docs/agent-interface.md");
        for e in Endpoint::ALL {
            // Written `/v1/x`, `GET /v1/x` or `POST /v1/x`, always as code.
            let named = text.contains(&format!("`{}", documented(e)))
                || (!e.is_post() && text.contains(&format!("`GET {}", e.path())));
            assert!(
                named,
                "docs/agent-interface.md never names `{}`",
                documented(e)
            );
        }
    }
}
