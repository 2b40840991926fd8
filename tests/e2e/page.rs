//! The operator page through the real service, read as a browser without JavaScript reads it:
//! sign in with a token, see the agents and what waits, answer with the form, see the timeline.
//! (tests/browser drives it in Chromium, live.)

use crate::serve::{INTAKE, LAG, ONCALL, ServeSpec, notification};
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};

/// A client that shows redirects instead of following them (the login's cookie is on the 303).
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

async fn sign_in(http: &reqwest::Client, url: &str, token: &str) -> (u16, Option<String>) {
    let r = http
        .post(format!("{url}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}"))
        .send()
        .await
        .expect("login");
    let cookie = r
        .headers()
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned);
    (r.status().as_u16(), cookie)
}

async fn page(http: &reqwest::Client, url: &str, cookie: &str) -> (u16, String) {
    let r = http
        .get(url)
        .header(COOKIE, cookie)
        .send()
        .await
        .expect("page");
    (r.status().as_u16(), r.text().await.expect("html"))
}

/// The value of the first `name="…" value="…"` input of the page.
fn input(html: &str, name: &str) -> String {
    let at = html
        .find(&format!("name=\"{name}\" value=\""))
        .unwrap_or_else(|| panic!("no {name} in {html}"));
    let rest = &html[at + name.len() + 15..];
    rest[..rest.find('"').expect("quote")].to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_reads_without_javascript_and_answers_as_the_signed_in_approver() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = ServeSpec::new(dir.path()).start();
    let http = browser();

    // Signed out: the sign-in form, nothing else; a wrong token is refused.
    let (status, html) = page(&http, &format!("{}/", s.url), "").await;
    assert_eq!(status, 200);
    assert!(
        html.contains("<label for=\"token\">Token</label>"),
        "{html}"
    );
    assert!(!html.contains("Agents"), "{html}");
    let (status, cookie) = sign_in(&http, &s.url, "not-a-token").await;
    assert_eq!((status, cookie), (401, None));

    // An alert whose label tries to be markup, and the proposal it leads to.
    let mut labels: Vec<(&str, &str)> = LAG.to_vec();
    labels.push(("owner", "<script>alert(1)</script>"));
    let (status, body) = s
        .post(
            "/api/v1/alerts/alertmanager",
            INTAKE,
            &notification(
                "firing",
                &[("KafkaConsumerLag", "fp-page", labels.as_slice())],
            ),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    s.incidents_until("the proposal", |l| {
        l.iter().any(|i| i["status"] == "pending-approval")
    })
    .await;

    // A reader (intake token) sees it all but has no buttons.
    let (status, reader) = sign_in(&http, &s.url, INTAKE).await;
    assert_eq!(status, 303);
    let reader = reader.expect("cookie");
    let (_, html) = page(&http, &format!("{}/", s.url), &reader).await;
    assert!(html.contains("Waiting for a human (1)"), "{html}");
    assert!(!html.contains("Approve exactly this plan"), "{html}");

    let (status, cookie) = sign_in(&http, &s.url, ONCALL).await;
    assert_eq!(status, 303);
    let cookie = cookie.expect("a session cookie");
    let (status, html) = page(&http, &format!("{}/", s.url), &cookie).await;
    assert_eq!(status, 200);
    for shown in [
        "Signed in as <strong>oncall</strong>",
        "<th scope=\"row\">kafka</th>",
        "data-agent=\"kafka\">idle</td>",
        "Waiting for a human (1)",
        "adjust-broker-gc for KafkaConsumerLag",
        "Approve exactly this plan",
        "Chain intact",
        "&lt;script&gt;alert(1)&lt;/script&gt;",
    ] {
        assert!(html.contains(shown), "{shown} not in:\n{html}");
    }
    assert!(!html.contains("<script>alert(1)"), "alert text is escaped");
    let digest = input(&html, "plan_digest");
    let form_token = input(&html, "form_token");
    let action = html
        .find("action=\"/ui/approvals/")
        .map(|at| &html[at + 8..])
        .and_then(|rest| rest.split('"').next())
        .expect("approve form")
        .to_owned();

    // No session, another session's form, a reader: refused, nothing done.
    let post = |cookie: &str, token: &str| {
        http.post(format!("{}{action}", s.url))
            .header(COOKIE, cookie.to_owned())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("plan_digest={digest}&form_token={token}"))
            .send()
    };
    assert_eq!(
        post("", &form_token).await.expect("post").status().as_u16(),
        401
    );
    assert_eq!(
        post(&cookie, &"0".repeat(64))
            .await
            .expect("post")
            .status()
            .as_u16(),
        403
    );
    let reader_token = {
        let (_, html) = page(&http, &format!("{}/", s.url), &reader).await;
        // A reader's page has no answer form; its session token is on the sign-out form only
        // if ever; answering with the approver's form token is still another session's.
        assert!(!html.contains("name=\"form_token\""), "{html}");
        form_token.clone()
    };
    assert_eq!(
        post(&reader, &reader_token)
            .await
            .expect("post")
            .status()
            .as_u16(),
        403
    );

    // The approver's answer runs the plan; the page shows the incident's timeline.
    let r = post(&cookie, &form_token).await.expect("post");
    assert_eq!(r.status().as_u16(), 303);
    let to = r
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .expect("location")
        .to_owned();
    assert!(to.starts_with("/incidents/inc-"), "{to}");
    let (status, html) = page(&http, &format!("{}{to}", s.url), &cookie).await;
    assert_eq!(status, 200);
    assert!(html.contains("approved by oncall"), "{html}");
    assert!(html.contains("run adjust-broker-gc"), "{html}");
    // Each line links to its audit record as the file holds it, hash and all (escaped).
    let first = s
        .audit()
        .into_iter()
        .find(|r| r["kind"] == "approval")
        .expect("approval");
    let hash = first["hash"].as_str().expect("hash");
    assert!(
        html.contains(&format!("<code>{}</code>", &hash[..12])),
        "{html}"
    );
    assert!(
        html.contains(&format!("&quot;hash&quot;: &quot;{hash}&quot;")),
        "{html}"
    );
    // Answered once: the same form again is a conflict.
    assert_eq!(
        post(&cookie, &form_token)
            .await
            .expect("post")
            .status()
            .as_u16(),
        409
    );

    // Another alert's plan, adjusted from the page to the read-only diagnosis.
    let (status, body) = s
        .post(
            "/api/v1/alerts/alertmanager",
            INTAKE,
            &notification("firing", &[("KafkaConsumerLag", "fp-page-2", LAG)]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    s.incidents_until("the second proposal", |l| {
        l.iter().any(|i| i["status"] == "pending-approval")
    })
    .await;
    let (_, html) = page(&http, &format!("{}/", s.url), &cookie).await;
    assert!(html.contains("Adjust the plan"), "{html}");
    assert!(
        html.contains("<option value=\"check-broker-health\">"),
        "{html}"
    );
    let adjust = html
        .find("action=\"/ui/approvals/")
        .map(|at| &html[at + 8..])
        .and_then(|rest| rest.split('"').next())
        .expect("a form")
        .replace("/approve", "/adjust");
    let form_token = input(&html, "form_token");
    let send = |params: &str| {
        http.post(format!("{}{adjust}", s.url))
            .header(COOKIE, cookie.clone())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "runbook=check-broker-health&params={params}&form_token={form_token}"
            ))
            .send()
    };
    let bad = send("not%20a%20pair").await.expect("post");
    assert_eq!(bad.status().as_u16(), 400);
    assert!(
        bad.text()
            .await
            .expect("html")
            .contains("is not name=value")
    );
    let r = send("").await.expect("post");
    assert_eq!(r.status().as_u16(), 303);
    let to = r
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .expect("location")
        .to_owned();
    let (_, html) = page(&http, &format!("{}{to}", s.url), &cookie).await;
    assert!(
        html.contains("adjusted by oncall to check-broker-health"),
        "{html}"
    );
}

/// Whoever holds an intake token can sign in as often as they like: the readers' sessions
/// they pile up push out only older readers' sessions, never an approver's.
#[tokio::test(flavor = "multi_thread")]
async fn readers_signing_in_over_and_over_never_sign_an_approver_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = ServeSpec::new(dir.path()).start();
    let http = browser();
    let (status, approver) = sign_in(&http, &s.url, ONCALL).await;
    assert_eq!(status, 303);
    let approver = approver.expect("a session cookie");
    let (status, first_reader) = sign_in(&http, &s.url, INTAKE).await;
    assert_eq!(status, 303);
    let first_reader = first_reader.expect("a session cookie");
    for _ in 0..1030 {
        assert_eq!(sign_in(&http, &s.url, INTAKE).await.0, 303);
    }
    let (status, html) = page(&http, &format!("{}/", s.url), &approver).await;
    assert_eq!(status, 200);
    assert!(
        html.contains("Signed in as <strong>oncall</strong>"),
        "the approver was signed out:\n{html}"
    );
    // The bound still holds: the oldest reader went.
    let (_, html) = page(&http, &format!("{}/", s.url), &first_reader).await;
    assert!(
        html.contains("<label for=\"token\">Token</label>"),
        "{html}"
    );
}
