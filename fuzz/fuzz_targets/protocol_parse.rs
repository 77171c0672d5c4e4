//! `wsgate::protocol::parse` on any UTF-8 text (the session only hands it
//! text frames that passed UTF-8 validation): it must never panic, and every
//! error must encode to a valid JSON-RPC response.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::protocol::{self, Incoming, ParseLimits};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let limits = ParseLimits {
        max_topic_length: 256,
        max_topics_per_request: 16,
        max_batch_requests: 8,
        max_json_depth: 16,
    };
    let check = |encoded: String| {
        assert!(
            serde_json::from_str::<serde_json::Value>(&encoded).is_ok(),
            "invalid response: {encoded}"
        );
    };
    match protocol::parse(text, &limits) {
        Incoming::Invalid(e) => check(protocol::encode_error(None, &e)),
        Incoming::Single(req) => {
            if let (Some(id), Err(e)) = (req.id, &req.call) {
                check(protocol::encode_error(Some(id), e));
            }
        }
        Incoming::Batch(reqs) => {
            assert!(reqs.len() <= limits.max_batch_requests);
            for req in reqs {
                if let (Some(id), Err(e)) = (req.id, &req.call) {
                    check(protocol::encode_error(Some(id), e));
                }
            }
        }
    }
});
