//! Request side: methods, request-head serialisation, origins and redirect targets.
//! Owns what goes on the wire before the response; does not own connection management,
//! proxies' CONNECT tunnels or request bodies (there are none).

use std::fmt;

use super::HttpError;

/// The request methods a download client needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    Get,
    Head,
}

impl Method {
    /// The method as it appears on the request line.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// URL scheme of an [`Origin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    fn of(url: &url::Url) -> Result<Scheme, HttpError> {
        match url.scheme() {
            "http" => Ok(Scheme::Http),
            "https" => Ok(Scheme::Https),
            other => Err(HttpError::UnsupportedUrl(format!(
                "{url}: scheme {other:?} is not http or https"
            ))),
        }
    }
}

/// Origin identity used for connection reuse, breakers and credential stripping.
/// `host` is lowercased; IPv6 literals keep their brackets (`[::1]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
}

impl Origin {
    /// The origin of an http/https URL, with the default port filled in.
    pub fn of(url: &url::Url) -> Result<Origin, HttpError> {
        let scheme = Scheme::of(url)?;
        let host = host_of(url)?;
        let port = url.port().unwrap_or(scheme.default_port());
        Ok(Origin {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme.as_str(), self.host, self.port)
    }
}

fn host_of(url: &url::Url) -> Result<&str, HttpError> {
    match url.host_str() {
        Some(h) if !h.is_empty() => Ok(h),
        _ => Err(HttpError::UnsupportedUrl(format!("{url}: no host"))),
    }
}

/// RFC 9110 token character.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn check_header(name: &str, value: &str) -> Result<(), HttpError> {
    let name_ok = !name.is_empty() && name.bytes().all(is_tchar);
    let value_ok = !value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0));
    if name_ok && value_ok {
        Ok(())
    } else {
        Err(HttpError::InvalidHeaderValue {
            name: name.to_string(),
        })
    }
}

/// Write a request head: `METHOD <target> HTTP/1.1\r\nHost: <host[:port]>\r\n`, then
/// `headers` in the given order, then `\r\n`.
///
/// The target is path and query (origin form, `/` if the path is empty), or, when
/// `absolute_form` is set (plain-HTTP proxies), the full URL without fragment and without
/// user info. `Host` omits the port when it is the scheme default; IPv6 hosts are
/// bracketed. The fragment is never sent. Header names must be tokens and values must not
/// contain CR, LF or NUL, else [`HttpError::InvalidHeaderValue`]; nothing is appended to
/// `out` on error. No header other than `Host` is added, so callers must not pass `Host`.
pub fn write_request(
    method: Method,
    url: &url::Url,
    headers: &[(String, String)],
    absolute_form: bool,
    out: &mut Vec<u8>,
) -> Result<(), HttpError> {
    let scheme = Scheme::of(url)?;
    let host = host_of(url)?;
    for (name, value) in headers {
        check_header(name, value)?;
    }

    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    if absolute_form {
        let mut absolute = url.clone();
        absolute.set_fragment(None);
        // Both only fail for URLs that cannot have credentials; http(s) URLs can.
        let _ = absolute.set_username("");
        let _ = absolute.set_password(None);
        out.extend_from_slice(absolute.as_str().as_bytes());
    } else {
        let path = url.path();
        out.extend_from_slice(if path.is_empty() { "/" } else { path }.as_bytes());
        if let Some(query) = url.query() {
            out.push(b'?');
            out.extend_from_slice(query.as_bytes());
        }
    }
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    match url.port() {
        Some(port) if port != scheme.default_port() => {
            out.extend_from_slice(format!(":{port}").as_bytes());
        }
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// Resolve a redirect `Location` against the request URL (relative references,
/// scheme-relative `//host/x`, absolute). Only http/https results with a host are allowed.
pub fn resolve_location(base: &url::Url, location: &str) -> Result<url::Url, HttpError> {
    let resolved = base.join(location.trim()).map_err(|e| {
        HttpError::UnsupportedUrl(format!(
            "redirect Location {location:?} against {base}: {e}"
        ))
    })?;
    Scheme::of(&resolved)?;
    host_of(&resolved)?;
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> url::Url {
        url::Url::parse(s).unwrap()
    }

    fn request(method: Method, u: &str, headers: &[(&str, &str)], absolute: bool) -> String {
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        let mut out = Vec::new();
        write_request(method, &url(u), &headers, absolute, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn request_omits_default_port_and_keeps_header_order() {
        assert_eq!(
            request(
                Method::Get,
                "http://example.com:80/a/b.zip",
                &[("Range", "bytes=0-"), ("Accept", "*/*")],
                false
            ),
            "GET /a/b.zip HTTP/1.1\r\nHost: example.com\r\nRange: bytes=0-\r\nAccept: */*\r\n\r\n"
        );
        assert_eq!(
            request(Method::Head, "https://example.com:443", &[], false),
            "HEAD / HTTP/1.1\r\nHost: example.com\r\n\r\n"
        );
    }

    #[test]
    fn request_keeps_non_default_port() {
        assert_eq!(
            request(Method::Get, "http://127.0.0.1:8080/x", &[], false),
            "GET /x HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
        );
        assert_eq!(
            request(Method::Get, "https://example.com:80/", &[], false),
            "GET / HTTP/1.1\r\nHost: example.com:80\r\n\r\n"
        );
    }

    #[test]
    fn request_brackets_ipv6_hosts() {
        assert_eq!(
            request(Method::Get, "http://[::1]:9000/f", &[], false),
            "GET /f HTTP/1.1\r\nHost: [::1]:9000\r\n\r\n"
        );
    }

    #[test]
    fn request_keeps_query_and_drops_fragment() {
        assert_eq!(
            request(Method::Get, "http://h/p?x=1&y=%20#frag", &[], false),
            "GET /p?x=1&y=%20 HTTP/1.1\r\nHost: h\r\n\r\n"
        );
    }

    #[test]
    fn request_absolute_form_for_proxies() {
        assert_eq!(
            request(Method::Get, "http://user:pw@h:81/p?q#frag", &[], true),
            "GET http://h:81/p?q HTTP/1.1\r\nHost: h:81\r\n\r\n"
        );
    }

    #[test]
    fn request_rejects_header_injection() {
        let u = url("http://h/");
        for (name, value) in [
            ("X-Evil", "a\r\nInjected: yes"),
            ("X-Evil", "a\nb"),
            ("X-Evil", "a\rb"),
            ("X-Evil", "a\0b"),
            ("Bad Name", "v"),
            ("Bad:Name", "v"),
            ("", "v"),
            ("X\r\nY", "v"),
        ] {
            let mut out = b"untouched".to_vec();
            let err = write_request(
                Method::Get,
                &u,
                &[(name.to_string(), value.to_string())],
                false,
                &mut out,
            )
            .unwrap_err();
            assert_eq!(
                err,
                HttpError::InvalidHeaderValue {
                    name: name.to_string()
                }
            );
            assert_eq!(out, b"untouched", "nothing written on error");
        }
    }

    #[test]
    fn request_rejects_non_http_urls() {
        let mut out = Vec::new();
        assert!(matches!(
            write_request(Method::Get, &url("ftp://h/x"), &[], false, &mut out),
            Err(HttpError::UnsupportedUrl(_))
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn origin_fills_default_port_and_lowercases() {
        let o = Origin::of(&url("HTTPS://Example.COM/x")).unwrap();
        assert_eq!(
            o,
            Origin {
                scheme: Scheme::Https,
                host: "example.com".into(),
                port: 443
            }
        );
        assert_eq!(o.to_string(), "https://example.com:443");
        assert_eq!(
            Origin::of(&url("http://[::1]:8080/")).unwrap().to_string(),
            "http://[::1]:8080"
        );
        assert_eq!(
            Origin::of(&url("http://h/")).unwrap(),
            Origin::of(&url("http://h:80/other")).unwrap()
        );
        assert!(Origin::of(&url("file:///etc/passwd")).is_err());
    }

    #[test]
    fn location_relative_path() {
        let base = url("http://h/a/b/c.zip?x=1");
        assert_eq!(
            resolve_location(&base, "d.zip").unwrap().as_str(),
            "http://h/a/b/d.zip"
        );
        assert_eq!(
            resolve_location(&base, "/root.zip").unwrap().as_str(),
            "http://h/root.zip"
        );
        assert_eq!(
            resolve_location(&base, "../up.zip").unwrap().as_str(),
            "http://h/a/up.zip"
        );
        assert_eq!(
            resolve_location(&base, "?y=2").unwrap().as_str(),
            "http://h/a/b/c.zip?y=2"
        );
    }

    #[test]
    fn location_scheme_relative_and_absolute() {
        let base = url("https://h/a");
        assert_eq!(
            resolve_location(&base, "//cdn.example/x").unwrap().as_str(),
            "https://cdn.example/x"
        );
        assert_eq!(
            resolve_location(&base, "http://other:8080/y")
                .unwrap()
                .as_str(),
            "http://other:8080/y"
        );
    }

    #[test]
    fn location_to_other_schemes_is_rejected() {
        let base = url("https://h/a");
        for bad in [
            "ftp://h/x",
            "file:///etc/passwd",
            "javascript:alert(1)",
            "http://",
        ] {
            assert!(
                matches!(
                    resolve_location(&base, bad),
                    Err(HttpError::UnsupportedUrl(_))
                ),
                "{bad:?}"
            );
        }
    }
}
