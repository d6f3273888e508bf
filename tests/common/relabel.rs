//! A log shipper's relabelling, read from a rendered Promtail config and applied to
//! journal entries as Promtail does: each journal field `F` is the label
//! `__journal_f` (lower case), the rules run in order (source labels joined by `;`,
//! the regex anchored at both ends, `$N` expanded, an empty result removes the
//! label, `keep` drops the entry unless the regex matches), and labels that still
//! start with `__` are not sent.

use regex::Regex;
use std::collections::BTreeMap;

pub struct Rule {
    sources: Vec<String>,
    regex: Regex,
    target: Option<String>,
    replacement: String,
    keep: bool,
}

/// The Promtail config the daemon renders for a stack that ships its journal with
/// Promtail (defaults otherwise).
pub fn rendered_promtail() -> String {
    analytics_stack::components::log_shipper::render_promtail(
        &analytics_stack::config::load_texts(&[(
            "shipper.toml",
            "[loki]\nenabled = true\n[log_shipper]\nenabled = true\nkind = \"promtail\"\n",
        )])
        .unwrap(),
    )
}

/// The labels the config's journal job gives every entry.
pub fn promtail_journal_labels(config_yaml: &str) -> BTreeMap<String, String> {
    let config: serde_yaml::Value =
        serde_yaml::from_str(config_yaml).expect("Promtail config is YAML");
    config["scrape_configs"][0]["journal"]["labels"]
        .as_mapping()
        .expect("journal labels")
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().unwrap().to_string(),
                v.as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The rules of the config's first scrape job.
pub fn promtail_rules(config_yaml: &str) -> Vec<Rule> {
    let config: serde_yaml::Value =
        serde_yaml::from_str(config_yaml).expect("Promtail config is YAML");
    let rules = config["scrape_configs"][0]["relabel_configs"]
        .as_sequence()
        .expect("relabel_configs");
    rules
        .iter()
        .map(|r| {
            let action = r["action"].as_str().unwrap_or("replace");
            assert!(action == "replace" || action == "keep", "{action}");
            Rule {
                sources: r["source_labels"]
                    .as_sequence()
                    .expect("source_labels")
                    .iter()
                    .map(|s| s.as_str().unwrap().to_string())
                    .collect(),
                regex: Regex::new(&format!("^(?:{})$", r["regex"].as_str().unwrap_or("(.*)")))
                    .unwrap(),
                target: r["target_label"].as_str().map(str::to_string),
                replacement: r["replacement"].as_str().unwrap_or("$1").to_string(),
                keep: action == "keep",
            }
        })
        .collect()
}

/// A journal entry (`journalctl -o json`) as Promtail's labels.
pub fn journal_labels(entry: &serde_json::Value) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = entry
        .as_object()
        .expect("an entry is an object")
        .iter()
        .filter_map(|(k, v)| {
            Some((
                format!("__journal_{}", k.to_lowercase()),
                v.as_str()?.to_string(),
            ))
        })
        .collect();
    // Promtail's own derived label.
    const KEYWORDS: [&str; 8] = [
        "emerg", "alert", "crit", "error", "warning", "notice", "info", "debug",
    ];
    if let Some(p) = labels
        .get("__journal_priority")
        .and_then(|p| p.parse::<usize>().ok())
    {
        if let Some(k) = KEYWORDS.get(p) {
            labels.insert("__journal_priority_keyword".into(), k.to_string());
        }
    }
    labels
}

/// The labels an entry is sent with, or None when the rules drop it.
pub fn apply(
    rules: &[Rule],
    mut labels: BTreeMap<String, String>,
) -> Option<BTreeMap<String, String>> {
    for rule in rules {
        let value = rule
            .sources
            .iter()
            .map(|s| labels.get(s).map_or("", String::as_str))
            .collect::<Vec<_>>()
            .join(";");
        let caps = rule.regex.captures(&value);
        if rule.keep {
            caps.as_ref()?;
            continue;
        }
        let (Some(caps), Some(target)) = (caps, &rule.target) else {
            continue;
        };
        let mut out = String::new();
        caps.expand(&rule.replacement, &mut out);
        if out.is_empty() {
            labels.remove(target);
        } else {
            labels.insert(target.clone(), out);
        }
    }
    labels.retain(|k, _| !k.starts_with("__"));
    Some(labels)
}
