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
    /// `match_metric_type`: counter, gauge or observer.
    metric_type: Option<String>,
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
            let (mut name, mut drop, mut labels, mut regex_type, mut metric_type) =
                (String::new(), false, Vec::new(), false, None);
            for line in lines.map(str::trim) {
                if let Some(v) = line.strip_prefix("name: ") {
                    name = unquote(v);
                } else if line == "action: drop" {
                    drop = true;
                } else if line == "match_type: regex" {
                    regex_type = true;
                } else if let Some(t) = line.strip_prefix("match_metric_type: ") {
                    assert!(["counter", "gauge", "observer"].contains(&t), "{t}");
                    metric_type = Some(t.to_string());
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
                metric_type,
            });
        }
        Mapping { rules }
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// What a name becomes, whatever its StatsD type.
    pub fn map(&self, statsd: &str) -> Outcome {
        self.map_typed(statsd, None)
    }

    /// What a name of a StatsD type (`c`, `g`, `ms`, `h`, `d`) becomes: rules limited
    /// to another type are passed over, as statsd_exporter does.
    pub fn map_as(&self, statsd: &str, statsd_type: &str) -> Outcome {
        let kind = match statsd_type {
            "c" => "counter",
            "g" => "gauge",
            "ms" | "h" | "d" => "observer",
            other => panic!("unknown StatsD type {other}"),
        };
        self.map_typed(statsd, Some(kind))
    }

    fn map_typed(&self, statsd: &str, kind: Option<&str>) -> Outcome {
        let last = self.rules.len().saturating_sub(1);
        for (i, rule) in self.rules.iter().enumerate() {
            if let (Some(want), Some(kind)) = (&rule.metric_type, kind) {
                if want != kind {
                    continue;
                }
            }
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

/// The value statsd_exporter exports for one StatsD sample: timers (`ms`) in seconds
/// ("prometheus presumes seconds, statsd millisecond", `pkg/line/line.go`).
pub fn exported_value(value: f64, statsd_type: &str) -> f64 {
    if statsd_type == "ms" {
        value / 1000.0
    } else {
        value
    }
}

/// One StatsD line a program sent: name, value and type (`c`, `g`, `ms`, `h`, `d`).
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    pub name: String,
    pub value: f64,
    pub kind: String,
}

/// The StatsD lines the real statsd_exporter received, from its own debug log
/// (`--log.level=debug`: `msg="Incoming line" proto=udp line=NAME:VALUE|TYPE`), in
/// the order received; lines that are not `NAME:VALUE|TYPE` are left out, as the
/// exporter's parser leaves them.
pub fn sent_lines(journal: &str) -> Vec<Sent> {
    journal
        .lines()
        .filter(|l| l.contains("msg=\"Incoming line\""))
        .filter_map(|l| {
            let raw = l.split(" line=").nth(1)?;
            let raw = raw.trim().trim_matches('"');
            let (name, rest) = raw.split_once(':')?;
            let (value, kind) = rest.split_once('|')?;
            let kind: String = kind
                .chars()
                .take_while(|c| c.is_ascii_lowercase())
                .collect();
            let name_ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            (name_ok && !kind.is_empty()).then_some(Sent {
                name: name.to_string(),
                value: value.parse().ok()?,
                kind,
            })
        })
        .collect()
}
