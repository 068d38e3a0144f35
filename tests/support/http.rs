//! A plain HTTP/1.1 client ([`http`]) and a Prometheus text-format parser
//! ([`Metrics`]), for the admin and metrics listeners.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// An HTTP response read by [`http`].
#[derive(Clone, Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header fields, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// The body (chunked encoding undone).
    pub body: String,
}

impl HttpResponse {
    /// The first header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics when it is not.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"))
    }
}

/// One HTTP/1.1 request over a plain `TcpStream` (`Connection: close`),
/// the response read to EOF within 10 s.
#[track_caller]
pub fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> HttpResponse {
    let timeout = Duration::from_secs(10);
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(timeout)).unwrap();
    s.set_write_timeout(Some(timeout)).unwrap();
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if matches!(method, "POST" | "PUT" | "DELETE") {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
        .unwrap_or_else(|e| panic!("write to {addr}: {e}"));
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("read from {addr} ({method} {target}): {e}"));
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in response: {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    assert!(
        version.starts_with("HTTP/1."),
        "status line {status_line:?}"
    );
    let status: u16 = parts
        .next()
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    if let Some((_, n)) = headers.iter().find(|(k, _)| k == "content-length") {
        let n: usize = n.parse().expect("numeric content-length");
        assert_eq!(body.len(), n, "body length vs content-length: {body:?}");
    }
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let Some((size, rest)) = s.split_once("\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16)
            .unwrap_or_else(|e| panic!("bad chunk size {size:?}: {e}"));
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
}

/// `GET target` with `Authorization: Bearer token`.
#[track_caller]
pub fn http_get_bearer(addr: SocketAddr, target: &str, token: &str) -> HttpResponse {
    let auth = format!("Bearer {token}");
    http(addr, "GET", target, &[("Authorization", &auth)])
}

/// One sample of a Prometheus text exposition.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Label pairs.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
    /// The line it came from.
    pub line: String,
}

/// A parsed `/metrics` page (text format 0.0.4).
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// Every sample line, in order.
    pub samples: Vec<Sample>,
    /// `# TYPE name kind`, in order.
    pub types: Vec<(String, String)>,
    /// `# HELP name ...` names, in order.
    pub helps: Vec<String>,
    /// The page.
    pub text: String,
    /// Problems found while parsing (a sample before its `# TYPE`,
    /// a malformed line...): empty for a well-formed page.
    pub problems: Vec<String>,
}

fn valid_metric_name(n: &str) -> bool {
    let mut c = n.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

fn parse_labels(s: &str) -> Option<BTreeMap<String, String>> {
    // s is what is between { and }.
    let mut out = BTreeMap::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] == b',' || b[i] == b' ') {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let start = i;
        while i < b.len() && b[i] != b'=' {
            i += 1;
        }
        let key = s.get(start..i)?.trim().to_owned();
        if !valid_metric_name(&key) || key.contains(':') {
            return None;
        }
        i += 1;
        if b.get(i) != Some(&b'"') {
            return None;
        }
        i += 1;
        let mut v = String::new();
        loop {
            match b.get(i)? {
                b'\\' => {
                    match b.get(i + 1)? {
                        b'n' => v.push('\n'),
                        b'\\' => v.push('\\'),
                        b'"' => v.push('"'),
                        _ => return None,
                    }
                    i += 2;
                }
                b'"' => {
                    i += 1;
                    break;
                }
                _ => {
                    let ch = s[i..].chars().next()?;
                    v.push(ch);
                    i += ch.len_utf8();
                }
            }
        }
        out.insert(key, v);
    }
    Some(out)
}

impl Metrics {
    /// Parses `text`, recording what breaks the format's rules in `problems`.
    pub fn parse(text: &str) -> Metrics {
        let mut m = Metrics {
            text: text.to_owned(),
            ..Metrics::default()
        };
        for line in text.lines() {
            if line.trim().is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut p = rest.split_whitespace();
                let (Some(n), Some(k), None) = (p.next(), p.next(), p.next()) else {
                    m.problems.push(format!("malformed TYPE line {line:?}"));
                    continue;
                };
                if m.types.iter().any(|(t, _)| t == n) {
                    m.problems.push(format!("second TYPE line for {n}"));
                }
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&k) {
                    m.problems.push(format!("unknown type in {line:?}"));
                }
                m.types.push((n.to_owned(), k.to_owned()));
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let n = rest.split_whitespace().next().unwrap_or_default();
                m.helps.push(n.to_owned());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (name_labels, value) = match line.rfind(' ') {
                Some(i) => (&line[..i], line[i + 1..].trim()),
                None => {
                    m.problems.push(format!("sample without value: {line:?}"));
                    continue;
                }
            };
            let (name, labels) = match name_labels.find('{') {
                Some(i) => {
                    let Some(inner) = name_labels[i + 1..].strip_suffix('}') else {
                        m.problems.push(format!("unclosed labels: {line:?}"));
                        continue;
                    };
                    let Some(l) = parse_labels(inner) else {
                        m.problems.push(format!("malformed labels: {line:?}"));
                        continue;
                    };
                    (&name_labels[..i], l)
                }
                None => (name_labels.trim(), BTreeMap::new()),
            };
            if !valid_metric_name(name) {
                m.problems.push(format!("invalid metric name in {line:?}"));
            }
            let Ok(value) = value.parse::<f64>() else {
                m.problems.push(format!("value not a number: {line:?}"));
                continue;
            };
            // The sample's family must have been typed before it: the
            // last TYPE line so far names it.
            match m.types.last() {
                Some((t, _)) if t == name => {}
                Some((t, k))
                    if (k == "histogram" || k == "summary")
                        && ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|sfx| name.strip_suffix(sfx) == Some(t.as_str())) => {}
                _ => m
                    .problems
                    .push(format!("sample {name} not preceded by its own # TYPE line")),
            }
            m.samples.push(Sample {
                name: name.to_owned(),
                labels,
                value,
                line: line.to_owned(),
            });
        }
        m
    }

    /// The type declared for `name`.
    pub fn type_of(&self, name: &str) -> Option<&str> {
        self.types
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, k)| k.as_str())
    }

    /// Samples named `name` whose labels include every pair of `labels`.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The value of the one sample `name{labels}` (labels exactly those given).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    /// Like [`Metrics::value`], panicking (with the page) when absent.
    #[track_caller]
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in /metrics:\n{}", self.text))
    }
}

/// `GET /metrics` from `addr`, checked (200, text/plain) and parsed.
#[track_caller]
pub fn scrape_metrics(addr: SocketAddr) -> Metrics {
    let r = http(addr, "GET", "/metrics", &[]);
    assert_eq!(r.status, 200, "GET /metrics: {r:?}");
    let ct = r.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("text/plain"), "content-type {ct:?}");
    Metrics::parse(&r.body)
}
