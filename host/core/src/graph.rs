//! The runbook graph: steps joined by branch labels. Pure: validation (every target exists, no
//! cycle, every step reachable) and the walk's next-step function.

use std::collections::BTreeMap;

/// Where a branch leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Step(usize),
    End,
}

/// The reserved target name that ends the runbook.
pub const END: &str = "end";

/// Steps in manifest order; the first is the entry. `edges[i]` maps step i's declared branch
/// labels to targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    pub ids: Vec<String>,
    pub edges: Vec<BTreeMap<String, Target>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("the runbook has no steps")]
    Empty,
    #[error("step id `{0}` is used twice")]
    DuplicateStep(String),
    #[error("step `{step}` branch `{label}` leads to `{target}`, which is not a step")]
    UnknownTarget {
        step: String,
        label: String,
        target: String,
    },
    #[error("the steps form a cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    #[error("step `{0}` cannot be reached from the first step")]
    Unreachable(String),
}

impl Graph {
    /// Build from `(step id, [(label, target name)])` in manifest order.
    pub fn build(steps: &[(String, Vec<(String, String)>)]) -> Result<Graph, GraphError> {
        if steps.is_empty() {
            return Err(GraphError::Empty);
        }
        let mut index = BTreeMap::new();
        for (i, (id, _)) in steps.iter().enumerate() {
            if index.insert(id.as_str(), i).is_some() {
                return Err(GraphError::DuplicateStep(id.clone()));
            }
        }
        let mut edges = Vec::with_capacity(steps.len());
        for (id, branches) in steps {
            let mut out = BTreeMap::new();
            for (label, target) in branches {
                let t = if target == END {
                    Target::End
                } else {
                    match index.get(target.as_str()) {
                        Some(&j) => Target::Step(j),
                        None => {
                            return Err(GraphError::UnknownTarget {
                                step: id.clone(),
                                label: label.clone(),
                                target: target.clone(),
                            });
                        }
                    }
                };
                out.insert(label.clone(), t);
            }
            edges.push(out);
        }
        let graph = Graph {
            ids: steps.iter().map(|(id, _)| id.clone()).collect(),
            edges,
        };
        graph.check_acyclic()?;
        graph.check_reachable()?;
        Ok(graph)
    }

    /// Where step `step` goes when its action takes `label`; `None` if the label is undeclared.
    pub fn next(&self, step: usize, label: &str) -> Option<&Target> {
        self.edges.get(step).and_then(|e| e.get(label))
    }

    /// Declared labels of a step, for error messages.
    pub fn labels(&self, step: usize) -> Vec<&str> {
        self.edges
            .get(step)
            .map(|e| e.keys().map(String::as_str).collect())
            .unwrap_or_default()
    }

    fn successors(&self, step: usize) -> impl Iterator<Item = usize> + '_ {
        self.edges[step].values().filter_map(|t| match t {
            Target::Step(j) => Some(*j),
            Target::End => None,
        })
    }

    fn check_acyclic(&self) -> Result<(), GraphError> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            Open,
            Done,
        }
        let mut marks = vec![Mark::New; self.ids.len()];
        for start in 0..self.ids.len() {
            if marks[start] != Mark::New {
                continue;
            }
            // Iterative DFS; `path` is the chain of open steps, for the error message.
            let mut stack: Vec<(usize, Vec<usize>)> =
                vec![(start, self.successors(start).collect())];
            marks[start] = Mark::Open;
            while let Some((node, pending)) = stack.last_mut() {
                let node = *node;
                match pending.pop() {
                    Some(next) if marks[next] == Mark::Open => {
                        let from = stack.iter().position(|(n, _)| *n == next).unwrap_or(0);
                        let mut cycle: Vec<String> = stack[from..]
                            .iter()
                            .map(|(n, _)| self.ids[*n].clone())
                            .collect();
                        cycle.push(self.ids[next].clone());
                        return Err(GraphError::Cycle(cycle));
                    }
                    Some(next) if marks[next] == Mark::New => {
                        marks[next] = Mark::Open;
                        stack.push((next, self.successors(next).collect()));
                    }
                    Some(_) => {}
                    None => {
                        marks[node] = Mark::Done;
                        stack.pop();
                    }
                }
            }
        }
        Ok(())
    }

    fn check_reachable(&self) -> Result<(), GraphError> {
        let mut seen = vec![false; self.ids.len()];
        let mut todo = vec![0];
        while let Some(n) = todo.pop() {
            if std::mem::replace(&mut seen[n], true) {
                continue;
            }
            todo.extend(self.successors(n));
        }
        match seen.iter().position(|s| !s) {
            Some(i) => Err(GraphError::Unreachable(self.ids[i].clone())),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(spec: &[(&str, &[(&str, &str)])]) -> Result<Graph, GraphError> {
        let steps: Vec<(String, Vec<(String, String)>)> = spec
            .iter()
            .map(|(id, e)| {
                (
                    id.to_string(),
                    e.iter()
                        .map(|(l, t)| (l.to_string(), t.to_string()))
                        .collect(),
                )
            })
            .collect();
        Graph::build(&steps)
    }

    #[test]
    fn walks_declared_branches() {
        let graph = g(&[
            ("a", &[("next", "b"), ("skip", "c")]),
            ("b", &[("next", "c")]),
            ("c", &[("next", "end")]),
        ])
        .expect("valid");
        assert_eq!(graph.next(0, "skip"), Some(&Target::Step(2)));
        assert_eq!(graph.next(2, "next"), Some(&Target::End));
        assert_eq!(graph.next(0, "bogus"), None);
    }

    #[test]
    fn refuses_cycles_naming_them() {
        let err = g(&[
            ("a", &[("next", "b")]),
            ("b", &[("next", "c")]),
            ("c", &[("again", "b"), ("next", "end")]),
        ])
        .expect_err("cycle");
        assert_eq!(
            err,
            GraphError::Cycle(vec!["b".into(), "c".into(), "b".into()])
        );
        assert!(matches!(
            g(&[("a", &[("next", "a")])]),
            Err(GraphError::Cycle(_))
        ));
    }

    #[test]
    fn refuses_missing_targets_duplicates_unreachable_and_empty() {
        assert!(matches!(
            g(&[("a", &[("next", "zz")])]),
            Err(GraphError::UnknownTarget { .. })
        ));
        assert!(matches!(
            g(&[("a", &[]), ("a", &[])]),
            Err(GraphError::DuplicateStep(_))
        ));
        assert_eq!(
            g(&[("a", &[("next", "end")]), ("b", &[])]),
            Err(GraphError::Unreachable("b".into()))
        );
        assert_eq!(g(&[]), Err(GraphError::Empty));
    }
}
