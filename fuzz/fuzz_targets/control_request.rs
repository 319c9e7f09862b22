//! The control plane's request decoder (`sockmesh_model::request::decode`) on
//! arbitrary requests: whatever a client sends as method, path, query and body, the
//! decoder answers with a request or a 4xx, never a panic, and what it accepts is within
//! the API's rules (agent names, the watch timeout cap, the ack error cap) and survives a
//! round trip through its own JSON.
//!
//! Input layout: byte 0 picks the method, byte 1 the path (one of the API's, `/v1/`, or the bytes
//! up to the first `\n` when it is 0xff); the rest is the query string up to the first
//! `\n`, then the body.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sockmesh_model::MAX_AGENT_NAME_LEN;
use sockmesh_model::protocol::{
    ACK_PATH, MAX_WATCH_TIMEOUT_SECS, ROLLBACK_PATH, SNAPSHOT_PATH, WATCH_PATH,
};
use sockmesh_model::request::{decode, ApiRequest, MAX_ACK_ERROR_BYTES, PATHS};

const METHODS: [&str; 6] = ["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH"];

fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

fn check_agent(agent: &str) {
    assert!(
        !agent.is_empty() && agent.len() <= MAX_AGENT_NAME_LEN,
        "{agent:?}"
    );
    assert!(
        agent
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)),
        "{agent:?}"
    );
}

fuzz_target!(|input: &[u8]| {
    let [m, p, rest @ ..] = input else {
        return;
    };
    let method = METHODS[usize::from(*m) % METHODS.len()];
    let (path, rest) = if *p == 0xff {
        let (path, rest) = split_line(rest);
        (String::from_utf8_lossy(path).into_owned(), rest)
    } else {
        // One more than the API's paths: the last pick is a prefix the API does not serve.
        let i = usize::from(*p) % (PATHS.len() + 1);
        (PATHS.get(i).copied().unwrap_or("/v1/").to_owned(), rest)
    };
    let (query, body) = split_line(rest);
    let query = String::from_utf8_lossy(query);

    match decode(method, &path, &query, body) {
        Err(bad) => {
            assert!(bad.status.is_client_error(), "{bad:?}");
            assert!(!bad.message.is_empty());
        }
        Ok(ApiRequest::Snapshot { agent, .. }) => {
            assert_eq!((method, path.as_str()), ("GET", SNAPSHOT_PATH));
            if let Some(a) = agent {
                check_agent(&a);
            }
        }
        Ok(ApiRequest::Watch { agent, timeout, .. }) => {
            assert_eq!((method, path.as_str()), ("GET", WATCH_PATH));
            assert!(timeout.as_secs_f64() <= MAX_WATCH_TIMEOUT_SECS as f64);
            if let Some(a) = agent {
                check_agent(&a);
            }
        }
        Ok(ApiRequest::Ack(ack)) => {
            assert_eq!((method, path.as_str()), ("POST", ACK_PATH));
            check_agent(&ack.agent);
            assert!(ack
                .error
                .as_ref()
                .is_none_or(|e| e.len() <= MAX_ACK_ERROR_BYTES));
            let again = serde_json::to_vec(&ack).expect("an ack serializes");
            assert_eq!(
                decode("POST", ACK_PATH, "", &again).expect("a decoded ack decodes again"),
                ApiRequest::Ack(ack)
            );
        }
        Ok(ApiRequest::Rollback(r)) => {
            assert_eq!((method, path.as_str()), ("POST", ROLLBACK_PATH));
            let again = serde_json::to_vec(&r).expect("a rollback serializes");
            assert_eq!(
                decode("POST", ROLLBACK_PATH, "", &again).expect("decodes again"),
                ApiRequest::Rollback(r)
            );
        }
        Ok(ApiRequest::Agents | ApiRequest::History | ApiRequest::Status) => {
            assert_eq!(method, "GET");
        }
    }
});
