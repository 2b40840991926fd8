//! Conditions over facts and `{fact}` templates, for routes, rules and follow-ups. Pure.
//!
//! A condition is `"<op> <value>"` with op one of `==`, `!=`, `=~`, `!~`, `>=`, `<=`, `>`, `<`,
//! or a bare value meaning `==`. Numeric ops compare as numbers and fail on non-numbers; `=~` and
//! `!~` match a regular expression against the whole value, as Alertmanager's matchers do (so a
//! rule can name a family of alerts: `alert: "=~ KafkaLag(IsTooHigh|KeepsIncreasing)"`). A
//! missing fact fails every condition.

use std::collections::BTreeMap;

pub type Facts = BTreeMap<String, String>;

/// Does every `fact: condition` hold?
pub fn all_hold(when: &BTreeMap<String, String>, facts: &Facts) -> bool {
    when.iter()
        .all(|(fact, cond)| facts.get(fact).is_some_and(|have| holds(cond, have)))
}

/// Does `have` satisfy `condition`?
pub fn holds(condition: &str, have: &str) -> bool {
    let condition = condition.trim();
    for (op, wanted) in [("=~", true), ("!~", false)] {
        if let Some(pattern) = condition.strip_prefix(op) {
            // A pattern that does not compile matches nothing; load-time `check` refuses it.
            return anchored(pattern.trim()).is_ok_and(|re| re.is_match(have) == wanted);
        }
    }
    for op in ["==", "!=", ">=", "<=", ">", "<"] {
        if let Some(want) = condition.strip_prefix(op) {
            let want = want.trim();
            return match op {
                "==" => have == want,
                "!=" => have != want,
                _ => match (have.trim().parse::<f64>(), want.parse::<f64>()) {
                    (Ok(h), Ok(w)) => match op {
                        ">=" => h >= w,
                        "<=" => h <= w,
                        ">" => h > w,
                        _ => h < w,
                    },
                    _ => false,
                },
            };
        }
    }
    have == condition
}

/// Is `condition` well-formed (for load-time validation)?
pub fn check(condition: &str) -> Result<(), String> {
    let c = condition.trim();
    for op in ["=~", "!~"] {
        if let Some(pattern) = c.strip_prefix(op) {
            return anchored(pattern.trim())
                .map(|_| ())
                .map_err(|e| format!("`{}` is not a regular expression: {e}", pattern.trim()));
        }
    }
    for op in [">=", "<=", ">", "<"] {
        if let Some(want) = c.strip_prefix(op) {
            return want.trim().parse::<f64>().map(|_| ()).map_err(|_| {
                format!(
                    "`{condition}` compares with a number, but `{}` is not one",
                    want.trim()
                )
            });
        }
    }
    Ok(())
}

fn anchored(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(1 << 20)
        .build()
}

/// Replace every `{fact}` in `template` by its value; a missing fact is an error naming it.
/// Braces around anything that cannot name a fact (a PromQL label matcher such as
/// `{job="kafka"}`) are text, kept as written.
pub fn render(template: &str, facts: &Facts) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else {
            return Err(format!("`{template}` has an unclosed `{{`"));
        };
        let key = after[..end].trim();
        if !names_a_fact(key) {
            out.push('{');
            rest = after;
            continue;
        }
        match facts.get(key) {
            Some(v) => out.push_str(v),
            None => return Err(format!("`{key}` is not known for this alert")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `labels.group`, `probe.lag-and-cpu.topic`: what a fact's name can look like.
fn names_a_fact(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators() {
        assert!(holds(">= 0.9", "0.95"));
        assert!(!holds(">= 0.9", "0.85"));
        assert!(holds("< 10", "9.5"));
        assert!(holds("== Stable", "Stable"));
        assert!(holds("Stable", "Stable"));
        assert!(holds("!= Dead", "Stable"));
        assert!(!holds("> 1", "lots"));
        assert!(holds(
            "=~ KafkaLag(IsTooHigh|KeepsIncreasing)",
            "KafkaLagIsTooHigh"
        ));
        assert!(
            !holds("=~ KafkaLag", "KafkaLagIsTooHigh"),
            "anchored, like Alertmanager"
        );
        assert!(holds("!~ kube-.*", "shop"));
        assert!(!holds("!~ kube-.*", "kube-system"));
        assert!(check("=~ (").is_err());
        assert!(!holds("=~ (", "("), "a broken pattern matches nothing");
        assert!(check(">= high").is_err());
        assert!(check("== high").is_ok());
    }

    #[test]
    fn missing_facts_fail_conditions_and_name_themselves_in_templates() {
        let facts = Facts::from([("labels.group".to_string(), "orders".to_string())]);
        let when = BTreeMap::from([("labels.team".to_string(), "data".to_string())]);
        assert!(!all_hold(&when, &facts));
        assert_eq!(render("{labels.group}-x", &facts), Ok("orders-x".into()));
        assert_eq!(
            render("{labels.nope}", &facts),
            Err("`labels.nope` is not known for this alert".into())
        );
        // A PromQL matcher is text; a fact inside the same template is still filled.
        assert_eq!(
            render(
                r#"max(rate(x{job="kafka",group="{labels.group}"}[5m]))"#,
                &facts
            ),
            Ok(r#"max(rate(x{job="kafka",group="orders"}[5m]))"#.into())
        );
        assert_eq!(render("up{}", &facts), Ok("up{}".into()));
    }
}
