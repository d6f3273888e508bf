//! The landing page at `/`: the stack's services, their health and their links.

use crate::components::nginx;
use crate::config::Config;
use crate::stack::StatusReport;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Who the page is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// A browser on the host itself: versions, units, why a probe failed.
    Operator,
    /// Everyone else: the applications and whether each is healthy.
    Public,
}

pub fn render(config: &Config, status: &StatusReport, view: View) -> String {
    let mut rows = String::new();
    for c in &status.components {
        let (class, word) = if c.healthy {
            ("ok", "healthy".to_string())
        } else if view == View::Public {
            ("bad", "unhealthy".to_string())
        } else {
            // Why: each failing probe with what it saw.
            let why: Vec<String> = c
                .probes
                .iter()
                .filter(|p| !p.healthy)
                .map(|p| format!("{}: {}", escape(&p.probe), escape(&p.detail)))
                .collect();
            (
                "bad",
                format!("unhealthy<br><small>{}</small>", why.join("<br>")),
            )
        };
        let units: Vec<String> = c
            .units
            .iter()
            .map(|u| format!("{} ({})", escape(&u.name), escape(&u.active_state)))
            .collect();
        if view == View::Public {
            rows.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td class=\"{class}\">{word}</td></tr>\n",
                escape(&c.name),
                escape(&c.description),
            ));
        } else {
            rows.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td class=\"{class}\">{word}</td><td>{}</td><td>{}</td></tr>\n",
                escape(&c.name),
                escape(&c.description),
                escape(&c.version),
                units.join("<br>")
            ));
        }
    }
    let header = match view {
        View::Operator => {
            "<tr><th>component</th><th>what</th><th>health</th><th>version</th><th>units</th></tr>"
        }
        View::Public => "<tr><th>component</th><th>what</th><th>health</th></tr>",
    };
    let footer = match view {
        View::Operator => "Machine-readable: <a href=\"/status.json\">/status.json</a>. Updated by analytics-stackd. Versions and units are shown to browsers on this host only.",
        View::Public => "Machine-readable: <a href=\"/status.json\">/status.json</a>. Updated by analytics-stackd.",
    };
    let mut links = String::new();
    for r in nginx::routes(config) {
        let state = if r.upstream.is_some() {
            String::new()
        } else {
            " <small>(not installed)</small>".into()
        };
        links.push_str(&format!(
            "<li><a href=\"{p}\">{t}</a> — <code>{p}</code>{state}</li>\n",
            p = r.prefix,
            t = r.title
        ));
    }
    // The databases' archiving, for the operator: what a lost disk would cost.
    let archiving = match (&status.archiving, view) {
        (Some(a), View::Operator) => format!(
            "<h2>Point-in-time recovery</h2>\n<ul>\n{}</ul>\n",
            a.summary
                .iter()
                .map(|l| format!("<li>{}</li>\n", escape(l)))
                .collect::<String>()
        ),
        _ => String::new(),
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><link rel=\"icon\" href=\"data:,\"><title>analytics-stack on {host}</title>\n\
         <style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.3em .8em;text-align:left}}.ok{{color:#080}}.bad{{color:#b00;font-weight:bold}}</style></head>\n\
         <body><h1>analytics-stack on {host}</h1>\n<h2>Applications</h2>\n<ul>\n{links}</ul>\n\
         <h2>Services</h2>\n<table>{header}\n{rows}</table>\n{archiving}\
         <p>{footer}</p></body></html>\n",
        host = escape(config.stack.hostname()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::ProbeResult;
    use crate::stack::{ComponentStatus, StatusReport};

    #[test]
    fn an_unhealthy_component_says_why_and_nothing_is_injected() {
        let config = crate::config::load_texts(&[("t.toml", "")]).unwrap();
        let status = StatusReport {
            components: vec![ComponentStatus {
                name: "redis".into(),
                description: "Redis <b>".into(),
                healthy: false,
                version: "7.0".into(),
                previous_version: None,
                held_version: None,
                units: vec![],
                probes: vec![
                    ProbeResult {
                        probe: "redis 127.0.0.1:6379".into(),
                        healthy: false,
                        detail: "connect: Connection refused <script>".into(),
                    },
                    ProbeResult {
                        probe: "redis 127.0.0.1:6380".into(),
                        healthy: true,
                        detail: "PONG".into(),
                    },
                ],
            }],
            archiving: None,
        };
        let html = render(&config, &status, View::Operator);
        assert!(html.contains("unhealthy<br><small>redis 127.0.0.1:6379: connect: Connection refused &lt;script&gt;</small>"), "{html}");
        assert!(!html.contains("PONG") && !html.contains("<script>") && !html.contains("<b>"));
        // Others see that it is unhealthy, not why, nor the version.
        let public = render(&config, &status, View::Public);
        assert!(
            public.contains("<td class=\"bad\">unhealthy</td>"),
            "{public}"
        );
        assert!(
            !public.contains("6379") && !public.contains("7.0") && !public.contains("<script>"),
            "{public}"
        );
    }
}
