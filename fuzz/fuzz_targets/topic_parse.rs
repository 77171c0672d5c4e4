//! The topic and pattern grammar (`wsgate::topic`) and pattern coverage
//! (`wsgate::auth::covers`) on any text: no panics, parsed values round
//! trip, and matching agrees with coverage.
//!
//! Input layout: three strings separated by NUL — a topic, a pattern and a
//! second pattern.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::{Pattern, Topic};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.split('\0');
    let (t, p, q) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let topic = Topic::parse(t, 256);
    let pattern = Pattern::parse(p, 256);
    let other = Pattern::parse(q, 256);
    if let Ok(topic) = &topic {
        assert_eq!(topic.as_str(), t);
        // Every topic is a pattern that matches itself.
        let as_pattern = Pattern::parse(t, 256).expect("a topic is a pattern");
        assert!(as_pattern.matches(topic));
    }
    if let Ok(pattern) = &pattern {
        assert_eq!(pattern.as_str(), p);
        if let Ok(topic) = &topic {
            let _ = pattern.matches(topic);
        }
        if let Ok(other) = &other {
            // If `pattern` covers `other`, whatever `other` matches,
            // `pattern` matches too.
            if wsgate::auth::covers(pattern, other) {
                if let Some(concrete) = other.as_topic() {
                    assert!(pattern.matches(&concrete));
                }
                if let Ok(topic) = &topic {
                    if other.matches(topic) {
                        assert!(pattern.matches(topic));
                    }
                }
            }
        }
    }
});
