//! Sessions of the operator page: a browser cannot send a bearer token on a plain navigation,
//! so the page trades one for a session cookie (HttpOnly, SameSite=Strict) once. A session
//! remembers who it is — an approver (may answer) or an alert source's token (may only read) —
//! and a per-session form token every answer must carry. Bounded per kind of holder: readers
//! share one pool and each approver has their own, and a full pool gives up its own oldest
//! session only — whoever holds an intake token could otherwise log in over and over and sign
//! every approver out.

use axum::http::{HeaderMap, header};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use themis_core::identity::Identity;

pub const COOKIE: &str = "themis_session";
/// How long a session lasts without a new login.
pub const TTL: Duration = Duration::from_secs(8 * 3600);
/// Reader sessions (intake tokens) kept at most, all readers together.
pub const MAX_READER_SESSIONS: usize = 1024;
/// Sessions kept at most per approver (browsers, devices): the approvers are few and named in
/// the configuration, so this bounds their sessions too.
pub const MAX_SESSIONS_PER_APPROVER: usize = 64;

#[derive(Debug, Clone)]
pub struct Session {
    /// `None`: a reader (an intake token), who may look but not answer.
    pub who: Option<Identity>,
    /// Every form that changes something carries it: a page of another site cannot.
    pub form_token: String,
    expires: Instant,
}

impl Session {
    /// Whose sessions this one counts against: its approver's, or all readers'.
    fn pool(&self) -> Option<&str> {
        self.who.as_ref().map(|w| w.name.as_str())
    }
}

#[derive(Default)]
pub struct Sessions {
    inner: Mutex<HashMap<String, Session>>,
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    if getrandom::fill(&mut bytes).is_err() {
        // No randomness, no session: an empty id matches nothing.
        return String::new();
    }
    hex::encode(bytes)
}

impl Sessions {
    /// A new session for `who`; its id goes into the cookie. `None` when there is no
    /// randomness to make one with.
    pub fn open(&self, who: Option<Identity>) -> Option<(String, Session)> {
        let id = random_hex();
        let form_token = random_hex();
        if id.is_empty() || form_token.is_empty() {
            return None;
        }
        let session = Session {
            who,
            form_token,
            expires: Instant::now() + TTL,
        };
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        let pool = session.pool();
        let cap = if pool.is_some() {
            MAX_SESSIONS_PER_APPROVER
        } else {
            MAX_READER_SESSIONS
        };
        let same_pool = |s: &Session| s.pool() == pool;
        while map.values().filter(|s| same_pool(s)).count() >= cap {
            let Some(oldest) = map
                .iter()
                .filter(|(_, s)| same_pool(s))
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            map.remove(&oldest);
        }
        map.insert(id.clone(), session.clone());
        Some((id, session))
    }

    /// The live session the request's cookie names, if any.
    pub fn get(&self, headers: &HeaderMap) -> Option<Session> {
        let id = cookie(headers)?;
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&id).filter(|s| s.expires > Instant::now()).cloned()
    }

    pub fn close(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers) {
            self.inner
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        }
    }
}

/// The session id of the `Cookie` header, if it carries ours.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|v| v.len() == 64 && v.chars().all(|c| c.is_ascii_hexdigit()))
}

/// The `Set-Cookie` value that starts a session (or, with an empty id, ends it). `Secure` when
/// the request reached the proxy in front of the host over HTTPS: the cookie then never
/// travels in clear. (On plain HTTP — loopback, a private network — a `Secure` cookie would
/// not be kept at all.)
pub fn set_cookie(id: &str, headers: &HeaderMap) -> String {
    let secure = if over_https(headers) { "; Secure" } else { "" };
    if id.is_empty() {
        format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{secure}")
    } else {
        format!(
            "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
            TTL.as_secs()
        )
    }
}

/// Whether a proxy says the request came in over HTTPS (`X-Forwarded-Proto`, `Forwarded`).
fn over_https(headers: &HeaderMap) -> bool {
    let says = |name: &str, https: fn(&str) -> bool| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(https)
    };
    says("x-forwarded-proto", |v| {
        v.split(',')
            .next()
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
    }) || says("forwarded", |v| {
        v.split([';', ',']).any(|pair| {
            pair.trim().split_once('=').is_some_and(|(k, v)| {
                k.eq_ignore_ascii_case("proto") && v.trim_matches('"').eq_ignore_ascii_case("https")
            })
        })
    })
}

/// A form posted from another site (a page elsewhere making the browser sign in or out here):
/// the browser says so in `Sec-Fetch-Site`, or its `Origin` names another host than the one
/// addressed. A client that sends neither (curl, a script) is not a browser's cross-site form.
pub fn cross_site(headers: &HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    // Every current browser sends it, relative to the page that made the request: the
    // answer that survives a proxy rewriting `Host`.
    if let Some(site) = text("sec-fetch-site") {
        return site.eq_ignore_ascii_case("cross-site");
    }
    let Some(origin) = text("origin") else {
        return false;
    };
    let origin_host = origin.split_once("://").map(|(_, rest)| rest);
    let addressed = [text("x-forwarded-host"), text("host")];
    match origin_host {
        Some(o) => !addressed
            .into_iter()
            .flatten()
            .any(|h| o.eq_ignore_ascii_case(h.split(',').next().unwrap_or(h).trim())),
        // `Origin: null`: a sandboxed frame or a redirect chain, never this page's own form.
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn a_session_is_found_by_its_cookie_only() {
        let sessions = Sessions::default();
        let (id, s) = sessions
            .open(Some(Identity::scenario("oncall")))
            .expect("session");
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {COOKIE}={id}")).expect("header"),
        );
        let found = sessions.get(&headers).expect("found");
        assert_eq!(found.form_token, s.form_token);
        let mut forged = HeaderMap::new();
        forged.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("{COOKIE}={}", "0".repeat(64))).expect("header"),
        );
        assert!(sessions.get(&forged).is_none());
        sessions.close(&headers);
        assert!(sessions.get(&headers).is_none());
    }

    #[test]
    fn sessions_stay_bounded() {
        let sessions = Sessions::default();
        for _ in 0..(MAX_READER_SESSIONS + 10) {
            sessions.open(None).expect("session");
        }
        for _ in 0..(MAX_SESSIONS_PER_APPROVER + 10) {
            sessions
                .open(Some(Identity::scenario("oncall")))
                .expect("session");
        }
        assert_eq!(
            sessions.inner.lock().expect("lock").len(),
            MAX_READER_SESSIONS + MAX_SESSIONS_PER_APPROVER
        );
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().expect("header"));
        }
        h
    }

    #[test]
    fn a_form_from_another_site_is_told_apart() {
        assert!(cross_site(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(!cross_site(&headers(&[
            ("sec-fetch-site", "same-origin"),
            ("origin", "https://themis.example.com"),
            ("host", "127.0.0.1:8080"),
        ])));
        assert!(cross_site(&headers(&[
            ("origin", "https://evil.example"),
            ("host", "127.0.0.1:8080"),
        ])));
        assert!(cross_site(&headers(&[("origin", "null"), ("host", "h:1")])));
        assert!(!cross_site(&headers(&[
            ("origin", "http://127.0.0.1:8080"),
            ("host", "127.0.0.1:8080"),
        ])));
        assert!(!cross_site(&headers(&[
            ("origin", "https://themis.example.com"),
            ("x-forwarded-host", "themis.example.com"),
            ("host", "10.0.0.5:8080"),
        ])));
        assert!(!cross_site(&headers(&[("host", "127.0.0.1:8080")])));
    }

    #[test]
    fn the_cookie_is_secure_behind_https() {
        assert!(!set_cookie(&"a".repeat(64), &HeaderMap::new()).contains("Secure"));
        for pairs in [
            &[("x-forwarded-proto", "https")][..],
            &[("forwarded", "for=1.2.3.4;proto=https;host=x")][..],
        ] {
            let c = set_cookie(&"a".repeat(64), &headers(pairs));
            assert!(c.ends_with("; Secure") && c.contains("HttpOnly"), "{c}");
        }
        assert!(!set_cookie("", &headers(&[("x-forwarded-proto", "http")])).contains("Secure"));
    }

    fn with_cookie(id: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("{COOKIE}={id}")).expect("header"),
        );
        headers
    }

    #[test]
    fn readers_and_other_approvers_never_sign_an_approver_out() {
        let sessions = Sessions::default();
        let (alice, _) = sessions
            .open(Some(Identity::scenario("alice")))
            .expect("session");
        for _ in 0..(MAX_READER_SESSIONS + 10) {
            sessions.open(None).expect("session");
        }
        for _ in 0..(MAX_SESSIONS_PER_APPROVER + 10) {
            sessions
                .open(Some(Identity::scenario("bob")))
                .expect("session");
        }
        let found = sessions.get(&with_cookie(&alice)).expect("alice still in");
        assert_eq!(found.who.map(|w| w.name).as_deref(), Some("alice"));
    }
}
