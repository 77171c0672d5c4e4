//! The `Origin` allowlist for WebSocket upgrades (pure, no I/O).
//!
//! Browsers send `Origin` with every WebSocket upgrade, and a page on any
//! site can open a WebSocket to any host, carrying that host's cookies
//! (cross-site WebSocket hijacking). The allowlist makes the gateway refuse
//! pages from other sites.
//!
//! Entries (`auth.allowed_origins`):
//!
//! * `https://app.example.com` — that exact origin (scheme, host, port;
//!   the default port of the scheme may be written or left out);
//! * `https://*.example.com` — any subdomain of `example.com` (not
//!   `example.com` itself) over that scheme;
//! * `*.example.com` or `app.example.com` without a scheme — any scheme.
//!
//! An entry without a port matches only origins on the scheme's default
//! port. Hosts compare case-insensitively. The opaque origin `null` (sandboxed
//! frames, `file:` pages) matches nothing.

/// A parsed `Origin` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub scheme: String,
    pub host: String,
    /// The port, `None` when it is the scheme's default.
    pub port: Option<u16>,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// Splits `host[:port]` (IPv6 hosts in brackets).
fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = &s[..end + 2];
        match &rest[end + 1..] {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':')?)),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._[]:*".contains(&b))
    {
        return None;
    }
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok()?),
        None => None,
    };
    Some((host, port))
}

impl Origin {
    /// Parses `scheme://host[:port]`; `None` for anything else, `null`
    /// included.
    pub fn parse(s: &str) -> Option<Origin> {
        let (scheme, rest) = s.split_once("://")?;
        if scheme.is_empty()
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        {
            return None;
        }
        let scheme = scheme.to_ascii_lowercase();
        let (host, port) = split_host_port(rest)?;
        if host.contains('*') {
            return None;
        }
        let port = port.filter(|p| Some(*p) != default_port(&scheme));
        Some(Origin {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

/// One allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    scheme: Option<String>,
    /// The host, or for `*.example.com` the suffix `.example.com`.
    host: String,
    subdomains: bool,
    port: Option<u16>,
}

impl OriginPattern {
    pub fn parse(s: &str) -> Result<OriginPattern, String> {
        let bad = || {
            format!(
                "auth.allowed_origins: {s:?} is not an origin such as \"https://app.example.com\" or \"*.example.com\""
            )
        };
        let (scheme, rest) = match s.split_once("://") {
            Some((scheme, rest)) => (Some(scheme.to_ascii_lowercase()), rest),
            None => (None, s),
        };
        if let Some(sc) = &scheme {
            if sc.is_empty()
                || !sc
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
            {
                return Err(bad());
            }
        }
        let (host, port) = split_host_port(rest).ok_or_else(bad)?;
        let host = host.to_ascii_lowercase();
        let (host, subdomains) = match host.strip_prefix("*.") {
            Some(suffix) => (format!(".{suffix}"), true),
            None => (host, false),
        };
        if host.contains('*') || host == "." || host.is_empty() {
            return Err(bad());
        }
        let port = port.filter(|p| scheme.as_deref().and_then(default_port) != Some(*p));
        Ok(OriginPattern {
            scheme,
            host,
            subdomains,
            port,
        })
    }

    pub fn matches(&self, origin: &Origin) -> bool {
        if let Some(s) = &self.scheme {
            if *s != origin.scheme {
                return false;
            }
        }
        let host_ok = if self.subdomains {
            origin.host.len() > self.host.len() && origin.host.ends_with(&self.host)
        } else {
            origin.host == self.host
        };
        host_ok && self.port == origin.port
    }
}

/// True if the `Origin` header value `origin` is allowed by `list`.
pub fn allowed(list: &[OriginPattern], origin: &str) -> bool {
    match Origin::parse(origin.trim()) {
        Some(o) => list.iter().any(|p| p.matches(&o)),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> Vec<OriginPattern> {
        entries
            .iter()
            .map(|e| OriginPattern::parse(e).unwrap_or_else(|err| panic!("{err}")))
            .collect()
    }

    #[test]
    fn exact_origins() {
        let l = list(&["https://app.example.com", "http://localhost:3000"]);
        assert!(allowed(&l, "https://app.example.com"));
        assert!(allowed(&l, "https://APP.example.com:443"));
        assert!(allowed(&l, "http://localhost:3000"));
        assert!(!allowed(&l, "http://app.example.com"));
        assert!(!allowed(&l, "https://app.example.com:8443"));
        assert!(!allowed(&l, "https://app.example.com.evil.net"));
        assert!(!allowed(&l, "https://evilapp.example.com"));
        assert!(!allowed(&l, "http://localhost:3001"));
        assert!(!allowed(&l, "http://localhost"));
        assert!(!allowed(&l, "null"));
        assert!(!allowed(&l, ""));
    }

    #[test]
    fn subdomain_wildcards() {
        let l = list(&["*.example.com"]);
        assert!(allowed(&l, "https://app.example.com"));
        assert!(allowed(&l, "http://a.b.example.com"));
        assert!(!allowed(&l, "https://example.com"));
        assert!(!allowed(&l, "https://badexample.com"));
        assert!(!allowed(&l, "https://example.com.evil.net"));
        assert!(!allowed(&l, "https://app.example.com:8443"));
        let l = list(&["https://*.example.com"]);
        assert!(allowed(&l, "https://app.example.com"));
        assert!(!allowed(&l, "http://app.example.com"));
    }

    #[test]
    fn ipv6_and_bad_entries() {
        let l = list(&["http://[::1]:8080"]);
        assert!(allowed(&l, "http://[::1]:8080"));
        assert!(!allowed(&l, "http://[::1]:8081"));
        for bad in [
            "",
            "https://",
            "*",
            "https://a.*.com",
            "https://x:99999",
            "ht tp://x",
            "*.",
        ] {
            assert!(OriginPattern::parse(bad).is_err(), "{bad:?}");
        }
    }
}
