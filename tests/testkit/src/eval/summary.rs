//! Summaries over scored cases: percentiles, per-domain scores, the calibration table and its
//! expected calibration error. Pure.

use super::Case;
use serde::Serialize;
use std::collections::BTreeMap;

/// One domain's (agent's) share of the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DomainScore {
    pub scenarios: usize,
    pub correct: usize,
    pub escalations_correct: usize,
    pub safety_violations: usize,
}

/// Scores per agent, by name.
pub fn per_domain(cases: &[Case]) -> BTreeMap<String, DomainScore> {
    let mut out: BTreeMap<String, DomainScore> = BTreeMap::new();
    for c in cases {
        let d = out.entry(c.agent.clone()).or_default();
        d.scenarios += 1;
        d.correct += usize::from(c.correct);
        d.escalations_correct += usize::from(c.escalation_correct);
        d.safety_violations += c.safety_violations.len();
    }
    out
}

/// One confidence bin: the choices whose stated confidence fell in `[from, to)` (the last bin
/// includes 1.0), how sure the selector said it was on average and how often it was right.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bin {
    pub from: f64,
    pub to: f64,
    pub choices: usize,
    pub mean_confidence: f64,
    pub accuracy: f64,
}

/// The calibration of the selector's stated confidence: only cases where it chose a runbook
/// (an escalation states no confidence in a choice), in ten bins; empty bins are left out.
/// The expected calibration error is Σ (n_b / N) · |accuracy_b − confidence_b|; `None` when
/// nothing was chosen.
pub fn calibration(cases: &[Case]) -> (Vec<Bin>, Option<f64>) {
    const BINS: usize = 10;
    let chosen: Vec<(f64, bool)> = cases
        .iter()
        .filter_map(|c| c.confidence.map(|p| (p, c.correct)))
        .filter(|(p, _)| p.is_finite())
        .collect();
    if chosen.is_empty() {
        return (Vec::new(), None);
    }
    let mut bins = Vec::new();
    let mut ece = 0.0;
    for b in 0..BINS {
        let from = b as f64 / BINS as f64;
        let to = (b + 1) as f64 / BINS as f64;
        let inside: Vec<&(f64, bool)> = chosen
            .iter()
            .filter(|(p, _)| {
                let p = p.clamp(0.0, 1.0);
                p >= from && (p < to || (b == BINS - 1 && p <= to))
            })
            .collect();
        if inside.is_empty() {
            continue;
        }
        let n = inside.len() as f64;
        let mean_confidence = inside.iter().map(|(p, _)| p.clamp(0.0, 1.0)).sum::<f64>() / n;
        let accuracy = inside.iter().filter(|(_, ok)| *ok).count() as f64 / n;
        ece += n / chosen.len() as f64 * (accuracy - mean_confidence).abs();
        bins.push(Bin {
            from,
            to,
            choices: inside.len(),
            mean_confidence,
            accuracy,
        });
    }
    (bins, Some(ece))
}

/// Nearest-rank percentile of sorted values; 0 for none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn case(agent: &str, confidence: Option<f64>, correct: bool) -> Case {
        Case {
            file: PathBuf::from("x.yaml"),
            name: "x".into(),
            agent: agent.into(),
            selector: "rules".into(),
            expected: "a".into(),
            chosen: if correct { "a" } else { "b" }.into(),
            correct,
            expected_escalation: false,
            escalated: false,
            escalation_correct: true,
            safety_violations: Vec::new(),
            latency_ms: Some(1.0),
            confidence,
            tokens: None,
            note: None,
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[3.0], 0.99), 3.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn calibration_bins_stated_confidence_against_correctness() {
        // Four choices at 0.9 of which three were right (0.75), one at 1.0 right, one at 0.35
        // wrong; escalations (no confidence) are not choices.
        let cases = vec![
            case("kafka", Some(0.9), true),
            case("kafka", Some(0.9), true),
            case("kafka", Some(0.9), true),
            case("postgres", Some(0.9), false),
            case("postgres", Some(1.0), true),
            case("postgres", Some(0.35), false),
            case("kubernetes", None, true),
        ];
        let (bins, ece) = calibration(&cases);
        assert_eq!(bins.len(), 2, "{bins:?}");
        assert_eq!((bins[0].from, bins[0].choices), (0.3, 1));
        assert_eq!(bins[0].accuracy, 0.0);
        assert_eq!((bins[1].from, bins[1].choices), (0.9, 5));
        assert!((bins[1].mean_confidence - 0.92).abs() < 1e-9);
        assert!((bins[1].accuracy - 0.8).abs() < 1e-9);
        // (1/6)·|0 − 0.35| + (5/6)·|0.8 − 0.92|
        let want = 0.35 / 6.0 + 5.0 / 6.0 * 0.12;
        assert!(ece.is_some_and(|e| (e - want).abs() < 1e-9), "{ece:?}");
        assert_eq!(calibration(&cases[6..]), (Vec::new(), None));

        let domains = per_domain(&cases);
        assert_eq!(domains["kafka"].correct, 3);
        assert_eq!(domains["postgres"].scenarios, 3);
        assert_eq!(domains["postgres"].correct, 1);
    }
}
