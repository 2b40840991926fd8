//! The operator page at `/`: each agent's state now (live over the event stream), what waits for
//! a human with the plan, the reasoning and Approve / Reject, the guard rails, recent incidents
//! with their timelines and fixes, and the audit chain's state. Server-rendered (maud escapes
//! every value: alert text is untrusted), readable without JavaScript; the little script only
//! keeps it live. A token is traded once for a session cookie (`session.rs`); answers go through
//! the same runtime calls and policy as the API's, as the session's approver.

use crate::app::{AppState, runtime_error, store_error};
use crate::error::ApiError;
use crate::session::{self, Session};
use crate::views::time;
use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use themis_agent::store::{Filter, Incident, IncidentStatus};

/// Incidents the front page lists (newest first).
const RECENT: usize = 50;
/// The most waiting plans the page lists (the API's list has the same bound).
const PENDING: usize = 200;
/// How long a verify of the audit chain is shown before it is run again.
const AUDIT_CHECK_EVERY: Duration = Duration::from_secs(30);

/// The page's own state: sessions and the last look at the audit chain.
#[derive(Default)]
pub struct PageState {
    pub sessions: session::Sessions,
    audit: Mutex<Option<(Instant, String, bool)>>,
    /// Held while the chain is checked: page loads that find the last look stale wait for the
    /// one check under way instead of each reading the whole audit.
    checking: tokio::sync::Mutex<()>,
}

/// The largest form the page posts: a token, an answer, an adjusted plan's parameters.
const MAX_FORM_BYTES: usize = 64 << 10;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(home))
        // Their forms are small; the session or the token is checked only once they are read.
        .route(
            "/login",
            post(login).layer(DefaultBodyLimit::max(MAX_FORM_BYTES)),
        )
        .route("/logout", post(logout))
        .route("/incidents/{id}", get(incident_page))
        .route(
            "/ui/approvals/{id}/{answer}",
            post(answer).layer(DefaultBodyLimit::max(MAX_FORM_BYTES)),
        )
}

const CSS: &str = "
:root { color-scheme: light dark; --fg: #111; --bg: #fff; --muted: #444; --line: #bbb; --warn: #8a1c00; --ok: #0b5d1e; }
@media (prefers-color-scheme: dark) { :root { --fg: #f2f2f2; --bg: #121212; --muted: #c8c8c8; --line: #555; --warn: #ffb59e; --ok: #9be3a8; } }
body { font: 16px/1.5 system-ui, sans-serif; color: var(--fg); background: var(--bg); margin: 0 auto; max-width: 72rem; padding: 0 1rem 3rem; }
header { display: flex; flex-wrap: wrap; gap: 1rem; align-items: center; justify-content: space-between; border-bottom: 1px solid var(--line); }
h1 a { color: inherit; text-decoration: none; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .35rem .5rem; border-bottom: 1px solid var(--line); vertical-align: top; }
code { font-size: .9em; word-break: break-all; }
.approval { border: 2px solid var(--warn); border-radius: .5rem; padding: .5rem 1rem; margin: 1rem 0; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .25rem 1rem; }
dt { font-weight: 600; color: var(--muted); }
dd { margin: 0; }
form.inline { display: inline-flex; flex-wrap: wrap; gap: .5rem; align-items: end; margin: .5rem 1rem .5rem 0; }
button { font: inherit; padding: .4rem .9rem; cursor: pointer; }
button.approve { background: var(--ok); color: var(--bg); border: none; }
button.reject { background: var(--warn); color: var(--bg); border: none; }
input { font: inherit; padding: .3rem; }
:focus-visible { outline: 3px solid #1a66ff; outline-offset: 2px; }
.error { color: var(--warn); font-weight: 600; }
#live li { color: var(--muted); }
";

/// Keeps the page live: every transition lands in the agent's state cell and the live list; a
/// new escalation or an agent back to idle reloads the page (unless someone is typing).
const SCRIPT: &str = "
(function () {
  if (!window.EventSource) return;
  var es = new EventSource('/api/v1/events');
  var live = document.getElementById('live');
  var timer;
  function soon() {
    clearTimeout(timer);
    timer = setTimeout(function () {
      var a = document.activeElement;
      if (a && a.tagName === 'INPUT' && a.value) { soon(); return; }
      location.reload();
    }, 700);
  }
  es.addEventListener('transition', function (e) {
    var d = JSON.parse(e.data);
    var to = d.data && d.data.to ? d.data.to.state : '?';
    var from = d.data && d.data.from ? d.data.from.state : '?';
    document.querySelectorAll('[data-agent]').forEach(function (cell) {
      if (cell.getAttribute('data-agent') === d.agent) cell.textContent = to;
    });
    if (live) {
      var li = document.createElement('li');
      li.textContent = d.at + '  ' + d.agent + ': ' + from + ' → ' + to;
      live.insertBefore(li, live.firstChild);
      while (live.children.length > 50) live.removeChild(live.lastChild);
    }
    if (to === 'idle') soon();
  });
  es.addEventListener('escalation', soon);
})();
";

fn layout(title: &str, session: Option<&Session>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Themis" }
                style { (PreEscaped(CSS)) }
            }
            body {
                header {
                    h1 { a href="/" { "Themis" } }
                    @if let Some(s) = session {
                        p {
                            "Signed in as "
                            @match &s.who {
                                Some(who) => { strong { (who.name) } " (approver)" },
                                None => { strong { "a reader" } " (an intake token: read only)" },
                            }
                        }
                        form method="post" action="/logout" {
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

fn html_response(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, markup).into_response();
    // The page is never framed (no clickjacking of its buttons) and loads nothing from elsewhere.
    let headers = response.headers_mut();
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn error_page(session: Option<&Session>, e: &ApiError) -> Response {
    let status = e.status;
    html_response(
        status,
        layout(
            "Refused",
            session,
            html! {
                h2 { "Refused" }
                p.error role="alert" { (e.to_string()) }
                p { a href="/" { "Back to the overview" } }
            },
        ),
    )
}

fn login_page(problem: Option<&str>) -> Markup {
    layout(
        "Sign in",
        None,
        html! {
            h2 { "Sign in" }
            @if let Some(p) = problem { p.error role="alert" { (p) } }
            p { "Paste an approver's token to read and answer, or an intake token to read. The token is exchanged for a session cookie and not kept by the page." }
            form method="post" action="/login" {
                label for="token" { "Token" }
                " "
                input id="token" name="token" type="password" autocomplete="current-password" required;
                " "
                button type="submit" { "Sign in" }
            }
        },
    )
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    if session::cross_site(&headers) {
        return html_response(
            StatusCode::FORBIDDEN,
            login_page(Some(
                "sign in from this page, not from a form on another site",
            )),
        );
    }
    let Ok(form) = serde_urlencoded::from_bytes::<LoginForm>(&body) else {
        return html_response(
            StatusCode::BAD_REQUEST,
            login_page(Some("the form needs a `token`")),
        );
    };
    let token = form.token.trim();
    let who = match state.config.approvers.identify(token) {
        Ok(who) => Some(who),
        Err(_) if state.config.intake_token_ok(token) => None,
        Err(_) => {
            return html_response(
                StatusCode::UNAUTHORIZED,
                login_page(Some(
                    "that token is neither an approver's nor an intake token",
                )),
            );
        }
    };
    let Some((id, _)) = state.page.sessions.open(who) else {
        return html_response(
            StatusCode::SERVICE_UNAVAILABLE,
            login_page(Some("no randomness to make a session with; try again")),
        );
    };
    let mut response = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&id, &headers)) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

async fn logout(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if session::cross_site(&headers) {
        return html_response(
            StatusCode::FORBIDDEN,
            login_page(Some(
                "sign out from this page, not from a form on another site",
            )),
        );
    }
    state.page.sessions.close(&headers);
    let mut response = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie("", &headers)) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

async fn home(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let Some(session) = state.page.sessions.get(&headers) else {
        return html_response(StatusCode::OK, login_page(None));
    };
    let store = state.runtime.store();
    let incidents = match store.recent(&Filter::default(), RECENT).await {
        Ok((newest, _)) => newest,
        Err(e) => return error_page(Some(&session), &store_error(e)),
    };
    let waiting = Filter {
        status: Some(IncidentStatus::PendingApproval),
        agent: None,
    };
    let waiting = match store.recent(&waiting, PENDING).await {
        Ok((newest, _)) => newest,
        Err(e) => return error_page(Some(&session), &store_error(e)),
    };
    let pending: Vec<&Incident> = waiting.iter().filter(|i| i.proposal.is_some()).collect();
    let book = state.runtime.guard_book().await;
    let (audit_line, audit_ok) = audit_status(&state).await;
    let agents = state.runtime.states();
    let body = html! {
        section aria-labelledby="agents" {
            h2 #agents { "Agents" }
            div.scroll {
                table {
                    thead { tr { th scope="col" { "Agent" } th scope="col" { "Domain" } th scope="col" { "Mode" } th scope="col" { "State now" } th scope="col" { "Since" } } }
                    tbody {
                        @for a in &agents {
                            tr {
                                th scope="row" { (a.name) }
                                td { (a.domain) }
                                td { @if a.dry_run { "dry run (changes recorded, not made)" } @else { "live" } }
                                td data-agent=(a.name) { (a.state.to_string()) }
                                td { (state.events.since(&a.name).map(|s| time(s.since)).unwrap_or_else(|| "the start".into())) }
                            }
                        }
                    }
                }
            }
            @for a in state.runtime.agents().iter().filter(|a| !a.unavailable.is_empty()) {
                p.error role="status" {
                    "Agent " (a.def.name) ": unavailable this start — "
                    @for (id, why) in &a.unavailable { code { (id) } " (" (why) ") " }
                }
            }
            h3 { "As it happens" }
            ol #live aria-live="polite" {}
            noscript { p { "Reload the page to see what changed." } }
        }
        section aria-labelledby="waiting" {
            h2 #waiting { "Waiting for a human (" (pending.len()) ")" }
            @if pending.is_empty() { p { "Nothing waits for an answer." } }
            @for i in &pending { (approval(i, &session, &catalog(&state, &i.agent))) }
        }
        section aria-labelledby="rails" {
            h2 #rails { "Guard rails" }
            @if book.breakers.is_empty() && book.busy.is_empty() {
                p { "No breaker is open and no target is busy." }
            }
            @if !book.breakers.is_empty() {
                h3 { "Open circuit breakers" }
                ul {
                    @for b in book.breakers.values() {
                        li { code { (b.target) } " · " (b.runbook) ": " (b.why) " (clear with " code { "themis guard clear" } ")" }
                    }
                }
            }
            @if !book.busy.is_empty() {
                h3 { "Busy targets" }
                ul {
                    @for (target, b) in &book.busy {
                        li { code { (target) } ": " (b.runbook) " for " a href={ "/incidents/" (b.incident) } { (b.incident) } }
                    }
                }
            }
        }
        section aria-labelledby="incidents" {
            h2 #incidents { "Recent incidents" }
            @if incidents.is_empty() { p { "None yet." } }
            @else {
                div.scroll {
                    table {
                        thead { tr { th scope="col" { "Incident" } th scope="col" { "Agent" } th scope="col" { "Alert" } th scope="col" { "Status" } th scope="col" { "Fix" } th scope="col" { "Opened" } } }
                        tbody {
                            @for i in incidents.iter().take(RECENT) {
                                tr {
                                    td { a href={ "/incidents/" (i.id) } { (i.id) } }
                                    td { (i.agent) }
                                    td { (i.alert.name) }
                                    td { (status(i)) }
                                    td { (fix(i)) }
                                    td { (time(i.opened_at)) }
                                }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="audit" {
            h2 #audit { "Audit" }
            p class=(if audit_ok { "" } else { "error" }) { (audit_line) }
        }
        script { (PreEscaped(SCRIPT)) }
    };
    html_response(StatusCode::OK, layout("Overview", Some(&session), body))
}

fn status(i: &Incident) -> String {
    serde_json::to_value(i.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn fix(i: &Incident) -> String {
    match &i.verification {
        None => "—".into(),
        Some(w) => match &w.verdict {
            Some(v) => format!("{} ({})", v.effect, w.runbook),
            None => format!("verifying {}", w.runbook),
        },
    }
}

/// The runbook ids an agent may run, for the adjust form.
fn catalog(state: &AppState, agent: &str) -> Vec<String> {
    state
        .runtime
        .agents()
        .iter()
        .find(|a| a.def.name == agent)
        .map(|a| a.catalog.keys().cloned().collect())
        .unwrap_or_default()
}

/// Another runbook or other parameters, for an incident that waits for a human: the adjusted
/// plan goes through the same policy, the adjuster its requester.
fn adjust_form(
    id: &str,
    current: Option<&str>,
    escalated_at: Option<std::time::SystemTime>,
    runbooks: &[String],
    session: &Session,
) -> Markup {
    html! {
        details {
            summary { "Adjust the plan" }
            form method="post" action={ "/ui/approvals/" (id) "/adjust" } {
                input type="hidden" name="form_token" value=(session.form_token);
                @if let Some(at) = escalated_at {
                    input type="hidden" name="escalated_at" value=(crate::views::time(at));
                }
                p {
                    label for={ "runbook-" (id) } { "Runbook" } " "
                    select id={ "runbook-" (id) } name="runbook" {
                        @for r in runbooks {
                            option value=(r) selected[Some(r.as_str()) == current] { (r) }
                        }
                    }
                }
                p {
                    label for={ "params-" (id) } { "Parameters, one " code { "name=value" } " per line" }
                    br;
                    textarea id={ "params-" (id) } name="params" rows="3" cols="40" {}
                }
                button type="submit" { "Propose the adjusted plan" }
            }
        }
    }
}

fn approval(i: &Incident, session: &Session, runbooks: &[String]) -> Markup {
    let Some(p) = &i.proposal else {
        return html! {};
    };
    let selection = i.selection.as_ref().map(|s| &s["output"]);
    let reasoning = selection
        .and_then(|s| s["reasoning"].as_str())
        .unwrap_or("");
    let confidence = selection.and_then(|s| s["confidence"].as_f64());
    let params = serde_json::to_string(&p.plan.params).unwrap_or_default();
    html! {
        article.approval aria-labelledby={ "apr-" (p.id) } {
            h3 id={ "apr-" (p.id) } { (p.plan.runbook_id) " for " (i.alert.name) }
            dl {
                dt { "Approval" } dd { code { (p.id) } }
                dt { "Incident" } dd { a href={ "/incidents/" (i.id) } { (i.id) } " (" (i.agent) " agent)" }
                dt { "Alert" } dd { (i.alert.name) " " code { (i.alert.labels.iter().map(|l| format!("{}={}", l.key, l.value)).collect::<Vec<_>>().join(", ")) } }
                dt { "Why a human" } dd { (i.reason.as_deref().unwrap_or("")) }
                @if !reasoning.is_empty() { dt { "Reasoning" } dd { (reasoning) } }
                @if let Some(c) = confidence { dt { "Confidence" } dd { (format!("{c:.2}")) } }
                dt { "Plan" } dd { (p.plan.runbook_id) " " (p.plan.runbook_version) " " code { (params) } }
                dt { "Alert fingerprint" } dd { code { (p.plan.target) } }
                dt { "Plan digest" } dd { code { (p.plan_digest) } }
                dt { "Requested by" } dd { (p.requested_by.to_string()) }
                dt { "Expires" } dd { (time(p.expires_at)) }
            }
            @if session.who.is_some() {
                form.inline method="post" action={ "/ui/approvals/" (p.id) "/approve" } {
                    input type="hidden" name="plan_digest" value=(p.plan_digest);
                    input type="hidden" name="form_token" value=(session.form_token);
                    button.approve type="submit" { "Approve exactly this plan" }
                }
                form.inline method="post" action={ "/ui/approvals/" (p.id) "/reject" } {
                    input type="hidden" name="form_token" value=(session.form_token);
                    label for={ "reason-" (p.id) } { "Reason" }
                    input id={ "reason-" (p.id) } name="reason" required;
                    button.reject type="submit" { "Reject" }
                }
                (adjust_form(&p.id, Some(&p.plan.runbook_id), None, runbooks, session))
            } @else {
                p { "Sign in with an approver's token to answer." }
            }
        }
    }
}

/// The chain as `themis audit verify` sees it, looked at most every 30 s, by one check at a time.
async fn audit_status(state: &Arc<AppState>) -> (String, bool) {
    let fresh = || {
        state
            .page
            .audit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .filter(|(at, ..)| at.elapsed() < AUDIT_CHECK_EVERY)
            .map(|(_, line, ok)| (line, ok))
    };
    if let Some(seen) = fresh() {
        return seen;
    }
    let _one_check = state.page.checking.lock().await;
    if let Some(seen) = fresh() {
        return seen;
    }
    let path = state.config.audit.clone();
    let checked = tokio::task::spawn_blocking(move || themis_agent::audit::verify::verify(&path))
        .await
        .ok();
    let (line, ok) = match checked {
        Some(Ok(Ok(intact))) => (
            format!(
                "Chain intact: {} records, head {}{} (checked {}).",
                intact.records,
                intact.last_hash.get(..16).unwrap_or(""),
                match &intact.last_checkpoint {
                    Some(cp) =>
                        format!("; last signed checkpoint at record {} ({})", cp.seq, cp.at),
                    None => "; no signed checkpoint".into(),
                },
                time(std::time::SystemTime::now())
            ),
            true,
        ),
        Some(Ok(Err(broken))) => (format!("THE CHAIN IS BROKEN: {broken}"), false),
        Some(Err(e)) => (format!("The audit could not be read: {e}"), false),
        None => ("The audit check did not finish.".into(), false),
    };
    *state.page.audit.lock().unwrap_or_else(|p| p.into_inner()) =
        Some((Instant::now(), line.clone(), ok));
    (line, ok)
}

async fn incident_page(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(session) = state.page.sessions.get(&headers) else {
        return Redirect::to("/").into_response();
    };
    if !(id.starts_with("inc-")
        && id.len() <= 64
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
    {
        return error_page(
            Some(&session),
            &ApiError::not_found(format!("`{id}` is not an incident id (inc-…)")),
        );
    }
    let incident = match state.runtime.store().get(&id).await {
        Ok(i) => i,
        Err(e) => return error_page(Some(&session), &store_error(e)),
    };
    // From the record that opened the incident on, as the API reads it: the files before it
    // are not read at every view.
    let (records, altered) = match crate::read::timeline(&state, &incident).await {
        Ok(found) => found,
        Err(e) => return error_page(Some(&session), &e),
    };
    let body = html! {
        h2 { "Incident " code { (incident.id) } }
        dl {
            dt { "Agent" } dd { (incident.agent) }
            dt { "Alert" } dd { (incident.alert.name) " " code { (incident.alert.labels.iter().map(|l| format!("{}={}", l.key, l.value)).collect::<Vec<_>>().join(", ")) } }
            dt { "Status" } dd { (status(&incident)) }
            @if let Some(r) = &incident.reason { dt { "Why" } dd { (r) } }
            dt { "Runbooks" } dd { (if incident.chain.is_empty() { "none".to_string() } else { incident.chain.join(" → ") }) }
            dt { "Fix" } dd {
                (fix(&incident))
                @if let Some(v) = incident.verification.as_ref().and_then(|w| w.verdict.as_ref()) { ": " (v.why) }
            }
            dt { "Opened" } dd { (time(incident.opened_at)) }
            dt { "As JSON" } dd { a href={ "/api/v1/incidents/" (incident.id) } { "the API's view" } }
        }
        @if incident.status.awaits_human() && incident.proposal.is_none() && session.who.is_some() {
            h3 { "Answer" }
            (adjust_form(&incident.id, None, incident.escalated_at, &catalog(&state, &incident.agent), &session))
        }
        @if altered > 0 {
            p.error role="alert" { (altered) " record(s) of this incident do not match their hash: run " code { "themis audit verify" } }
        }
        h3 { "Timeline" }
        ol {
            @for r in &records {
                li id={ "r" (r.seq) } {
                    a href={ "#r" (r.seq) } { "#" (r.seq) } " "
                    time datetime=(r.ts) { (r.ts) } " "
                    (themis_agent::audit::describe::line(r))
                    // The record itself, as the audit file holds it (hash-chained): what
                    // `themis audit verify` checks, readable without JavaScript.
                    details.record {
                        summary { "audit record " code { (r.hash.get(..12).unwrap_or(&r.hash)) } }
                        pre { (serde_json::to_string_pretty(r).unwrap_or_default()) }
                    }
                }
            }
        }
    };
    html_response(
        StatusCode::OK,
        layout(&format!("Incident {id}"), Some(&session), body),
    )
}

#[derive(Deserialize)]
struct ApproveForm {
    plan_digest: String,
    form_token: String,
}

#[derive(Deserialize)]
struct RejectForm {
    reason: String,
    form_token: String,
}

#[derive(Deserialize)]
struct AdjustForm {
    runbook: String,
    #[serde(default)]
    params: String,
    /// The escalation the form was shown for (an incident with no plan waiting).
    #[serde(default)]
    escalated_at: Option<String>,
    form_token: String,
}

impl FormToken for AdjustForm {
    fn form_token(&self) -> &str {
        &self.form_token
    }
}

/// `name=value` lines; a line without `=` is refused, naming it.
fn param_lines(text: &str) -> Result<std::collections::BTreeMap<String, String>, ApiError> {
    let mut params = std::collections::BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(ApiError::bad_request(
                "params",
                format!("line {}: `{line}` is not name=value", n + 1),
            ));
        };
        params.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    Ok(params)
}

/// The session's approver, if the form carries the session's token; else the refusal page.
fn answerer(
    state: &AppState,
    headers: &HeaderMap,
    form_token: &str,
) -> Result<(Session, themis_core::identity::Identity), Box<Response>> {
    let Some(session) = state.page.sessions.get(headers) else {
        return Err(Box::new(error_page(
            None,
            &ApiError::unauthorized("sign in on the page first (no session)"),
        )));
    };
    if session.form_token != form_token {
        return Err(Box::new(error_page(
            Some(&session),
            &ApiError::forbidden("the form does not belong to this session; reload the page"),
        )));
    }
    match session.who.clone() {
        Some(who) => Ok((session, who)),
        None => Err(Box::new(error_page(
            Some(&session),
            &ApiError::forbidden("an intake token may read, not answer: sign in as an approver"),
        ))),
    }
}

/// Parse an answer's form, check its session and form token, and run `answer` as the session's
/// approver; on to the incident, or the refusal page.
async fn answer_with<F, Fut>(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
    answer: impl FnOnce(F, themis_core::identity::Identity) -> Fut,
) -> Response
where
    F: serde::de::DeserializeOwned + FormToken,
    Fut: std::future::Future<Output = Result<Incident, ApiError>>,
{
    let Ok(form) = serde_urlencoded::from_bytes::<F>(body) else {
        return error_page(
            None,
            &ApiError::bad_request("form", "the form is missing a field; reload the page"),
        );
    };
    let (session, who) = match answerer(state, headers, form.form_token()) {
        Ok(ok) => ok,
        Err(refused) => return *refused,
    };
    match answer(form, who).await {
        Ok(incident) => Redirect::to(&format!("/incidents/{}", incident.id)).into_response(),
        Err(e) => error_page(Some(&session), &e),
    }
}

trait FormToken {
    fn form_token(&self) -> &str;
}

impl FormToken for ApproveForm {
    fn form_token(&self) -> &str {
        &self.form_token
    }
}

impl FormToken for RejectForm {
    fn form_token(&self) -> &str {
        &self.form_token
    }
}

/// One route for the three answers (`/ui/approvals/{id}/approve|reject|adjust`): each through
/// [`answer_with`], as the session's approver, by the same runtime calls as the API's.
async fn answer(
    State(state): State<Arc<AppState>>,
    Path((id, verb)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let runtime = state.runtime.clone();
    match verb.as_str() {
        "approve" => {
            answer_with(
                &state,
                &headers,
                &body,
                |form: ApproveForm, who| async move {
                    runtime
                        .approve(&id, who, Some(form.plan_digest))
                        .await
                        .map_err(runtime_error)
                },
            )
            .await
        }
        "reject" => {
            answer_with(
                &state,
                &headers,
                &body,
                |form: RejectForm, who| async move {
                    let reason = form.reason.trim();
                    if reason.is_empty() {
                        return Err(ApiError::bad_request(
                            "reason",
                            "say why you reject the plan",
                        ));
                    }
                    runtime
                        .reject(&id, who, reason)
                        .await
                        .map_err(runtime_error)
                },
            )
            .await
        }
        "adjust" => {
            answer_with(
                &state,
                &headers,
                &body,
                |form: AdjustForm, who| async move {
                    let params = param_lines(&form.params)?;
                    runtime
                        .adjust_seen(
                            &id,
                            who,
                            form.runbook.trim(),
                            &params,
                            form.escalated_at.filter(|s| !s.is_empty()),
                        )
                        .await
                        .map_err(runtime_error)
                },
            )
            .await
        }
        other => error_page(
            state.page.sessions.get(&headers).as_ref(),
            &ApiError::not_found(format!("no answer `{other}`: approve, reject or adjust")),
        ),
    }
}
