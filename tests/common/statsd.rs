//! What statsd_exporter makes of a StatsD name under the stack's mapping file, for
//! tests: the file read back in the shape the stack writes it (every rule a regular
//! expression, so they are tried in order), the first matching rule applied, `$N` in
//! its name and labels expanded — as statsd_exporter's `pkg/mapper` does for regex
//! rules.

use regex::Regex;

pub struct Mapping {
    rules: Vec<MappingRule>,
}

struct MappingRule {
    regex: Regex,
    name: String,
    drop: bool,
    labels: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A metric family and its labels.
    Family(String, Vec<(String, String)>),
    /// Dropped by a rule that names it (an untagged duplicate).
    Dropped,
    /// Dropped by the last rule: a name nobody mapped.
    CaughtByTheLastRule,
    /// No rule matched: statsd_exporter would keep it, dots as underscores.
    Unmatched,
}

impl Mapping {
    pub fn parse(yaml: &str) -> Mapping {
        let unquote = |v: &str| v.trim().trim_matches('\'').replace("''", "'");
        let mut rules = Vec::new();
        for block in yaml.split("  - match: ").skip(1) {
            let mut lines = block.lines();
            let pattern = unquote(lines.next().unwrap());
            let (mut name, mut drop, mut labels, mut regex_type) =
                (String::new(), false, Vec::new(), false);
            for line in lines.map(str::trim) {
                if let Some(v) = line.strip_prefix("name: ") {
                    name = unquote(v);
                } else if line == "action: drop" {
                    drop = true;
                } else if line == "match_type: regex" {
                    regex_type = true;
                } else if line == "labels:" {
                } else if let Some((k, v)) = line.split_once(": ") {
                    labels.push((k.to_string(), unquote(v)));
                }
            }
            assert!(regex_type, "{pattern}: every rule is a regular expression");
            rules.push(MappingRule {
                regex: Regex::new(&pattern).unwrap_or_else(|e| panic!("{pattern}: {e}")),
                name,
                drop,
                labels,
            });
        }
        Mapping { rules }
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn map(&self, statsd: &str) -> Outcome {
        let last = self.rules.len().saturating_sub(1);
        for (i, rule) in self.rules.iter().enumerate() {
            let Some(caps) = rule.regex.captures(statsd) else {
                continue;
            };
            if rule.drop {
                return if i == last {
                    Outcome::CaughtByTheLastRule
                } else {
                    Outcome::Dropped
                };
            }
            let expand = |t: &str| {
                let mut out = String::new();
                caps.expand(t, &mut out);
                out
            };
            return Outcome::Family(
                expand(&rule.name),
                rule.labels
                    .iter()
                    .map(|(k, v)| (k.clone(), expand(v)))
                    .collect(),
            );
        }
        Outcome::Unmatched
    }
}
