//! What a Kubernetes API request asks for, read from its method, path and query without
//! I/O: the verb, API group, resource, subresource, namespace and name (the shapes of the
//! API server's `RequestInfoFactory`), and the `Impersonate-*` headers a client sent.
//!
//! Both are read from untrusted bytes; neither panics on any input (property-tested below),
//! and neither decides anything: the access point's decision reads what they return.

/// What a request is about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestInfo {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`, or
    /// for non-resource paths the lowercased method.
    pub verb: String,
    pub api_group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// `/version`, `/api`, `/apis`, discovery documents...
    pub non_resource: bool,
}

impl RequestInfo {
    /// `pods`, `pods/exec`, `/version`: what the audit names.
    pub fn what(&self, path: &str) -> String {
        if self.non_resource {
            return path.to_string();
        }
        let mut s = String::new();
        if !self.api_group.is_empty() {
            s.push_str(&self.api_group);
            s.push('/');
        }
        s.push_str(&self.resource);
        if !self.subresource.is_empty() {
            s.push('/');
            s.push_str(&self.subresource);
        }
        s
    }

    /// A stream that lives until a lock ends it: watches, `logs -f`, exec, attach,
    /// port-forward.
    pub fn is_long_running(&self, query: &[(String, String)]) -> bool {
        self.verb == "watch"
            || matches!(
                self.subresource.as_str(),
                "exec" | "attach" | "portforward" | "proxy"
            )
            || (self.subresource == "log"
                && query
                    .iter()
                    .any(|(k, v)| k == "follow" && (v == "true" || v == "1")))
    }
}

/// Percent-decoding of one query component (`+` is a space); invalid escapes stay as they are.
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query's `key=value` pairs, decoded.
pub fn parse_query(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (unescape(k), unescape(v))
        })
        .collect()
}

/// Read `method` and `path` (without the access point's `/kube/NAME` prefix).
pub fn request_info(method: &str, path: &str, query: &[(String, String)]) -> RequestInfo {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let lower = method.to_ascii_lowercase();
    let non_resource = || RequestInfo {
        verb: lower.clone(),
        non_resource: true,
        ..Default::default()
    };
    // /api/v1/... or /apis/GROUP/VERSION/...
    let rest: &[&str] = match parts.as_slice() {
        ["api", _version, rest @ ..] if !rest.is_empty() => rest,
        ["apis", group, _version, rest @ ..] if !rest.is_empty() => {
            let mut info = resource_info(&lower, rest, query);
            info.api_group = (*group).to_string();
            return info;
        }
        _ => return non_resource(),
    };
    resource_info(&lower, rest, query)
}

fn resource_info(method: &str, rest: &[&str], query: &[(String, String)]) -> RequestInfo {
    let mut info = RequestInfo::default();
    // namespaces/NS/RESOURCE/... names a namespaced resource; namespaces/NS alone, the
    // namespace itself.
    let rest = match rest {
        ["namespaces", ns, more @ ..] if !more.is_empty() => {
            info.namespace = (*ns).to_string();
            more
        }
        other => other,
    };
    match rest {
        [resource] => info.resource = (*resource).to_string(),
        [resource, name] => {
            info.resource = (*resource).to_string();
            info.name = (*name).to_string();
        }
        [resource, name, sub, ..] => {
            info.resource = (*resource).to_string();
            info.name = (*name).to_string();
            info.subresource = (*sub).to_string();
        }
        [] => {}
    }
    if info.resource == "namespaces" && info.namespace.is_empty() && !info.name.is_empty() {
        info.namespace = info.name.clone();
    }
    let watch = query
        .iter()
        .any(|(k, v)| k == "watch" && (v == "1" || v == "true"));
    info.verb = match method {
        "get" | "head" if watch => "watch",
        "get" | "head" if info.name.is_empty() => "list",
        "get" | "head" => "get",
        "post" => "create",
        "put" => "update",
        "patch" => "patch",
        "delete" if info.name.is_empty() => "deletecollection",
        "delete" => "delete",
        other => other,
    }
    .to_string();
    info
}

/// The `Impersonate-*` headers a client sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientImpersonation {
    pub users: Vec<String>,
    pub groups: Vec<String>,
    /// Other impersonation headers (`Impersonate-Uid`, `Impersonate-Extra-*`): never passed on.
    pub other: Vec<String>,
}

/// Collect the impersonation headers (names compared case-insensitively, as HTTP does).
pub fn client_impersonation<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<ClientImpersonation, String> {
    let mut out = ClientImpersonation::default();
    for (name, value) in headers {
        let lname = name.to_ascii_lowercase();
        if !lname.starts_with("impersonate-") {
            continue;
        }
        let value = std::str::from_utf8(value)
            .map_err(|_| format!("header {name} is not UTF-8"))?
            .trim()
            .to_string();
        match lname.as_str() {
            "impersonate-user" => out.users.push(value),
            "impersonate-group" => out.groups.push(value),
            _ => out.other.push(name.to_string()),
        }
    }
    if out.users.iter().chain(&out.groups).any(|v| v.is_empty()) {
        return Err("an Impersonate-User or Impersonate-Group header is empty".into());
    }
    if out.users.len() > 1 {
        return Err("more than one Impersonate-User header".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn q(s: &str) -> Vec<(String, String)> {
        parse_query(Some(s))
    }

    #[test]
    fn verbs_resources_and_namespaces() {
        let i = request_info("GET", "/api/v1/namespaces/default/pods", &[]);
        assert_eq!(
            (i.verb.as_str(), i.resource.as_str(), i.namespace.as_str()),
            ("list", "pods", "default")
        );
        let i = request_info("GET", "/api/v1/namespaces/default/pods", &q("watch=1"));
        assert_eq!(i.verb, "watch");
        assert!(i.is_long_running(&[]));
        let i = request_info("DELETE", "/api/v1/namespaces/default/pods/web-0", &[]);
        assert_eq!((i.verb.as_str(), i.name.as_str()), ("delete", "web-0"));
        let i = request_info(
            "GET",
            "/api/v1/namespaces/default/pods/web-0/exec",
            &q("command=ls"),
        );
        assert_eq!(i.subresource, "exec");
        assert_eq!(i.what("/x"), "pods/exec");
        assert!(i.is_long_running(&[]));
        let i = request_info(
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            &[],
        );
        assert_eq!(i.verb, "create");
        assert_eq!(i.what("/x"), "authentication.k8s.io/selfsubjectreviews");
        let i = request_info("GET", "/api/v1/namespaces/kube-system", &[]);
        assert_eq!(
            (i.resource.as_str(), i.namespace.as_str(), i.verb.as_str()),
            ("namespaces", "kube-system", "get")
        );
        let i = request_info("GET", "/version", &[]);
        assert!(i.non_resource);
        let i = request_info("GET", "/api/v1", &[]);
        assert!(i.non_resource, "the resource list is discovery");
        let log = request_info("GET", "/api/v1/namespaces/a/pods/b/log", &q("follow=true"));
        assert!(log.is_long_running(&q("follow=true")));
        assert!(!log.is_long_running(&[]));
    }

    #[test]
    fn impersonation_headers() {
        let h = [
            ("Impersonate-User", &b"alice"[..]),
            ("impersonate-group", b"dev"),
            ("Impersonate-Group", b"ops"),
            ("Impersonate-Uid", b"1"),
            ("Accept", b"*/*"),
        ];
        let c = client_impersonation(h).unwrap();
        assert_eq!(c.users, ["alice"]);
        assert_eq!(c.groups, ["dev", "ops"]);
        assert_eq!(c.other, ["Impersonate-Uid"]);
        assert!(
            client_impersonation([("Impersonate-User", &b"a"[..]), ("Impersonate-User", b"b")])
                .is_err()
        );
        assert!(client_impersonation([("Impersonate-User", &b""[..])]).is_err());
        assert!(client_impersonation([("Impersonate-User", &b"\xff"[..])]).is_err());
    }

    #[test]
    fn unescape_edges() {
        assert_eq!(unescape("a%20b"), "a b");
        assert_eq!(unescape("%"), "%");
        assert_eq!(unescape("%2"), "%2");
        assert_eq!(unescape("%zz"), "%zz");
        assert_eq!(unescape("x+y"), "x y");
    }

    proptest! {
        /// `request_info_never_panics`: any method, path and query is read without panic.
        #[test]
        fn request_info_never_panics(m in "[A-Za-z]{0,8}", p in "(/[a-z0-9%._-]{0,12}){0,9}", qs in "[a-z=&%0-9+]{0,40}") {
            let query = parse_query(Some(&qs));
            let i = request_info(&m, &p, &query);
            let _ = i.what(&p);
            let _ = i.is_long_running(&query);
        }

        /// `unescape_never_panics`.
        #[test]
        fn unescape_never_panics(s in ".{0,40}") {
            let _ = unescape(&s);
        }
    }
}
