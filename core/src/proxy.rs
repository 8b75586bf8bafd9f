//! Proxy selection: which proxy, if any, carries a request to an origin.
//!
//! Pure decisions from configuration (typically the conventional environment variables,
//! read by the caller and passed in through [`ProxyConfig::from_lookup`]): plain-HTTP
//! origins go through an HTTP proxy with absolute-form requests; HTTPS origins go through a
//! `CONNECT` tunnel. Proxy credentials in the proxy URL become `Proxy-Authorization` and are
//! only ever sent to the proxy. The runtime performs the TCP connection and the `CONNECT`
//! handshake; this module only decides.

use base64::Engine as _;

use crate::http::{Origin, Scheme};

/// Proxy settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Proxy for `http://` origins.
    pub http: Option<url::Url>,
    /// Proxy for `https://` origins (reached with `CONNECT`).
    pub https: Option<url::Url>,
    /// Hosts that bypass the proxy: exact hosts, domain suffixes (`example.com` and
    /// `.example.com` both match `a.example.com`; an IP address matches only itself),
    /// `host:port`, or `*` for all.
    pub no_proxy: Vec<String>,
    /// Schemes whose proxy variable was set to a proxy haul cannot use (a `socks5://` one,
    /// say), with why: a download that would go through it fails with that reason, one that
    /// would not (another scheme, or a host in `no_proxy`) is not held up by it.
    pub unusable: Vec<(Scheme, String)>,
}

/// How a connection reaches its origin through a proxy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProxyHop {
    /// The proxy server (always spoken to in plain HTTP/1.1).
    pub proxy: Origin,
    /// `true`: open a `CONNECT` tunnel to the origin (then TLS for https); `false`: send
    /// absolute-form requests to the proxy.
    pub tunnel: bool,
    /// `Proxy-Authorization` value from the proxy URL's credentials.
    pub authorization: Option<String>,
}

/// A proxy URL that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid proxy {value:?}: {reason}")]
pub struct ProxyError {
    /// The value given.
    pub value: String,
    /// What is wrong.
    pub reason: String,
}

/// Parse a proxy URL; a bare `host:port` means `http://host:port`. An error shows the value
/// without its credentials ([`redact_userinfo`]).
pub fn parse_proxy_url(value: &str) -> Result<url::Url, ProxyError> {
    let v = value.trim();
    let with_scheme = if v.contains("://") {
        v.to_string()
    } else {
        format!("http://{v}")
    };
    let error = |reason: String| ProxyError {
        value: redact_userinfo(value),
        reason,
    };
    let url = url::Url::parse(&with_scheme).map_err(|e| error(e.to_string()))?;
    if url.scheme() != "http" {
        return Err(error("only http:// proxies are supported".into()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(error("no host".into()));
    }
    Ok(url)
}

/// `value`, a URL or `host:port`, with any `user:password@` before its host shown as
/// `***@`: for messages about proxy URLs, which often carry credentials (and come from the
/// environment, into logs).
pub fn redact_userinfo(value: &str) -> String {
    let (scheme, rest) = match value.find("://") {
        Some(i) => value.split_at(i + 3),
        None => ("", value),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}***{}", &rest[at..]),
        None => value.to_string(),
    }
}

impl ProxyConfig {
    /// Settings from environment-style variables: `http_proxy`/`HTTP_PROXY`,
    /// `https_proxy`/`HTTPS_PROXY`, `no_proxy`/`NO_PROXY` (lowercase wins). Empty values
    /// mean unset. A proxy variable that names no usable proxy makes its scheme
    /// [`ProxyConfig::unusable`]: only a download that would go through it fails (the
    /// environment may well hold a `socks5://` proxy for other programs).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<ProxyConfig, ProxyError> {
        let var = |lower: &'static str, upper: &'static str| {
            match get(lower) {
                Some(v) => Some((lower, v)),
                None => get(upper).map(|v| (upper, v)),
            }
            .filter(|(_, v)| !v.trim().is_empty())
        };
        let mut unusable = Vec::new();
        let mut proxy = |scheme: Scheme, lower, upper| {
            let (name, value) = var(lower, upper)?;
            match parse_proxy_url(&value) {
                Ok(url) => Some(url),
                Err(e) => {
                    unusable.push((scheme, format!("{name}: {e}")));
                    None
                }
            }
        };
        let http = proxy(Scheme::Http, "http_proxy", "HTTP_PROXY");
        let https = proxy(Scheme::Https, "https_proxy", "HTTPS_PROXY");
        let no_proxy = var("no_proxy", "NO_PROXY")
            .map(|(_, v)| {
                v.split(',')
                    .map(|s| s.trim().to_ascii_lowercase())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        Ok(ProxyConfig {
            http,
            https,
            no_proxy,
            unusable,
        })
    }

    /// Why `origin` cannot be reached: its scheme's proxy is [`ProxyConfig::unusable`] and
    /// `origin` does not bypass it.
    pub fn unusable_for(&self, origin: &Origin) -> Option<&str> {
        let (_, why) = self.unusable.iter().find(|(s, _)| *s == origin.scheme)?;
        (!self.bypasses(origin)).then_some(why.as_str())
    }

    /// Whether `origin` bypasses the proxy.
    pub fn bypasses(&self, origin: &Origin) -> bool {
        let host = origin
            .host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        self.no_proxy.iter().any(|entry| {
            if entry == "*" {
                return true;
            }
            let (name, port) = match entry.rsplit_once(':') {
                Some((n, p)) if !n.contains(':') && p.parse::<u16>().is_ok() => {
                    (n, p.parse::<u16>().ok())
                }
                _ => (entry.as_str(), None),
            };
            if port.is_some_and(|p| p != origin.port) {
                return false;
            }
            let name = name.trim_start_matches('.');
            // An address is no domain: `1` or `0.0.1` is not a suffix of 127.0.0.1.
            if host.parse::<std::net::IpAddr>().is_ok() {
                return host == name.trim_start_matches('[').trim_end_matches(']');
            }
            host == name || host.ends_with(&format!(".{name}"))
        })
    }

    /// The hop for `origin`, or None for a direct connection.
    pub fn hop_for(&self, origin: &Origin) -> Option<ProxyHop> {
        let url = match origin.scheme {
            Scheme::Http => self.http.as_ref(),
            Scheme::Https => self.https.as_ref(),
        }?;
        if self.bypasses(origin) {
            return None;
        }
        let proxy = Origin::of(url).ok()?;
        let authorization = (!url.username().is_empty()).then(|| {
            let user = percent_decode(url.username());
            let pass = percent_decode(url.password().unwrap_or(""));
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
            format!("Basic {token}")
        });
        Some(ProxyHop {
            proxy,
            tunnel: origin.scheme == Scheme::Https,
            authorization,
        })
    }
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(u: &str) -> Origin {
        Origin::of(&url::Url::parse(u).unwrap()).unwrap()
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn http_goes_through_absolute_form_and_https_through_connect() {
        let c = ProxyConfig::from_lookup(env(&[
            ("HTTP_PROXY", "http://proxy:3128"),
            ("https_proxy", "proxy:3129"),
        ]))
        .unwrap();
        let h = c.hop_for(&origin("http://example.com/")).unwrap();
        assert!(!h.tunnel);
        assert_eq!(h.proxy.port, 3128);
        let s = c.hop_for(&origin("https://example.com/")).unwrap();
        assert!(s.tunnel);
        assert_eq!(s.proxy.port, 3129);
    }

    #[test]
    fn lowercase_variables_win_and_empty_means_unset() {
        let c = ProxyConfig::from_lookup(env(&[
            ("http_proxy", "http://lower:1"),
            ("HTTP_PROXY", "http://upper:2"),
            ("https_proxy", ""),
        ]))
        .unwrap();
        assert_eq!(c.http.unwrap().host_str(), Some("lower"));
        assert!(c.https.is_none());
    }

    #[test]
    fn no_proxy_matches_hosts_suffixes_ports_and_star() {
        let c = ProxyConfig {
            http: Some(parse_proxy_url("p:1").unwrap()),
            https: None,
            no_proxy: vec![
                "localhost".into(),
                ".internal.org".into(),
                "example.com".into(),
                "10.0.0.1:8080".into(),
                "0.0.1".into(),
            ],
            unusable: Vec::new(),
        };
        assert!(c.hop_for(&origin("http://localhost/")).is_none());
        assert!(c.hop_for(&origin("http://a.internal.org/")).is_none());
        assert!(c.hop_for(&origin("http://www.example.com/")).is_none());
        assert!(c.hop_for(&origin("http://notexample.com/")).is_some());
        assert!(c.hop_for(&origin("http://10.0.0.1:8080/")).is_none());
        assert!(c.hop_for(&origin("http://10.0.0.1:9090/")).is_some());
        // An address matches only itself, not as a suffix.
        assert!(c.hop_for(&origin("http://127.0.0.1/")).is_some());
        assert!(c.hop_for(&origin("http://[::1]/")).is_some());
        let all = ProxyConfig {
            no_proxy: vec!["*".into()],
            ..c
        };
        assert!(all.hop_for(&origin("http://anything/")).is_none());
    }

    #[test]
    fn credentials_become_proxy_authorization() {
        let c = ProxyConfig {
            http: Some(parse_proxy_url("http://us%40er:p%3Ass@proxy:3128").unwrap()),
            ..ProxyConfig::default()
        };
        let hop = c.hop_for(&origin("http://example.com/")).unwrap();
        // base64("us@er:p:ss")
        assert_eq!(hop.authorization.as_deref(), Some("Basic dXNAZXI6cDpzcw=="));
    }

    #[test]
    fn non_http_proxies_are_rejected() {
        assert!(parse_proxy_url("socks5://p:1").is_err());
    }

    /// A proxy variable haul cannot use makes only its own scheme unusable, and only for
    /// hosts that do not bypass it; its message names the variable, never the password.
    #[test]
    fn an_unusable_proxy_variable_fails_only_what_would_go_through_it() {
        let c = ProxyConfig::from_lookup(env(&[
            ("https_proxy", "socks5h://user:SECRET@p:1080"),
            ("HTTP_PROXY", "http://proxy:3128"),
            ("no_proxy", "inside.org"),
        ]))
        .unwrap();
        let why = c.unusable_for(&origin("https://example.com/")).unwrap();
        assert!(why.starts_with("https_proxy: "), "{why}");
        assert!(why.contains("socks5h://***@p:1080"), "{why}");
        assert!(!why.contains("SECRET"), "{why}");
        assert!(c.unusable_for(&origin("https://a.inside.org/")).is_none());
        assert!(c.unusable_for(&origin("http://example.com/")).is_none());
        assert!(c.hop_for(&origin("http://example.com/")).is_some());
    }

    #[test]
    fn proxy_errors_never_show_credentials() {
        for value in [
            "socks5://u:LEAK@127.0.0.1:1080",
            "http://u:LEAK@host:99999",
            "http://u:LEAK@[bad",
            "http://u:LEAK@",
            "u:LEAK@host:99999",
        ] {
            let e = parse_proxy_url(value).unwrap_err().to_string();
            assert!(!e.contains("LEAK"), "{value}: {e}");
            assert!(e.contains("***@"), "{value}: {e}");
        }
        assert_eq!(redact_userinfo("http://h:1/a@b"), "http://h:1/a@b");
    }
}
