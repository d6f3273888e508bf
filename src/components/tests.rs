use super::*;
use crate::model::{secret_names, OnChange, Probe, Provision};

fn config(extra: &str) -> Config {
    crate::config::load_texts(&[("t.toml", extra)]).unwrap()
}

const NO_APPS: &str =
    "[airflow]\nenabled = false\n[superset]\nenabled = false\n[dlt]\nenabled = false\n";

const ALL_ON: &str = "[statsd_exporter]\nenabled = true\n[loki]\nenabled = true\n[grafana]\nenabled = true\n[log_shipper]\nenabled = true\n";

fn with_promtail() -> Config {
    crate::config::load_texts(&[
        ("a.toml", ALL_ON),
        ("b.toml", "[log_shipper]\nkind = \"promtail\"\n"),
    ])
    .unwrap()
}

fn bookworm() -> Platform {
    Platform {
        codename: "bookworm".into(),
        arch: "amd64".into(),
        ..Default::default()
    }
}

#[test]
fn default_renders_the_whole_stack_in_start_order() {
    let specs = render_all(&config(""), &bookworm());
    let names: Vec<_> = specs.iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        [
            "postgres",
            "pgbackrest",
            "redis",
            "nginx",
            "node-exporter",
            "postgres-exporter",
            "statsd-exporter",
            "loki",
            "prometheus",
            "alertmanager",
            "alloy",
            "grafana",
            "airflow",
            "superset",
            "dlt",
            "backup"
        ]
    );
    let units: Vec<_> = specs
        .iter()
        .flat_map(|s| s.units.iter().map(|u| u.name.clone()))
        .collect();
    assert_eq!(
        units,
        [
            "analytics-postgres.service",
            "analytics-redis-broker.service",
            "analytics-redis-cache.service",
            "analytics-nginx.service",
            "analytics-node-exporter.service",
            "analytics-postgres-exporter.service",
            "analytics-statsd-exporter.service",
            "analytics-loki.service",
            "analytics-prometheus.service",
            "analytics-alertmanager.service",
            "analytics-alloy.service",
            "analytics-grafana.service",
            "analytics-airflow-init.service",
            "analytics-airflow-api-server.service",
            "analytics-airflow-scheduler.service",
            "analytics-airflow-dag-processor.service",
            "analytics-airflow-triggerer.service",
            "analytics-airflow-worker.service",
            "analytics-superset-init.service",
            "analytics-superset-web.service",
            "analytics-superset-worker.service",
            "analytics-backup.timer",
            "analytics-backup.service"
        ]
    );
    let mut everything = render_all(&config(&format!("{ALL_ON}{WITH_WORKERS}")), &bookworm());
    everything.extend(
        render_all(&with_promtail(), &bookworm())
            .into_iter()
            .filter(|s| s.name == "promtail"),
    );
    everything.extend(
        render_all(&config(WORKER_HOST), &bookworm())
            .into_iter()
            .filter(|s| s.name == "dag-sync"),
    );
    assert_eq!(
        everything.len(),
        KNOWN.len(),
        "every known component renders when enabled"
    );
    // Every directory a component makes under /etc/analytics-stack is one an
    // uninstall removes whole.
    let trees = crate::plan::uninstall::generated_trees();
    for dir in everything.iter().flat_map(|s| &s.dirs) {
        if dir.path.starts_with(crate::model::paths::ETC) {
            assert!(
                trees.iter().any(|t| dir.path.starts_with(t)),
                "{} is left by an uninstall",
                dir.path.display()
            );
        }
    }
    for (name, _) in KNOWN {
        let declared = unit_names(name);
        let rendered: Vec<_> = everything
            .iter()
            .filter(|s| s.name == *name)
            .flat_map(|s| s.units.iter().map(|u| u.name.clone()))
            .collect();
        assert_eq!(
            declared, rendered,
            "unit_names({name}) must match its renderer"
        );
    }
}

#[test]
fn disabled_components_are_not_rendered() {
    let specs = render_all(
        &config(&format!("[postgres.archiving]\nenabled = false\n[redis]\nenabled = false\n[nginx]\nenabled = false\n[prometheus]\nenabled = false\n[node_exporter]\nenabled = false\n[statsd_exporter]\nenabled = false\n[loki]\nenabled = false\n[log_shipper]\nenabled = false\n[grafana]\nenabled = false\n{NO_APPS}[backup]\nschedule = \"\"\n")),
        &bookworm(),
    );
    assert_eq!(specs.len(), 1);
    assert_eq!(specs[0].name, "postgres");
}

#[test]
fn postgres_listens_on_loopback_only_and_uses_the_distro_major() {
    let pg = postgres::render(&config("[postgres]\nport = 5439\n"), &bookworm());
    let conf = &pg
        .files
        .iter()
        .find(|f| f.path.ends_with("postgresql.conf"))
        .unwrap()
        .template;
    assert!(conf.contains("listen_addresses = '127.0.0.1'\n"));
    assert!(conf.contains("port = 5439\n"));
    // Archiving is on by default, and a lost disk loses at most the last minute
    // (tests/e2e_pitr.rs sets a shorter timeout and checks it is kept).
    assert!(conf.contains("archive_mode = on\n"), "{conf}");
    assert!(conf.contains("archive_timeout = 60\n"), "{conf}");
    assert_eq!(pg.packages, ["postgresql-15"]);
    assert!(pg.units[0].content.contains(
        "ExecStart=/usr/lib/postgresql/15/bin/postgres -D /var/lib/analytics-stack/postgres/15 "
    ));
    let trixie = postgres::render(
        &config(""),
        &Platform {
            codename: "trixie".into(),
            arch: "amd64".into(),
            ..Default::default()
        },
    );
    assert_eq!(trixie.packages, ["postgresql-17"]);
}

#[test]
fn redis_broker_never_evicts_and_cache_does() {
    let r = redis::render(&config(""));
    let conf = |name: &str| {
        r.files
            .iter()
            .find(|f| f.path.ends_with(name))
            .unwrap()
            .template
            .clone()
    };
    assert!(conf("broker.conf").contains("maxmemory-policy noeviction\n"));
    assert!(conf("cache.conf").contains("maxmemory-policy allkeys-lru\n"));
    assert!(conf("broker.conf").contains("port 6379\n"));
    assert!(conf("cache.conf").contains("port 6380\n"));
    // The password is a reference, never text in the rendered config.
    assert_eq!(
        secret_names(&conf("broker-auth.conf")),
        [
            "redis-broker",
            "redis-broker-airflow",
            "redis-broker-superset"
        ]
    );
    assert_eq!(secret_names(&conf("cache-auth.conf")), ["redis-cache"]);
    assert!(conf("broker.conf").contains("include /etc/analytics-stack/redis/broker-auth.conf"));
}

#[test]
fn nginx_routes_answer_503_until_their_component_exists() {
    let conf = nginx::render_conf(&config(&format!(
        "[nginx]\nport = 8081\n[grafana]\nenabled = false\n{NO_APPS}"
    )));
    assert!(conf.contains("listen 0.0.0.0:8081 default_server;"));
    for prefix in ["/superset/", "/airflow/", "/grafana/"] {
        let block = conf
            .split(&format!("location {prefix} {{"))
            .nth(1)
            .expect(prefix);
        let block = block.split('}').next().unwrap();
        assert!(block.contains("return 503"), "{prefix}: {block}");
    }
    let spec = nginx::render(&config(""), &bookworm());
    assert_eq!(
        spec.files[0].notify,
        [(nginx::UNIT.to_string(), OnChange::Reload)]
    );
    assert!(spec.units[0]
        .content
        .contains("AmbientCapabilities=CAP_NET_BIND_SERVICE"));
}

#[test]
fn every_unit_is_sandboxed_and_runs_as_its_own_user() {
    for spec in render_all(&config(""), &bookworm()) {
        if spec.name == "backup" {
            // The one unit that runs as root (a backup holds every secret, and only
            // root may ask the daemon for one): no capabilities, no network, and
            // started by its timer alone.
            let [timer, service] = &spec.units[..] else {
                panic!("{:?}", spec.units)
            };
            assert!(timer
                .content
                .contains("OnCalendar=*-*-* 02:30:00\nPersistent=true\n"));
            assert!(timer.content.contains("WantedBy=analytics-stack.target"));
            let c = &service.content;
            assert!(service.triggered);
            for key in [
                "User=root\n",
                "CapabilityBoundingSet=\n",
                "PrivateNetwork=yes",
                "RestrictAddressFamilies=AF_UNIX\n",
                "ProtectSystem=strict",
                "ReadWritePaths=/var/backups/analytics-stack\n",
                "NoNewPrivileges=yes",
            ] {
                assert!(c.contains(key), "{} lacks {key}:\n{c}", service.name);
            }
            continue;
        }
        for unit in &spec.units {
            let c = &unit.content;
            let user = c
                .lines()
                .find_map(|l| l.strip_prefix("User="))
                .expect("User=");
            assert!(user.starts_with("analytics-"), "{}: {user}", unit.name);
            assert!(spec.users.iter().any(|u| u.name == user));
            for key in [
                "NoNewPrivileges=yes",
                "ProtectSystem=strict",
                "PrivateTmp=yes",
                "ProtectHome=yes",
                "SystemCallFilter=@system-service",
                "PartOf=analytics-stack.target",
                "WantedBy=analytics-stack.target",
            ] {
                assert!(c.contains(key), "{} lacks {key}", unit.name);
            }
            assert!(!c.contains("MemoryLimit="));
            assert!(!c.contains("bash -c"));
        }
    }
}

#[test]
fn prometheus_scrapes_itself_and_node_exporter_as_job_node() {
    let conf = prometheus::render_config(&config("[node_exporter]\nport = 9101\n"));
    assert!(conf.contains("  - job_name: 'node'\n    metrics_path: '/metrics'\n    static_configs:\n      - targets: ['127.0.0.1:9101']\n"), "{conf}");
    assert!(conf.contains("  - job_name: 'prometheus'\n"));
    let without = prometheus::render_config(&config("[node_exporter]\nenabled = false\n"));
    assert!(!without.contains("job_name: 'node'"));
}

#[test]
fn node_exporter_watches_the_stack_units_and_sees_all_of_proc() {
    let unit = &node_exporter::render(&config(""), &bookworm()).units[0].content;
    assert!(
        unit.contains(
            "--collector.systemd --collector.systemd.unit-include=analytics-.+\\.(service|target)"
        ),
        "{unit}"
    );
    assert!(
        !unit.contains("ProcSubset=pid"),
        "host metrics need /proc/meminfo and friends"
    );
    assert!(postgres::render(&config(""), &bookworm()).units[0]
        .content
        .contains("ProcSubset=pid"));
}

#[test]
fn archive_components_install_from_the_catalog_through_the_mirror() {
    let specs = render_all(
        &config(&format!(
            "{ALL_ON}[archives]\nmirror = \"http://127.0.0.1:8099\"\n"
        )),
        &bookworm(),
    );
    let statsd = specs.iter().find(|s| s.name == "statsd-exporter").unwrap();
    let pin = statsd
        .archive
        .as_ref()
        .expect("statsd-exporter installs from an archive");
    assert!(
        pin.url
            .starts_with("http://127.0.0.1:8099/prometheus/statsd_exporter/releases/download/"),
        "{}",
        pin.url
    );
    assert!(statsd.units[0].content.contains("ExecStart=/opt/analytics-stack/statsd-exporter/current/statsd_exporter --web.listen-address=127.0.0.1:9102 --statsd.listen-udp=127.0.0.1:9125 --statsd.listen-tcp=127.0.0.1:9125 --statsd.mapping-config=/etc/analytics-stack/statsd-exporter/mapping.yml"));
    assert!(statsd.units[0].content.contains(
        "ExecStartPre=/opt/analytics-stack/statsd-exporter/current/statsd_exporter --check-config"
    ));
    let loki = specs.iter().find(|s| s.name == "loki").unwrap();
    assert!(loki.units[0].content.contains("ExecStart=/opt/analytics-stack/loki/current/loki-linux-amd64 -config.file=/etc/analytics-stack/loki/loki.yaml"));
    let prom = prometheus::render_config(&config(ALL_ON));
    for job in ["'statsd'", "'loki'", "'node'", "'prometheus'"] {
        assert!(prom.contains(&format!("job_name: {job}")), "{job}");
    }
}

#[test]
fn loki_config_has_the_keys_a_single_binary_on_a_filesystem_needs() {
    // Without NGINX's stack CA: on loopback, one tenant.
    let open = loki::render_config(&config("[loki]\nenabled = true\n[nginx]\ntls = \"off\"\n"));
    for needle in [
        "auth_enabled: false\n",
        "  http_listen_address: 127.0.0.1\n  http_listen_port: 3100\n",
    ] {
        assert!(open.contains(needle), "loki.yaml lacks {needle:?}:\n{open}");
    }
    let open_spec = loki::render(
        &config("[loki]\nenabled = true\n[nginx]\ntls = \"off\"\n"),
        &bookworm(),
    );
    assert_eq!(open_spec.ports.len(), 2);
    assert!(!open_spec.units[0].content.contains("PrivateNetwork=yes"));
    // Behind the door (the default): a tenant per host, HTTP on a Unix socket, in a
    // network namespace of its own, a socket NGINX's group reaches.
    let y = loki::render_config(&config("[loki]\nenabled = true\nretention = \"168h\"\n"));
    let parsed: serde_yaml::Value = serde_yaml::from_str(&y).unwrap();
    assert_eq!(parsed["querier"]["multi_tenant_queries_enabled"], true);
    let door_spec = loki::render(&config("[loki]\nenabled = true\n"), &bookworm());
    let unit = &door_spec.units[0].content;
    for line in [
        "PrivateNetwork=yes\n",
        "RuntimeDirectory=analytics-loki\n",
        "RuntimeDirectoryMode=0750\n",
        "UMask=0007\n",
        "ExecStartPre=/bin/bash /etc/analytics-stack/loki/loopback-check.sh\n",
    ] {
        assert!(unit.contains(line), "{line}{unit}");
    }
    // The check it runs: refused on a loopback that is up, failing where there is no
    // network at all (a namespace of its own without a loopback, as `unshare -n`
    // makes one, when this machine lets us).
    let script = &door_spec.files[1].template;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("check.sh");
    std::fs::write(&path, script).unwrap();
    let here = std::process::Command::new("/bin/bash")
        .arg(&path)
        .output()
        .unwrap();
    assert!(here.status.success(), "{here:?}");
    if let Ok(out) = std::process::Command::new("unshare")
        .arg("-n")
        .arg("/bin/bash")
        .arg(&path)
        .output()
    {
        if !String::from_utf8_lossy(&out.stderr).contains("unshare failed") {
            assert!(!out.status.success(), "no loopback: {out:?}");
            assert!(String::from_utf8_lossy(&out.stderr).contains("no loopback"));
        }
    }
    assert!(
        door_spec.ports.is_empty(),
        "its ports are in its own namespace"
    );
    assert!(matches!(
        &door_spec.probes[0],
        crate::model::Probe::HttpUnix { socket, .. } if socket == "/run/analytics-loki/http:0"
    ));
    for needle in [
        "auth_enabled: true\n",
        "  http_listen_network: unix\n  http_listen_address: /run/analytics-loki/http\n  http_listen_port: 0\n",
        "  grpc_listen_address: 127.0.0.1\n",
        "  path_prefix: /var/lib/analytics-stack/loki\n  replication_factor: 1\n  ring:\n    kvstore:\n      store: inmemory\n",
        "    - from: 2024-01-01\n      store: tsdb\n      object_store: filesystem\n      schema: v13\n      index:\n        prefix: index_\n        period: 24h\n",
        "  retention_period: 168h\n",
        "  retention_enabled: true\n  delete_request_store: filesystem\n",
        "analytics:\n  reporting_enabled: false\n",
        "storage_config:\n  tsdb_shipper:\n    active_index_directory: /var/lib/analytics-stack/loki/tsdb-index\n    cache_location: /var/lib/analytics-stack/loki/tsdb-cache\n",
        "  working_directory: /var/lib/analytics-stack/loki/compactor\n",
    ] {
        assert!(y.contains(needle), "loki.yaml lacks {needle:?}:\n{y}");
    }
    // Whatever Loki derives from its working directory lands in its data directory.
    let spec = loki::render(&config("[loki]\nenabled = true\n"), &bookworm());
    assert!(spec.units[0]
        .content
        .contains("WorkingDirectory=/var/lib/analytics-stack/loki\n"));
    // The schema date is fixed: changing it would strand existing chunks.
    assert_eq!(loki::SCHEMA_FROM, "2024-01-01");
}

#[test]
fn under_a_memory_budget_loki_and_prometheus_keep_small_caches_and_limits() {
    let mut c = config("[loki]\nenabled = true\n");
    let roomy: serde_yaml::Value = serde_yaml::from_str(&loki::render_config(&c)).unwrap();
    assert!(roomy.get("query_range").is_none() && roomy.get("chunk_store_config").is_none());
    c.memory_constrained = true;
    let small: serde_yaml::Value = serde_yaml::from_str(&loki::render_config(&c)).unwrap();
    for cache in [
        &small["query_range"]["results_cache"]["cache"]["embedded_cache"],
        &small["chunk_store_config"]["chunk_cache_config"]["embedded_cache"],
    ] {
        assert_eq!(cache["enabled"], serde_yaml::Value::Bool(true));
        assert_eq!(cache["max_size_mb"].as_u64(), Some(16));
    }
    assert_eq!(
        small["limits_config"]["max_query_parallelism"].as_u64(),
        Some(4)
    );
    assert_eq!(
        small["limits_config"]["retention_period"],
        roomy["limits_config"]["retention_period"]
    );
    let prometheus = prometheus::render(&c, &bookworm());
    assert!(prometheus.units[0]
        .content
        .contains(" --query.max-concurrency=2 --query.max-samples=5000000\n"));
}

#[test]
fn every_mapping_rule_is_a_regex_whose_captures_are_labels() {
    let y = statsd_exporter::render_mapping();
    assert_eq!(
        y.matches("  - match: ").count(),
        y.matches("    match_type: regex\n").count()
    );
    // Each family has one set of label names, whichever rule produces it.
    let mut keys: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for r in statsd_exporter::rules()
        .iter()
        .filter(|r| !r.drop && !r.name.contains('$'))
    {
        let k: Vec<String> = r.labels.iter().map(|(k, _)| k.to_string()).collect();
        if let Some(before) = keys.insert(r.name.clone(), k.clone()) {
            assert_eq!(before, k, "{}", r.name);
        }
    }
    // Every capture but a task run's job id is a label.
    for (template, family) in crate::components::airflow_metrics::PER_ENTITY {
        let rule = statsd_exporter::rules()
            .into_iter()
            .find(|r| r.name == *family)
            .unwrap();
        let groups = regex::Regex::new(&rule.pattern).unwrap().captures_len() - 1;
        let kept = template.matches('{').count() - template.matches("{job_id}").count();
        assert_eq!(rule.labels.len(), kept, "{template}");
        assert_eq!(groups, template.matches('{').count(), "{template}");
    }
}

#[test]
fn the_config_chooses_debian_or_the_release_archive() {
    let debian = render_all(&config(""), &bookworm());
    let prom = debian.iter().find(|s| s.name == "prometheus").unwrap();
    assert_eq!(
        (prom.packages.clone(), prom.archive.is_none()),
        (vec!["prometheus".to_string()], true)
    );
    assert!(prom.units[0]
        .content
        .contains("ExecStart=/usr/bin/prometheus --config.file="));

    let archive = render_all(
        &config("[prometheus]\nsource = \"archive\"\n[node_exporter]\nsource = \"archive\"\n"),
        &bookworm(),
    );
    let prom = archive.iter().find(|s| s.name == "prometheus").unwrap();
    assert!(prom.packages.is_empty());
    assert!(prom
        .archive
        .as_ref()
        .unwrap()
        .url
        .ends_with("/prometheus-3.5.0.linux-amd64.tar.gz"));
    assert!(prom.units[0]
        .content
        .contains("ExecStart=/opt/analytics-stack/prometheus/current/prometheus --config.file="));
    let node = archive.iter().find(|s| s.name == "node-exporter").unwrap();
    assert!(node.units[0].content.contains(
        "ExecStart=/opt/analytics-stack/node-exporter/current/node_exporter --web.listen-address="
    ));
    let bad =
        crate::config::load_texts(&[("t.toml", "[prometheus]\nsource = \"snap\"\n")]).unwrap_err();
    assert!(bad.0[0].message.contains("unknown variant"), "{bad}");
}

#[test]
fn grafana_lives_under_its_sub_path_air_gapped_with_a_secret_it_never_sees_in_files() {
    let c = config(ALL_ON);
    let ini = grafana::render_ini(&c);
    for needle in [
        "[server]\nhttp_addr = 127.0.0.1\nhttp_port = 3000\n",
        "root_url = https://localhost/grafana/\nserve_from_sub_path = true\n",
        "cookie_secure = true\n",
        "admin_password = $__file{/run/credentials/analytics-grafana.service/admin-password}\n",
        "reporting_enabled = false\ncheck_for_updates = false\ncheck_for_plugin_updates = false\n",
        "preinstall_disabled = true\n",
        "public_key_retrieval_disabled = true\n",
        "secret_key = $__file{/run/credentials/analytics-grafana.service/secret-key}\n",
        "allow_sign_up = false\n",
    ] {
        assert!(ini.contains(needle), "grafana.ini lacks {needle:?}");
    }
    let spec = grafana::render(&c, &bookworm());
    for credential in [
        "LoadCredential=admin-password:/var/lib/analytics-stack/secrets/grafana-admin\n",
        "LoadCredential=secret-key:/var/lib/analytics-stack/secrets/grafana-secret-key\n",
    ] {
        assert!(spec.units[0].content.contains(credential), "{credential}");
    }
    assert!(spec.secrets.contains(&grafana::SECRET_KEY.to_string()));
    // Dashboards whose data do not exist are not provisioned: Airflow's needs Airflow
    // and statsd_exporter, the logs dashboard needs Loki.
    let provisioned = |c: &Config| -> Vec<String> {
        grafana::render(c, &bookworm())
            .files
            .iter()
            .filter_map(|f| {
                f.path
                    .strip_prefix("/etc/analytics-stack/grafana/dashboards/")
                    .ok()
                    .map(|p| p.display().to_string())
            })
            .collect()
    };
    assert_eq!(
        provisioned(&c),
        ["host.json", "stack.json", "airflow.json", "logs.json"]
    );
    assert_eq!(
        provisioned(
            &crate::config::load_texts(&[
                ("a.toml", ALL_ON),
                (
                    "b.toml",
                    &format!("[loki]\nenabled = false\n[log_shipper]\nenabled = false\n{NO_APPS}"),
                ),
            ])
            .unwrap()
        ),
        ["host.json", "stack.json"]
    );
    assert!(spec.units[0].content.contains("ExecStart=/opt/analytics-stack/grafana/current/bin/grafana server --homepath /opt/analytics-stack/grafana/current --config /etc/analytics-stack/grafana/grafana.ini"));
    assert!(
        spec.files.iter().all(|f| f.secret_names().is_empty()),
        "no secret is written into Grafana's files"
    );
    let ds = grafana::render_datasources(&c);
    assert!(ds.contains("  - name: Prometheus\n    uid: analytics-prometheus\n    type: prometheus\n    access: proxy\n    url: http://127.0.0.1:9090\n"));
    // Loki through NGINX's loopback door, with the primary's client certificate from
    // the unit's credentials.
    assert!(ds.contains("  - name: Loki\n    uid: analytics-loki\n    type: loki\n    access: proxy\n    url: https://127.0.0.1:3100\n"), "{ds}");
    let parsed: serde_yaml::Value = serde_yaml::from_str(&ds).unwrap();
    let loki_ds = &parsed["datasources"][1];
    assert_eq!(loki_ds["jsonData"]["tlsAuth"], true);
    assert_eq!(loki_ds["jsonData"]["serverName"], "localhost");
    assert_eq!(
        loki_ds["secureJsonData"]["tlsClientKey"],
        "$__file{/run/credentials/analytics-grafana.service/primary-client.key}"
    );
    assert!(spec.units[0].content.contains(
        "LoadCredential=primary-client.key:/var/lib/analytics-stack/tls/primary-client.key\n"
    ));
    // With NGINX's TLS off there is no door: Loki on loopback, as before.
    let open = grafana::render_datasources(&config(&format!("{ALL_ON}[nginx]\ntls = \"off\"\n")));
    assert!(
        open.contains("    url: http://127.0.0.1:3100\n") && !open.contains("tlsAuth"),
        "{open}"
    );
    assert!(grafana::render_dashboard_provider().contains("    type: file\n"));
    // NGINX proxies /grafana/ to it, keeping the prefix.
    let n = nginx::render_conf(&c);
    let block = n
        .split("location /grafana/ {")
        .nth(1)
        .unwrap()
        .split('}')
        .next()
        .unwrap();
    assert!(
        block.contains("proxy_pass http://127.0.0.1:3000;")
            && block.contains("proxy_set_header Upgrade $http_upgrade;"),
        "{block}"
    );
}

#[test]
fn dashboards_are_grafana_json_whose_queries_name_real_metrics() {
    let mapping = statsd_exporter::render_mapping();
    let airflow_names: Vec<&str> = mapping
        .lines()
        .filter_map(|l| l.trim().strip_prefix("name: '"))
        .map(|n| n.trim_end_matches('\''))
        .collect();
    let mut node_metrics = 0;
    for (file, d) in dashboards::all() {
        assert!(
            d["uid"]
                .as_str()
                .is_some_and(|u| u.starts_with("analytics-")),
            "{file}"
        );
        assert!(
            d["title"].is_string() && d["schemaVersion"].is_number(),
            "{file}"
        );
        let text = serde_json::to_string(&d).unwrap();
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, d);
        for p in d["panels"].as_array().unwrap() {
            assert!(
                p["gridPos"]["w"].is_number() && p["type"].is_string(),
                "{file}: {p}"
            );
            assert!(
                !p["targets"].as_array().unwrap().is_empty(),
                "{file}: panel without query"
            );
        }
    }
    // A panel's unit fits what its metric measures: Airflow's timers arrive in
    // seconds (statsd_exporter divides StatsD milliseconds by 1000).
    for (file, d) in dashboards::all() {
        for p in d["panels"].as_array().unwrap() {
            let unit = p["fieldConfig"]["defaults"]["unit"].as_str().unwrap_or("");
            for t in p["targets"].as_array().unwrap() {
                let expr = t["expr"].as_str().unwrap();
                let names = dashboards::metric_names(expr);
                if names
                    .iter()
                    .any(|n| n.ends_with("_duration") || n.ends_with("_seconds"))
                {
                    assert_eq!(unit, "s", "{file}: {expr}");
                }
                // Timers are summaries: one quantile per legend.
                if names.iter().any(|n| n.ends_with("_duration")) {
                    assert!(expr.contains("quantile=\"0.5\""), "{file}: {expr}");
                }
                // Never the untagged series.
                if names.iter().any(|n| n == "airflow_task_duration") {
                    assert!(
                        expr.contains("quantile=") && expr.contains("dag_id!=\"\""),
                        "{expr}"
                    );
                }
            }
        }
    }
    for expr in dashboards::prometheus_exprs() {
        for name in dashboards::metric_names(&expr) {
            if name.starts_with("airflow_") || name.starts_with("superset_") {
                assert!(
                    airflow_names.contains(&name.as_str()),
                    "{name} is not produced by the statsd mapping"
                );
            } else if name.starts_with("analytics_stack_") {
                assert!(
                    dashboards::DAEMON_METRICS.contains(&name.as_str()),
                    "{name} is not published by the daemon"
                );
            } else if name.starts_with("pg_") {
                // postgres_exporter 0.11's; checked against the real one in
                // tests/e2e_data_tier.rs.
                assert!(
                    ["pg_stat_activity_count", "pg_settings_max_connections"]
                        .contains(&name.as_str()),
                    "{name}"
                );
            } else if name.starts_with("node_") {
                node_metrics += 1; // checked against the real node_exporter in tests/e2e_metrics.rs
            } else {
                assert_eq!(name, "up", "unexpected metric {name} in {expr}");
            }
        }
    }
    assert!(node_metrics >= 8);
    assert_eq!(
        dashboards::metric_names("sum by (state) (increase(airflow_ti_finish{x=\"y\"}[5m]))"),
        ["airflow_ti_finish"]
    );
}

#[test]
fn the_log_shippers_read_the_journal_of_stack_units_into_loki() {
    let c = config(ALL_ON);
    let alloy = log_shipper::render_alloy(&c);
    for needle in [
        "loki.source.journal \"stack\" {",
        "relabel_rules = loki.relabel.journal.rules",
        "forward_to    = [loki.write.local.receiver]",
        "source_labels = [\"__journal__systemd_unit\", \"__journal_unit\"]\n    regex         = \"init\\\\.scope;(.+)\"\n    target_label  = \"unit\"",
        "source_labels = [\"unit\"]\n    regex         = \"analytics-.*\"\n    action        = \"keep\"",
        // To Loki's loopback door, with the primary's client certificate.
        "url = \"https://127.0.0.1:3100/loki/api/v1/push\"",
        "cert_file = \"/run/credentials/analytics-alloy.service/primary-client.crt\"",
        "server_name = \"localhost\"",
        "labels        = {job = \"systemd-journal\", host = \"localhost\"}",
    ] {
        assert!(
            alloy.contains(needle),
            "config.alloy lacks {needle:?}:\n{alloy}"
        );
    }
    assert_eq!(
        alloy.matches('{').count(),
        alloy.matches('}').count(),
        "balanced blocks"
    );
    let spec = log_shipper::render(&c, &bookworm());
    assert_eq!(spec.name, "alloy");
    assert_eq!(spec.users[0].groups, ["systemd-journal"]);
    assert!(spec.units[0].content.contains("ExecStart=/opt/analytics-stack/alloy/current/alloy-linux-amd64 run --server.http.listen-addr=127.0.0.1:9080 --storage.path=/var/lib/analytics-stack/alloy --disable-reporting /etc/analytics-stack/alloy/config.alloy"));

    let pc = with_promtail();
    let promtail = log_shipper::render_promtail(&pc);
    for needle in [
        "  - job_name: journal\n    journal:\n      max_age: 12h\n",
        "      - source_labels: ['__journal__systemd_unit', '__journal_unit']\n        regex: 'init\\.scope;(.+)'\n        target_label: 'unit'\n",
        "      - source_labels: ['unit']\n        regex: 'analytics-.*'\n        action: keep\n",
        "  grpc_listen_address: 127.0.0.1\n  grpc_listen_port: 0\n",
        "clients:\n  - url: https://127.0.0.1:3100/loki/api/v1/push\n    tls_config:\n      ca_file: /var/lib/analytics-stack/tls/ca.crt\n      cert_file: /run/credentials/analytics-promtail.service/primary-client.crt\n      key_file: /run/credentials/analytics-promtail.service/primary-client.key\n      server_name: localhost\n",
        "positions:\n  filename: /var/lib/analytics-stack/promtail/positions.yaml\n",
    ] {
        assert!(promtail.contains(needle), "promtail.yaml lacks {needle:?}");
    }
    let spec = log_shipper::render(&pc, &bookworm());
    assert_eq!(
        (spec.name, spec.units[0].name.as_str()),
        ("promtail", "analytics-promtail.service")
    );
    // Stopped before Loki at shutdown, and never for longer than 30 s.
    let unit = &spec.units[0].content;
    assert!(
        unit.contains("After=") && unit.contains(" analytics-loki.service"),
        "{unit}"
    );
    assert!(unit.contains("TimeoutSec=30\n"), "{unit}");
    assert!(prometheus::render_config(&pc).contains("job_name: 'promtail'"));
}

#[test]
fn every_airflow_process_shares_one_environment_with_the_settings_the_prefix_needs() {
    let spec = airflow::render(&config(""), &bookworm());
    let env = &spec.files[0];
    assert_eq!(env.mode, 0o600, "root's alone: systemd reads it");
    assert_eq!(env.owner, "root");
    let text = &env.template;
    for line in [
        "AIRFLOW__CORE__EXECUTOR=CeleryExecutor",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL=http://127.0.0.1:8080/airflow/execution/",
        "AIRFLOW__API__BASE_URL=https://localhost/airflow",
        "AIRFLOW__FAB__ENABLE_PROXY_FIX=True",
        "AIRFLOW__FAB__PROXY_FIX_X_PREFIX=0",
        "AIRFLOW__FAB__COOKIE_SECURE=True",
        "AIRFLOW__API_AUTH__JWT_SECRET=@@secret:airflow-jwt-secret@@",
        "AIRFLOW__CORE__FERNET_KEY=@@secret:airflow-fernet-key@@",
        "AIRFLOW__CELERY__BROKER_URL=redis://airflow:@@secret:redis-broker-airflow@@@127.0.0.1:6379/0",
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX=airflow:",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK=True",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST=127.0.0.1",
        "AIRFLOW__METRICS__STATSD_PORT=9125",
        "RUNTIME__DLTHUB_TELEMETRY=false",
        "AIRFLOW__CORE__AUTH_MANAGER=airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
    }
    // Every process unit reads that file, and restarts when it changes.
    assert_eq!(spec.units.len(), 6);
    for unit in &spec.units {
        assert!(
            unit.content
                .contains("EnvironmentFile=/etc/analytics-stack/airflow/airflow.env"),
            "{}",
            unit.name
        );
        assert!(env.notify.iter().any(|(u, _)| u == &unit.name));
    }
    // Migrations first: a oneshot the others are ordered after.
    let init = &spec.units[0];
    assert!(init.content.contains("Type=oneshot") && init.content.contains("RemainAfterExit=yes"));
    assert!(init
        .content
        .contains("ExecStartPre=/opt/analytics-stack/airflow/current/bin/airflow db migrate"));
    assert!(!init.content.contains("Restart=on-failure"));
    for unit in &spec.units[1..] {
        assert!(unit
            .content
            .contains("After=network.target analytics-airflow-init.service"));
    }
    // No log server on the network; the API behind NGINX with proxy headers.
    let worker = spec
        .units
        .iter()
        .find(|u| u.name == airflow::WORKER_UNIT)
        .unwrap();
    assert!(worker.content.contains("celery worker --skip-serve-logs"));
    let api = spec
        .units
        .iter()
        .find(|u| u.name == airflow::API_UNIT)
        .unwrap();
    assert!(api.content.contains("--host 127.0.0.1 --port 8080"));
    assert!(api.content.contains("--proxy-headers"));
    assert!(api.content.contains("ProtectProc=invisible"));
    // Without statsd_exporter, no StatsD.
    let quiet = airflow::render_env(&config("[statsd_exporter]\nenabled = false\n"));
    assert!(!quiet.contains("STATSD"));
}

#[test]
fn superset_lives_under_its_prefix_with_caches_and_broker_on_separate_redis() {
    let spec = superset::render(&config(""), &bookworm());
    let conf = &spec.files[0];
    assert_eq!((conf.mode, conf.group.as_str()), (0o640, superset::USER));
    let text = &conf.template;
    assert!(text
        .contains("return \"redis://:@@secret:redis-cache@@@127.0.0.1:6380/\" + str(db) + \"\"\n"));
    assert!(text.contains("RESULTS_BACKEND = RedisCache(host=Redis.from_url(_cache_url(4)), key_prefix=\"superset_results_\")"));
    assert!(
        text.contains("broker_url = \"redis://superset:@@secret:redis-broker-superset@@@127.0.0.1:6379\" + \"/1\"")
    );
    assert!(text.contains("SQLALCHEMY_DATABASE_URI = \"postgresql+psycopg2://superset:@@secret:postgres-superset@@@127.0.0.1:5432/superset\""));
    assert!(text.contains("ENABLE_PROXY_FIX = True"));
    let web = spec
        .units
        .iter()
        .find(|u| u.name == superset::WEB_UNIT)
        .unwrap();
    assert!(web
        .content
        .contains("Environment=\"SUPERSET_APP_ROOT=/superset\""));
    assert!(web.content.contains("--bind 127.0.0.1:8088"));
    // StatsD only with statsd_exporter: gunicorn's and Superset's own.
    let without_statsd =
        superset::render(&config("[statsd_exporter]\nenabled = false\n"), &bookworm());
    assert!(!without_statsd
        .units
        .iter()
        .any(|u| u.content.contains("--statsd-host")));
    assert!(!without_statsd.files[0].template.contains("STATS_LOGGER"));
    let with_statsd = &spec;
    assert!(with_statsd
        .units
        .iter()
        .any(|u| u.name == superset::WEB_UNIT
            && u.content.contains(
                " --statsd-host 127.0.0.1:9125 --statsd-prefix superset superset.app:create_app()"
            )));
    assert!(with_statsd.files[0].template.contains(
        "\nSTATS_LOGGER = StatsdStatsLogger(host=\"127.0.0.1\", port=9125, prefix=\"superset\")\n"
    ));
    // The file is Python: CPython compiles it (secrets as their references).
    assert_compiles_as_python(&with_statsd.files[0].template);
    assert_eq!(
        spec.probes,
        [Probe::Http {
            port: 8088,
            path: "/superset/health".into()
        }]
    );
    // The route through NGINX keeps the prefix.
    let nginx = nginx::render_conf(&config(""));
    let block = nginx.split("location /superset/ {").nth(1).unwrap();
    assert!(block
        .split('}')
        .next()
        .unwrap()
        .contains("proxy_pass http://127.0.0.1:8088;"));
    let block = nginx.split("location /airflow/ {").nth(1).unwrap();
    assert!(block
        .split('}')
        .next()
        .unwrap()
        .contains("proxy_pass http://127.0.0.1:8080;"));
}

#[test]
fn venvs_are_named_by_version_and_lock_hash_and_the_sample_dag_uses_the_dlt_venv() {
    for app in python::ALL {
        let id = app.venv_id();
        assert!(id.starts_with(&format!("{}-", app.version)), "{id}");
        assert_eq!(id.len(), app.version.len() + 13);
        // The lock pins the application at the version the stack names.
        let pin = format!(
            "\n{}=={} \\",
            match app.name {
                "airflow" => "apache-airflow",
                "superset" => "apache-superset",
                other => other,
            },
            app.version
        );
        assert!(app.lock.contains(&pin), "{}: {pin}", app.name);
        // Every requirement carries hashes: each text between two pins holds one.
        let requirements = app.lock.lines().filter(|l| l.contains("==")).count();
        let hashed = app
            .lock
            .split("==")
            .skip(1)
            .filter(|after_pin| after_pin.contains("--hash=sha256:"))
            .count();
        assert_eq!(requirements, hashed, "{}", app.name);
    }
    let spec = dlt::render(&config(""), &bookworm());
    let venv = spec.venv.as_ref().unwrap();
    assert_eq!(
        venv.dir().parent().unwrap(),
        std::path::Path::new("/opt/analytics-stack/dlt")
    );
    assert_eq!(venv.uv.component, "uv");
    let dag = dlt::render_sample_dag();
    assert!(dag.contains(r#"/opt/analytics-stack/dlt/current/bin/python "$ANALYTICS_STACK_PIPELINES/sample_pipeline.py""#));
    assert!(dag.contains("is_paused_upon_creation=False"));
    assert!(dlt::SAMPLE_PIPELINE_PY.contains("write_disposition=\"merge\""));
}

/// The text of the block that starts at `opening` (through its matching brace).
fn block<'a>(conf: &'a str, opening: &str) -> &'a str {
    let start = conf
        .find(opening)
        .unwrap_or_else(|| panic!("no {opening:?} in:\n{conf}"));
    let mut depth = 0;
    for (i, c) in conf[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return &conf[start..start + i + 1];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced block {opening:?}")
}

#[test]
fn the_door_serves_https_redirects_plain_http_and_keeps_internals_local() {
    let conf = nginx::render_conf(&config("[stack]\nhostname = \"stack.example.org\"\n"));
    // Plain HTTP: the health check, and a redirect to HTTPS on the name the browser used.
    let http = block(&conf, "server {\n        listen 0.0.0.0:80 default_server;");
    assert!(http.contains("location = /healthz {"), "{http}");
    assert!(
        http.contains("return 301 https://$host$request_uri;"),
        "{http}"
    );
    assert!(
        !http.contains("proxy_pass"),
        "nothing is proxied in clear text: {http}"
    );
    // HTTPS with the certificate systemd hands over as credentials.
    let https = block(
        &conf,
        "server {\n        listen 0.0.0.0:443 ssl default_server;",
    );
    for line in [
        "ssl_certificate /run/credentials/analytics-nginx.service/server.crt;",
        "ssl_certificate_key /run/credentials/analytics-nginx.service/server.key;",
        "ssl_protocols TLSv1.2 TLSv1.3;",
        "add_header X-Content-Type-Options nosniff always;",
        "add_header X-Frame-Options $stack_frame_options always;",
        "add_header Referrer-Policy $stack_referrer_policy always;",
        "proxy_hide_header X-Frame-Options;",
    ] {
        assert!(https.contains(line), "lacks {line}");
    }
    // No HSTS for the stack's own CA: a browser that does not trust it yet could not
    // proceed at all.
    assert!(!https.contains("Strict-Transport-Security \""));
    // Internal endpoints answer loopback only, and still reach their application.
    for location in [
        "location /airflow/execution/ {",
        "location = /grafana/metrics {",
    ] {
        let b = block(https, location);
        assert!(
            b.contains("allow 127.0.0.0/8;")
                && b.contains("allow ::1;")
                && b.contains("deny all;")
                && b.contains("proxy_pass"),
            "{b}"
        );
    }
    // Versions and unit names for clients on the host; a summary for everyone else.
    assert!(conf.contains("127.0.0.0/8 1;"));
    assert!(block(https, "location = / {").contains("try_files $landing_page =503;"));
    assert!(block(https, "location = /status.json {").contains("try_files $status_document =404;"));
    for internal in ["location = /index.html {", "location = /public.html {"] {
        assert!(block(https, internal).contains("internal;"));
    }
    // Redirects to the configured name become relative (the dots are literal).
    let superset = block(https, "location /superset/ {");
    assert!(
        superset.contains(r"proxy_redirect ~^https?://stack\.example\.org(:[0-9]+)?(/.*)$ $2;"),
        "{superset}"
    );
    assert!(superset.contains("proxy_set_header X-Forwarded-Port $server_port;"));
    // Airflow's entry sends a browser without a session to the login page at once.
    let entry = block(https, "location = /airflow/ {");
    assert!(
        entry.contains("if ($cookie__token = \"\") {")
            && entry.contains("return 302 /airflow/auth/login/?next=/airflow/;")
    );
    // Superset's pixel never leaves the browser; its manifest's icons get the prefix.
    let js = block(https, r"location ~ ^/superset/static/assets/.*\.js$ {");
    assert!(js.contains(
        "sub_filter 'https://apachesuperset.gateway.scarf.sh/pixel/' 'data:image/gif;base64,"
    ));
    assert!(js.contains("proxy_set_header Accept-Encoding \"\";"));
    let manifest = block(
        https,
        "location = /superset/static/assets/pwa-manifest.json {",
    );
    assert!(
        manifest.contains(r#"sub_filter '"/static/' '"/superset/static/';"#)
            && manifest.contains("sub_filter_once off;")
    );

    // Another HTTPS port is kept in the redirect; the operator's certificate gets HSTS.
    let files = config("[nginx]\nhttps_port = 8443\ntls = \"files\"\ncertificate = \"/etc/ssl/s.pem\"\nkey = \"/etc/ssl/s.key\"\n");
    let conf = nginx::render_conf(&files);
    assert!(conf.contains("return 301 https://$host:8443$request_uri;"));
    assert!(conf.contains("listen 0.0.0.0:8443 ssl default_server;"));
    assert!(conf.contains("add_header Strict-Transport-Security \"max-age=31536000\" always;"));
    assert_eq!(nginx::public_origin(&files), "https://localhost:8443");

    // TLS off: one plain server, no certificate, no redirect.
    let plain = config("[nginx]\ntls = \"off\"\n");
    let conf = nginx::render_conf(&plain);
    assert!(
        !conf.contains("ssl") && !conf.contains("return 301"),
        "{conf}"
    );
    assert_eq!(nginx::public_origin(&plain), "http://localhost");
    let spec = nginx::render(&plain, &bookworm());
    assert!(spec.tls.is_none() && !spec.units[0].content.contains("LoadCredential"));
    assert_eq!(spec.ports.len(), 1);
}

#[test]
fn nginx_loads_its_certificate_as_credentials_and_listens_on_both_ports() {
    let platform = Platform {
        names: vec!["stack.example.org".into(), "stack".into()],
        addresses: vec!["127.0.0.1".parse().unwrap(), "192.0.2.7".parse().unwrap()],
        ..bookworm()
    };
    let spec = nginx::render(&config(""), &platform);
    let unit = &spec.units[0].content;
    assert!(
        unit.contains("LoadCredential=server.crt:/var/lib/analytics-stack/tls/server.crt\n"),
        "{unit}"
    );
    assert!(
        unit.contains("LoadCredential=server.key:/var/lib/analytics-stack/tls/server.key\n"),
        "{unit}"
    );
    // And Loki's loopback door (Loki is behind it).
    assert_eq!(
        spec.ports.iter().map(|p| p.port).collect::<Vec<_>>(),
        [80, 443, 3100]
    );
    assert!(
        unit.contains("SupplementaryGroups=analytics-loki\n"),
        "{unit}"
    );
    let conf = nginx::render_conf(&config(""));
    let door = &conf[conf.find("listen 127.0.0.1:3100 ssl;").expect(&conf)..];
    for line in [
        "ssl_verify_client on;",
        "ssl_client_certificate /var/lib/analytics-stack/tls/ca.crt;",
        "if ($ssl_client_s_dn != 'CN=analytics-stack primary,O=analytics-stack') {\n                return 403;",
        "proxy_pass http://analytics_loki;",
        "proxy_set_header X-Scope-OrgID $stack_loki_tenant;",
    ] {
        assert!(door.contains(line), "{line}\n{door}");
    }
    assert!(
        conf.contains("server unix:/run/analytics-loki/http:0;"),
        "{conf}"
    );
    assert!(
        conf.contains("        default 'primary';\n        /loki/api/v1/push primary;\n"),
        "{conf}"
    );
    assert_eq!(
        spec.tls,
        Some(crate::tls::TlsSpec::SelfSigned {
            names: vec![
                "stack.example.org".into(),
                "stack".into(),
                "localhost".into()
            ],
            addresses: platform.addresses.clone(),
        })
    );
    // A configured name comes first, each name once.
    let named = nginx::render(
        &config("[stack]\nhostname = \"analytics.example.org\"\n"),
        &platform,
    );
    match named.tls {
        Some(crate::tls::TlsSpec::SelfSigned { names, .. }) => assert_eq!(
            names,
            [
                "analytics.example.org",
                "stack.example.org",
                "stack",
                "localhost"
            ]
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_applications_know_they_are_behind_https_and_nothing_phones_home() {
    let c = config("[stack]\nhostname = \"stack.example.org\"\n");
    let env = airflow::render_env(&c);
    assert!(env.contains("AIRFLOW__API__BASE_URL=https://stack.example.org/airflow\n"));
    assert!(env.contains("AIRFLOW__FAB__COOKIE_SECURE=True\n"));
    let superset = superset::render_config(&c);
    for line in [
        "SESSION_COOKIE_SECURE = True\n",
        "PREFERRED_URL_SCHEME = \"https\"\n",
        "\"img-src\": [\"'self'\", \"blob:\", \"data:\"],\n",
        "\"connect-src\": [\"'self'\"],\n",
        "ANALYTICS_STACK_SAMPLE = True\n",
        "\"brandLogoUrl\"] = \"/./static/assets/images/superset-logo-horiz.png\"",
    ] {
        assert!(superset.contains(line), "superset_config.py lacks {line:?}");
    }
    assert!(
        !superset.contains("scarf"),
        "no outside host is allowed to pages"
    );
    let grafana = grafana::render_ini(&c);
    assert!(grafana.contains("root_url = https://stack.example.org/grafana/\n"));
    assert!(grafana.contains("cookie_secure = true\n"));
    // Plain HTTP: cookies must not be Secure, or no login would stick.
    let plain = config("[nginx]\ntls = \"off\"\n");
    assert!(airflow::render_env(&plain).contains("AIRFLOW__FAB__COOKIE_SECURE=False\n"));
    assert!(superset::render_config(&plain).contains("SESSION_COOKIE_SECURE = False\n"));
    assert!(grafana::render_ini(&plain).contains("cookie_secure = false\n"));
}

#[test]
fn the_overview_has_superset_panels_only_when_its_metrics_reach_prometheus() {
    let panels = |extra: &str| -> Vec<String> {
        let all = dashboards::for_config(&config(extra));
        let (_, stack) = all.iter().find(|(f, _)| *f == "stack.json").unwrap();
        stack["panels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["title"].as_str().unwrap().to_string())
            .collect()
    };
    let superset = |titles: &[String]| titles.iter().filter(|t| t.starts_with("Superset:")).count();
    assert_eq!(superset(&panels("")), 4);
    assert_eq!(superset(&panels("[superset]\nenabled = false\n")), 0);
    assert_eq!(superset(&panels("[statsd_exporter]\nenabled = false\n")), 0);
    assert_eq!(panels("[superset]\nenabled = false\n").len(), 7);
    let postgres = |titles: &[String]| {
        titles
            .iter()
            .filter(|t| t.starts_with("PostgreSQL"))
            .count()
    };
    assert_eq!(postgres(&panels("")), 1);
    assert_eq!(
        postgres(&panels("[postgres_exporter]\nenabled = false\n")),
        0
    );
}

/// A primary with two worker hosts: w1 added with a certificate identity, w2 before
/// identities existed.
const WITH_WORKERS: &str = "[workers]\naddress = \"10.0.0.1\"\n[workers.hosts.w1]\nadded = 1\naddress = \"10.0.0.2\"\nidentity = \"0123456789abcdef0123456789abcdef\"\n[workers.hosts.w2]\nadded = 2\naddress = \"fd00::3\"\n";

/// What `join` writes on worker host w1.
const WORKER_HOST: &str = "[stack]\nrole = \"worker\"\n[worker]\nname = \"w1\"\naddress = \"10.0.0.2\"\nprimary = \"10.0.0.1\"\n";

#[test]
fn worker_hosts_reach_postgres_and_the_broker_over_tls_with_their_own_logins_only() {
    let file = file_of;
    let alone = render_all(&config(""), &bookworm());
    let conf = file(&alone, "/etc/analytics-stack/postgres/postgresql.conf");
    assert!(conf.contains("listen_addresses = '127.0.0.1'\n") && !conf.contains("ssl"));
    assert!(!file(&alone, "/etc/analytics-stack/postgres/pg_hba.conf").contains("hostssl"));
    assert!(!file(&alone, "/etc/analytics-stack/nginx/nginx.conf").contains("ngx_stream_module"));

    let with = render_all(&config(WITH_WORKERS), &bookworm());
    let conf = file(&with, "/etc/analytics-stack/postgres/postgresql.conf");
    assert!(
        conf.contains("listen_addresses = '127.0.0.1,10.0.0.1'\n"),
        "{conf}"
    );
    assert!(conf.contains("ssl = on\n"), "{conf}");
    assert!(
        conf.contains("ssl_ca_file = '/var/lib/analytics-stack/tls/ca.crt'\n"),
        "client certificates are checked against the stack CA: {conf}"
    );
    let hba = file(&with, "/etc/analytics-stack/postgres/pg_hba.conf");
    // Each worker's role from its own address only, with its password and its
    // certificate (CN = the role).
    assert!(
        hba.contains("hostssl airflow,warehouse   worker_w1   10.0.0.2/32   scram-sha-256 clientcert=verify-full\n")
            && hba
                .contains("hostssl airflow,warehouse   worker_w2   fd00::3/128   scram-sha-256 clientcert=verify-full\n"),
        "{hba}"
    );
    assert_eq!(hba.matches("hostssl").count(), 2, "{hba}");
    assert!(
        !hba.lines()
            .any(|l| l.starts_with("host ") && !l.contains("127.0.0.1") && !l.contains("::1")),
        "{hba}"
    );
    let nginx = file(&with, "/etc/analytics-stack/nginx/nginx.conf");
    assert!(
        nginx.contains("listen 10.0.0.1:6390 ssl;")
            && nginx.contains("        ssl_verify_client on;\n        ssl_client_certificate /var/lib/analytics-stack/tls/ca.crt;\n        ssl_verify_depth 1;\n        allow 10.0.0.2;\n        allow fd00::3;\n        deny all;\n        proxy_pass $stack_broker_upstream;"),
        "{nginx}"
    );
    // The broker's door leads somewhere only for a current worker's certificate from
    // that worker's address; w2, added before identities, is led nowhere.
    let stream = &nginx[nginx.find("stream {").expect(&nginx)..];
    for want in [
        "    map $ssl_client_s_dn $stack_cert_worker {\n        default \"\";\n        'CN=worker_w1,OU=0123456789abcdef0123456789abcdef,O=analytics-stack workers' w1;\n    }\n",
        "        10.0.0.2 w1;\n",
        "    map \"$stack_peer_worker:$stack_cert_worker\" $stack_broker_upstream {\n        default unix:/run/analytics-nginx/no-door;\n        \"w1:w1\" 127.0.0.1:6379;\n    }\n",
    ] {
        assert!(stream.contains(want), "{want}\n{stream}");
    }
    assert!(
        !stream.contains("w2") && !stream.contains("-local"),
        "{stream}"
    );
    // The HTTP doors between the hosts: a current worker's certificate and address,
    // or loopback; the enrollment door for worker addresses, POST only.
    let http = &nginx[..nginx.find("stream {").unwrap()];
    for want in [
        "        ssl_verify_client optional;\n        ssl_client_certificate /var/lib/analytics-stack/tls/ca.crt;\n",
        "        ~^-local: 1;\n        \"w1:w1:SUCCESS\" 1;\n",
        "        127.0.0.0/8 -local;\n",
        "location = /stack-enroll {\n            allow 10.0.0.2;\n            allow fd00::3;\n            deny all;\n            limit_except POST {",
        "proxy_pass http://unix:/run/analytics-stackd/enroll.sock;",
    ] {
        assert!(http.contains(want), "{want}\n{http}");
    }
    for door in [
        "location = /loki/api/v1/push {",
        "location ^~ /stack-dags/ {",
        "location /airflow/execution/ {",
    ] {
        let at = &http[http.find(door).expect(door)..];
        let body = &at[..at.find("\n        }").unwrap()];
        assert!(
            body.contains("if ($stack_worker_door = 0) {\n                return 403;"),
            "{door}: {body}"
        );
    }
    // Without workers, no client certificate is asked for and no enrollment door.
    let alone_nginx = file(&alone, "/etc/analytics-stack/nginx/nginx.conf");
    assert!(
        !alone_nginx.contains("ssl_verify_client optional")
            && !alone_nginx.contains("stack-enroll"),
        "{alone_nginx}"
    );
    // On the broker, each login reaches its applications' keys and channels alone:
    // the worker Airflow's (Superset's is not granted here), each application its own.
    let auth = file(&with, "/etc/analytics-stack/redis/broker-auth.conf");
    let commands = "+@all -@admin -@dangerous -scan -randomkey -pubsub";
    for line in [
        format!("user worker-w1 on >@@secret:worker-w1-redis@@ resetkeys resetchannels ~airflow:* &airflow:* {commands}\n"),
        format!("user airflow on >@@secret:redis-broker-airflow@@ resetkeys resetchannels ~airflow:* &airflow:* {commands}\n"),
        format!("user superset on >@@secret:redis-broker-superset@@ resetkeys resetchannels ~superset:* &superset:* {commands}\n"),
    ] {
        assert!(auth.contains(&line), "{line}\n{auth}");
    }
    assert!(!auth.contains("~*") && !auth.contains("&*"), "{auth}");
    assert!(!file(&with, "/etc/analytics-stack/redis/cache-auth.conf").contains("user "));
    let pg = with.iter().find(|s| s.name == "postgres").unwrap();
    assert!(pg.secrets.contains(&"worker-w1-postgres".to_string()));
    let Provision::PostgresRoles {
        roles,
        worker_group,
        ..
    } = &pg.provision[0]
    else {
        panic!()
    };
    assert!(worker_group.is_some());
    let role = roles.iter().find(|r| r.role == "worker_w1").unwrap();
    assert_eq!(role.member_of, ["analytics_workers"]);
    let nginx = with.iter().find(|s| s.name == "nginx").unwrap();
    assert!(nginx.packages.contains(&"libnginx-mod-stream".to_string()));
    // What the workers reach is declared: the planner checks those ports too.
    let ports: Vec<String> = with
        .iter()
        .flat_map(|s| &s.ports)
        .filter(|p| !p.address.is_loopback() && !p.address.is_unspecified())
        .map(|p| format!("{}:{}", p.address, p.port))
        .collect();
    assert_eq!(ports, ["10.0.0.1:5432", "10.0.0.1:6390"]);
}

#[test]
fn the_stack_ca_is_served_on_both_doors_only_when_it_is_the_stacks() {
    let conf = |extra: &str| crate::components::nginx::render_conf(&config(extra));
    let served = conf("");
    assert_eq!(
        served.matches("location = /stack-ca.crt {").count(),
        2,
        "{served}"
    );
    assert!(served.contains("alias /var/lib/analytics-stack/tls/ca.crt;"));
    assert!(!conf("[nginx]\ntls = \"off\"\n").contains("stack-ca.crt"));
    assert!(!conf(
        "[nginx]\ntls = \"files\"\ncertificate = \"/etc/ssl/a.crt\"\nkey = \"/etc/ssl/a.key\"\n"
    )
    .contains("stack-ca.crt"));
}

#[test]
fn a_worker_host_runs_its_celery_worker_node_exporter_and_log_shipper_only() {
    let specs = render_all(&config(WORKER_HOST), &bookworm());
    let names: Vec<&str> = specs.iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        ["node-exporter", "alloy", "airflow", "dlt", "dag-sync"]
    );
    let units: Vec<String> = specs
        .iter()
        .flat_map(|s| s.units.iter().map(|u| u.name.clone()))
        .collect();
    assert_eq!(
        units,
        [
            "analytics-node-exporter.service",
            "analytics-alloy.service",
            "analytics-airflow-worker.service",
            "analytics-dag-sync.timer",
            "analytics-dag-sync.service"
        ]
    );
    // Nothing is generated here: the two logins come from the join, the rest of
    // Airflow's secrets (Fernet key, JWT secret, admin) stay on the primary.
    assert!(specs.iter().all(|s| s.secrets.is_empty()));
    let env = crate::components::airflow::render_worker_env(&config(WORKER_HOST));
    let names = crate::model::secret_names(&env);
    assert_eq!(
        names.iter().collect::<std::collections::BTreeSet<_>>(),
        ["primary-broker", "primary-postgres"]
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .iter()
            .collect(),
        "{env}"
    );
    for want in [
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL=https://10.0.0.1:443/airflow/execution/\n",
        "AIRFLOW__API__SSL_CA_FILE=/var/lib/analytics-stack/tls/ca.crt\n",
        "AIRFLOW__API__CLIENT_USE_PUBLIC_CERTS=False\n",
        "AIRFLOW__CELERY__BROKER_URL=rediss://worker-w1:@@secret:primary-broker@@@10.0.0.1:6390/0\n",
        "AIRFLOW__CELERY__SSL_ACTIVE=True\n",
        // This worker's certificate at every door: the broker, the result backend,
        // the execution API, PostgreSQL (libpq's variables).
        "AIRFLOW__CELERY__SSL_MUTUAL_TLS=True\n",
        "AIRFLOW__CELERY__SSL_CERT=/run/credentials/analytics-airflow-worker.service/client.crt\n",
        "AIRFLOW__CELERY__SSL_KEY=/run/credentials/analytics-airflow-worker.service/client.key\n",
        "AIRFLOW__CELERY__RESULT_BACKEND=rediss://worker-w1:@@secret:primary-broker@@@10.0.0.1:6390/1?ssl_cert_reqs=required&ssl_ca_certs=/var/lib/analytics-stack/tls/ca.crt&ssl_certfile=/run/credentials/analytics-airflow-worker.service/client.crt&ssl_keyfile=/run/credentials/analytics-airflow-worker.service/client.key\n",
        "AIRFLOW__API__CLIENT_SSL_CERT=/run/credentials/analytics-airflow-worker.service/client.crt\n",
        "AIRFLOW__API__CLIENT_SSL_KEY=/run/credentials/analytics-airflow-worker.service/client.key\n",
        "PGSSLCERT=/run/credentials/analytics-airflow-worker.service/client.crt\n",
        "PGSSLKEY=/run/credentials/analytics-airflow-worker.service/client.key\n",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=postgresql+psycopg2://worker_w1:@@secret:primary-postgres@@@10.0.0.1:5432/airflow?sslmode=verify-full&sslrootcert=/var/lib/analytics-stack/tls/ca.crt\n",
        "AIRFLOW__CORE__DAGS_FOLDER=/var/lib/analytics-stack/dag-sync/current/dags\n",
        "ANALYTICS_STACK_PIPELINES=/var/lib/analytics-stack/dag-sync/current/pipelines\n",
        // Airflow's broker keyspace, as on the primary.
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX=airflow:\n",
        "AIRFLOW__CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX=airflow:\n",
        "AIRFLOW__CELERY__WORKER_ENABLE_REMOTE_CONTROL=False\n",
    ] {
        assert!(env.contains(want), "{want} in {env}");
    }
    assert!(
        !env.contains("FERNET") && !env.contains("JWT") && !env.contains("127.0.0.1"),
        "{env}"
    );
    // node_exporter on the worker's address (the primary scrapes it there), over
    // TLS, for clients with a certificate of the stack CA only.
    let node = specs.iter().find(|s| s.name == "node-exporter").unwrap();
    assert!(node.units[0].content.contains(
        "--web.listen-address=10.0.0.2:9100 --web.config.file=/etc/analytics-stack/node-exporter/web.yml "
    ));
    let web: serde_yaml::Value = serde_yaml::from_str(&node.files[0].template).unwrap();
    let tls = &web["tls_server_config"];
    assert_eq!(tls["client_auth_type"], "RequireAndVerifyClientCert");
    assert_eq!(tls["client_ca_file"], "/var/lib/analytics-stack/tls/ca.crt");
    assert_eq!(
        tls["key_file"],
        "/run/credentials/analytics-node-exporter.service/client.key"
    );
    assert!(matches!(
        node.probes[0],
        crate::model::Probe::HttpsAt { .. }
    ));
    assert_eq!(node.ports[0].address.to_string(), "10.0.0.2");
    // The journal to the primary's Loki through its door, labelled with the name.
    let alloy = specs.iter().find(|s| s.name == "alloy").unwrap();
    let text = &alloy.files[0].template;
    assert!(
        text.contains("url = \"https://10.0.0.1:443/loki/api/v1/push\"")
            && text.contains("ca_file   = \"/var/lib/analytics-stack/tls/ca.crt\"")
            && text.contains("cert_file = \"/run/credentials/analytics-alloy.service/client.crt\"")
            && text.contains("host = \"w1\""),
        "{text}"
    );
    let promtail = crate::components::log_shipper::render_promtail(&config(&format!(
        "{WORKER_HOST}[log_shipper]\nkind = \"promtail\"\n"
    )));
    assert!(promtail.contains("  - url: https://10.0.0.1:443/loki/api/v1/push\n    tls_config:\n      ca_file: /var/lib/analytics-stack/tls/ca.crt\n      cert_file: /run/credentials/analytics-promtail.service/client.crt\n      key_file: /run/credentials/analytics-promtail.service/client.key\n") && promtail.contains("host: w1\n"), "{promtail}");
    // Each unit that reaches the primary loads the worker's certificate and key as
    // credentials (the key is root's on disk).
    for (component, unit) in [
        ("airflow", "analytics-airflow-worker.service"),
        ("dag-sync", "analytics-dag-sync.service"),
        ("alloy", "analytics-alloy.service"),
        ("node-exporter", "analytics-node-exporter.service"),
    ] {
        let spec = specs.iter().find(|s| s.name == component).unwrap();
        let unit = spec.units.iter().find(|u| u.name == unit).expect(unit);
        assert!(
            unit.content
                .contains("LoadCredential=client.crt:/var/lib/analytics-stack/tls/client.crt\n")
                && unit.content.contains(
                    "LoadCredential=client.key:/var/lib/analytics-stack/tls/client.key\n"
                ),
            "{}",
            unit.content
        );
    }
    // The worker unit starts after the first sync of the DAGs.
    let worker = &specs.iter().find(|s| s.name == "airflow").unwrap().units[0];
    assert!(
        worker
            .content
            .contains("After=network.target analytics-dag-sync.service\n"),
        "{}",
        worker.content
    );
}

#[test]
fn a_primary_lets_its_worker_hosts_reach_the_execution_api_log_push_and_dags_only() {
    let conf = crate::components::nginx::render_conf(&config(WITH_WORKERS));
    let allowed = "allow 127.0.0.0/8;\n            allow ::1;\n            allow 10.0.0.2;\n            allow fd00::3;\n            deny all;";
    let execution = &conf[conf.find("location /airflow/execution/ {").expect(&conf)..];
    assert!(execution[..300].contains(allowed), "{execution}");
    let push = &conf[conf.find("location = /loki/api/v1/push {").expect(&conf)..];
    assert!(
        push[..200].contains("allow 10.0.0.2;\n            allow fd00::3;\n            deny all;"),
        "{push}"
    );
    // To Loki's socket, in the worker's tenant (named from its certificate).
    assert!(
        push[..600].contains("proxy_pass http://analytics_loki;\n            proxy_set_header X-Scope-OrgID worker-$stack_cert_worker;"),
        "{push}"
    );
    let dags = block(&conf, "location ^~ /stack-dags/ {");
    assert!(
        dags.contains("alias /var/lib/analytics-stack/dag-bundle/;")
            && dags.contains("disable_symlinks on;"),
        "{dags}"
    );
    // Without workers: no push door, no DAGs, the execution API for loopback only.
    let alone = crate::components::nginx::render_conf(&config(""));
    assert!(!alone.contains("location = /loki/api/v1/push") && !alone.contains("stack-dags"));
    let execution = &alone[alone.find("location /airflow/execution/ {").unwrap()..];
    assert!(execution[..200]
        .contains("allow 127.0.0.0/8;\n            allow ::1;\n            deny all;"));
    // Prometheus scrapes each worker's node_exporter, named by its worker name, in
    // the `node` job, over TLS with the primary's client certificate.
    let prom = crate::components::prometheus::render_config(&config(WITH_WORKERS));
    let workers = &prom[prom.find("  - job_name: 'node-workers'\n").expect(&prom)..];
    assert!(
        workers.starts_with("  - job_name: 'node-workers'\n    metrics_path: '/metrics'\n    scheme: https\n    tls_config:\n      ca_file: '/var/lib/analytics-stack/tls/ca.crt'\n      cert_file: '/run/credentials/analytics-prometheus.service/primary-client.crt'\n      key_file: '/run/credentials/analytics-prometheus.service/primary-client.key'\n    static_configs:\n"),
        "{prom}"
    );
    for target in [
        "      - targets: ['10.0.0.2:9100']\n        labels:\n          job: 'node'\n          instance: 'w1'\n",
        "      - targets: ['[fd00::3]:9100']\n        labels:\n          job: 'node'\n          instance: 'w2'\n",
    ] {
        assert!(workers.contains(target), "{prom}");
    }
    let parsed: serde_yaml::Value = serde_yaml::from_str(&prom).unwrap();
    assert_eq!(
        parsed["scrape_configs"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter(|j| j["job_name"] == "node-workers")
            .count(),
        1
    );
    let prometheus = render_all(&config(WITH_WORKERS), &bookworm())
        .into_iter()
        .find(|s| s.name == "prometheus")
        .unwrap();
    assert!(prometheus.units[0].content.contains(
        "LoadCredential=primary-client.key:/var/lib/analytics-stack/tls/primary-client.key\n"
    ));
    // Celery results go where the workers reach: the broker's Redis.
    let env = crate::components::airflow::render_env(&config(WITH_WORKERS));
    assert!(
        env.contains(
            "AIRFLOW__CELERY__RESULT_BACKEND=redis://airflow:@@secret:redis-broker-airflow@@@127.0.0.1:6379/1\n"
        ),
        "{env}"
    );
    for line in [
        "AIRFLOW__CELERY__BROKER_URL=redis://airflow:@@secret:redis-broker-airflow@@@127.0.0.1:6379/0\n",
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX=airflow:\n",
        "AIRFLOW__CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX=airflow:\n",
        "AIRFLOW__CELERY__WORKER_ENABLE_REMOTE_CONTROL=False\n",
    ] {
        assert!(env.contains(line), "{line}\n{env}");
    }
    assert!(!env.contains("@@secret:redis-broker@@"), "{env}");
    assert!(crate::components::airflow::render_env(&config(""))
        .contains("AIRFLOW__CELERY__RESULT_BACKEND=db+postgresql://"));
    // The DAG folders are published for them.
    let specs = render_all(&config(WITH_WORKERS), &bookworm());
    let bundle = specs.iter().find(|s| s.name == "dag-bundle").unwrap();
    assert_eq!(bundle.dirs[1].mode, 0o2750);
    assert_eq!(bundle.dirs[1].group, "analytics-nginx");
    // Without its local worker, the primary's tasks run on the worker hosts only.
    let off = render_all(
        &config(&format!("{WITH_WORKERS}[airflow]\nlocal_worker = false\n")),
        &bookworm(),
    );
    assert!(!off
        .iter()
        .flat_map(|s| &s.units)
        .any(|u| u.name == "analytics-airflow-worker.service"));
}

#[test]
fn the_host_and_logs_dashboards_select_hosts() {
    let all = crate::components::dashboards::all();
    for (file, label) in [
        ("host.json", "instance=~\"$host\""),
        ("logs.json", "host=~\"$host\""),
    ] {
        let (_, dashboard) = all.iter().find(|(f, _)| *f == file).unwrap();
        let variables = dashboard["templating"]["list"].as_array().unwrap();
        assert_eq!(variables[0]["name"], "host", "{file}");
        assert_eq!(variables[0]["includeAll"], true, "{file}");
        let exprs: Vec<&str> = dashboard["panels"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["targets"].as_array().unwrap())
            .map(|t| t["expr"].as_str().unwrap())
            .collect();
        assert!(!exprs.is_empty());
        for expr in exprs {
            assert!(expr.contains(label), "{file}: {expr}");
        }
    }
}

#[test]
fn the_stacks_timers_are_part_of_its_target_and_start_their_service() {
    let specs = render_all(&config(WITH_WORKERS), &bookworm());
    let unit = |name: &str| {
        specs
            .iter()
            .flat_map(|s| &s.units)
            .find(|u| u.name == name)
            .unwrap_or_else(|| panic!("{name}"))
            .content
            .clone()
    };
    assert_eq!(
        unit("analytics-backup.timer"),
        "# Generated by analytics-stackd; changes are overwritten by the next apply.\n\
         [Unit]\nDescription=analytics-stack: scheduled backup\nPartOf=analytics-stack.target\n\n\
         [Timer]\nOnCalendar=*-*-* 02:30:00\nPersistent=true\nRandomizedDelaySec=10min\n\
         Unit=analytics-backup.service\n\n[Install]\nWantedBy=analytics-stack.target\n"
    );
    let publish = unit("analytics-dag-bundle.timer");
    assert!(
        publish.contains("[Timer]\nOnActiveSec=0\nOnUnitInactiveSec=30s\nAccuracySec=1s\nUnit=analytics-dag-bundle.service\n"),
        "{publish}"
    );
}

/// A primary whose worker hosts run Superset's Celery worker too.
const WITH_SUPERSET_WORKERS: &str = "[workers]\naddress = \"10.0.0.1\"\nsuperset = true\n[workers.hosts.w1]\nadded = 1\naddress = \"10.0.0.2\"\n[workers.hosts.w2]\nadded = 2\naddress = \"fd00::3\"\n";

/// Superset's caches read back only what cached results are made of: a pickle that
/// would run a command (what a worker host granted Superset could write into the
/// cache Redis) is a miss, and the command does not run — while plain `pickle`
/// runs it, so the check can fail; Superset's own kinds of values round-trip.
#[test]
fn superset_caches_load_no_pickle_that_runs_code() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("cache_pickle.py");
    std::fs::write(&module, crate::components::superset::CACHE_PICKLE_PY).unwrap();
    let script = r#"
import datetime, decimal, os, pickle, sys
sys.path.insert(0, sys.argv[1])
from cache_pickle import StackRedisSerializer
s = StackRedisSerializer()
mark = os.path.join(sys.argv[1], "ran")
evil = [
    b"!cposix\nsystem\n(S'touch " + mark.encode() + b"'\ntR.",
    b"!cbuiltins\neval\n(S'open(\"" + mark.encode() + b"\", \"w\")'\ntR.",
    b"!csubprocess\nPopen\n((S'touch'\nS'" + mark.encode() + b"'\nltR.",
    b"!cpandas.core.frame\nos.system\n(S'touch " + mark.encode() + b"'\ntR.",
]
for payload in evil:
    assert s.loads(payload) is None, payload
    assert not os.path.exists(mark), payload
value = {"query": "SELECT 1", "n": 2.5, "rows": [1, "a", None, b"\x00"], "at": datetime.datetime(2026, 12, 6, tzinfo=datetime.timezone.utc), "d": decimal.Decimal("1.5"), "s": {1, 2}}
assert s.loads(s.dumps(value)) == value
assert s.loads(s.dumps(42)) == 42 and s.dumps(42) == b"42"
assert s.loads(b"plain") == b"plain" and s.loads(None) is None
# Plain pickle runs the first one: what cachelib's own serializer would have done.
pickle.loads(evil[0][1:])
assert os.path.exists(mark)
print("ok")
"#;
    let out = std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // And superset_config.py reads every Redis cache with it.
    let config = crate::components::superset::render_config(
        &crate::config::load_texts(&[("t.toml", "")]).unwrap(),
    );
    assert!(
        config.contains("class _CacheUnpickler(_pickle.Unpickler):")
            && config.contains("cachelib.redis.RedisCache.serializer = StackRedisSerializer()"),
        "{config}"
    );
    assert_compiles_as_python(&config);
}

/// CPython compiles `text` (a rendered Python file, secrets as their references).
fn assert_compiles_as_python(text: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("superset_config.py");
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new("/usr/bin/python3")
        .args(["-m", "py_compile"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn file_of(specs: &[ComponentSpec], path: &str) -> String {
    specs
        .iter()
        .flat_map(|s| &s.files)
        .find(|f| f.path == std::path::Path::new(path))
        .map(|f| f.template.clone())
        .unwrap_or_else(|| panic!("{path}"))
}

#[test]
fn superset_on_worker_hosts_opens_the_cache_door_and_registers_the_warehouse_by_address() {
    let specs = render_all(&config(WITH_SUPERSET_WORKERS), &bookworm());
    let nginx = file_of(&specs, "/etc/analytics-stack/nginx/nginx.conf");
    let cache_door = &nginx[nginx.find("listen 10.0.0.1:6391 ssl;").expect(&nginx)..];
    assert!(
        cache_door[..cache_door.len().min(600)].contains("ssl_verify_client on;")
            && cache_door[..cache_door.len().min(600)].contains("allow 10.0.0.2;\n        allow fd00::3;\n        deny all;\n        proxy_pass $stack_cache_upstream;"),
        "{cache_door}"
    );
    assert!(nginx.contains("listen 10.0.0.1:6390 ssl;"));
    // The workers' Redis users on the cache too (one password for both doors).
    let auth = file_of(&specs, "/etc/analytics-stack/redis/cache-auth.conf");
    assert!(
        auth.contains("user worker-w2 on >@@secret:worker-w2-redis@@ resetkeys resetchannels ~* &* +@all -@admin -@dangerous -scan -randomkey -pubsub\n"),
        "{auth}"
    );
    // On the broker, granted Superset: both applications' keyspaces, nothing else.
    let auth = file_of(&specs, "/etc/analytics-stack/redis/broker-auth.conf");
    assert!(
        auth.contains("user worker-w2 on >@@secret:worker-w2-redis@@ resetkeys resetchannels ~airflow:* &airflow:* ~superset:* &superset:* +@all -@admin -@dangerous -scan -randomkey -pubsub\n"),
        "{auth}"
    );
    let config_py = file_of(&specs, "/etc/analytics-stack/superset/superset_config.py");
    for line in [
        "    broker_transport_options = {\"global_keyprefix\": \"superset:\"}\n",
        "    result_backend_transport_options = {\"global_keyprefix\": \"superset:\"}\n",
        "    worker_enable_remote_control = False\n",
    ] {
        assert!(config_py.contains(line), "{line}\n{config_py}");
    }
    // Superset's database for the workers' roles; the warehouse role over TLS from
    // the primary's own worker address and the workers' (the registered URI), from a
    // worker with a certificate of the stack CA too.
    let hba = file_of(&specs, "/etc/analytics-stack/postgres/pg_hba.conf");
    for line in [
        "hostssl airflow,warehouse,superset   worker_w1   10.0.0.2/32   scram-sha-256 clientcert=verify-full\n",
        "hostssl warehouse   warehouse   10.0.0.1/32   scram-sha-256\n",
        "hostssl warehouse   warehouse   10.0.0.2/32   scram-sha-256 clientcert=verify-ca\n",
        "hostssl warehouse   warehouse   fd00::3/128   scram-sha-256 clientcert=verify-ca\n",
    ] {
        assert!(hba.contains(line), "{line} in {hba}");
    }
    assert_eq!(hba.matches("hostssl").count(), 5, "{hba}");
    let pg = specs.iter().find(|s| s.name == "postgres").unwrap();
    let Provision::PostgresRoles { worker_group, .. } = &pg.provision[0] else {
        panic!()
    };
    let group = worker_group.as_ref().unwrap();
    assert_eq!(group.acts_as, ["warehouse", "superset"]);
    assert_eq!(group.databases, ["airflow", "warehouse", "superset"]);
    let superset = file_of(&specs, "/etc/analytics-stack/superset/superset_config.py");
    assert!(
        superset.contains("ANALYTICS_STACK_WAREHOUSE_URI = \"postgresql+psycopg2://warehouse:@@secret:postgres-warehouse@@@10.0.0.1:5432/warehouse?sslmode=verify-full&sslrootcert=/var/lib/analytics-stack/tls/ca.crt\"")
            && superset.contains("ANALYTICS_STACK_RUN_ASYNC = True"),
        "{superset}"
    );
    let ports: Vec<String> = specs
        .iter()
        .flat_map(|s| &s.ports)
        .filter(|p| !p.address.is_loopback() && !p.address.is_unspecified())
        .map(|p| format!("{}:{}", p.address, p.port))
        .collect();
    assert_eq!(ports, ["10.0.0.1:5432", "10.0.0.1:6390", "10.0.0.1:6391"]);

    // Without it: no cache door, the warehouse on loopback, no Superset grant.
    let specs = render_all(&config(WITH_WORKERS), &bookworm());
    let nginx = file_of(&specs, "/etc/analytics-stack/nginx/nginx.conf");
    assert!(!nginx.contains(":6391"), "{nginx}");
    let superset = file_of(&specs, "/etc/analytics-stack/superset/superset_config.py");
    assert!(
        superset.contains("@127.0.0.1:5432/warehouse\"")
            && superset.contains("ANALYTICS_STACK_RUN_ASYNC = False"),
        "{superset}"
    );
}

#[test]
fn a_worker_host_granted_superset_runs_its_celery_worker_on_the_primarys_doors() {
    let text = format!("{WORKER_HOST}primary_cache_port = 6391\n[superset]\nenabled = true\n");
    let specs = render_all(&config(&text), &bookworm());
    let superset = specs
        .iter()
        .find(|s| s.name == "superset")
        .expect("superset");
    let units: Vec<&str> = superset.units.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(units, ["analytics-superset-worker.service"]);
    assert!(
        superset.units[0].content.contains("After=network.target\n")
            && !superset.units[0].content.contains("superset-init"),
        "{}",
        superset.units[0].content
    );
    assert!(superset.secrets.is_empty() && superset.ports.is_empty() && superset.probes.is_empty());
    let conf = &superset.files[0].template;
    let names = crate::model::secret_names(conf);
    assert_eq!(
        names
            .iter()
            .map(String::as_str)
            .collect::<std::collections::BTreeSet<_>>(),
        ["primary-broker", "primary-postgres", "superset-secret-key"].into(),
        "{conf}"
    );
    for want in [
        "SQLALCHEMY_DATABASE_URI = \"postgresql+psycopg2://worker_w1:@@secret:primary-postgres@@@10.0.0.1:5432/superset?sslmode=verify-full&sslrootcert=/var/lib/analytics-stack/tls/ca.crt&options=-c%20role%3Dsuperset\"",
        "return \"rediss://worker-w1:@@secret:primary-broker@@@10.0.0.1:6391/\" + str(db) + \"?ssl_cert_reqs=required&ssl_ca_certs=/var/lib/analytics-stack/tls/ca.crt&ssl_certfile=/run/credentials/analytics-superset-worker.service/client.crt&ssl_keyfile=/run/credentials/analytics-superset-worker.service/client.key\"",
        "broker_url = \"rediss://worker-w1:@@secret:primary-broker@@@10.0.0.1:6390\" + \"/1\"",
        "    broker_use_ssl = {\n        \"ssl_cert_reqs\": ssl.CERT_REQUIRED,\n        \"ssl_ca_certs\": \"/var/lib/analytics-stack/tls/ca.crt\",\n        \"ssl_certfile\": \"/run/credentials/analytics-superset-worker.service/client.crt\",\n        \"ssl_keyfile\": \"/run/credentials/analytics-superset-worker.service/client.key\",\n    }",
    ] {
        assert!(conf.contains(want), "{want} in {conf}");
    }
    assert!(
        !conf.contains("127.0.0.1") && !conf.contains("ANALYTICS_STACK_WAREHOUSE_URI"),
        "{conf}"
    );
    assert_compiles_as_python(conf);
    // Not granted (no file of the user's turns it on): no Superset at all.
    let specs = render_all(&config(WORKER_HOST), &bookworm());
    assert!(specs.iter().all(|s| s.name != "superset"));
}

#[test]
fn every_secret_a_file_names_is_generated_or_comes_from_join() {
    let facts = crate::facts::HostFacts::default();
    for text in [
        "",
        ALL_ON,
        NO_APPS,
        WITH_WORKERS,
        WITH_SUPERSET_WORKERS,
        "[log_shipper]\nkind = \"promtail\"\n[loki]\nenabled = true\n",
    ] {
        let specs = render_all(&config(text), &bookworm());
        let missing = crate::plan::missing_secrets(&specs, &facts);
        assert!(missing.is_empty(), "{text}: {missing:?}");
    }
    // A worker host: its logins and Superset's key exist once `join` wrote them.
    let worker = format!("{WORKER_HOST}[superset]\nenabled = true\n");
    let specs = render_all(&config(&worker), &bookworm());
    let missing = crate::plan::missing_secrets(&specs, &facts).join("\n");
    for name in ["primary-postgres", "primary-broker", "superset-secret-key"] {
        assert!(
            missing.contains(&format!("the secret {name},")),
            "{missing}"
        );
    }
    let mut joined = facts.clone();
    for name in ["primary-postgres", "primary-broker"] {
        joined.secrets.insert(name.into(), "x".into());
    }
    let missing = crate::plan::missing_secrets(&specs, &joined);
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert!(
        missing[0].starts_with("/etc/analytics-stack/superset/superset_config.py needs the secret superset-secret-key,"),
        "{missing:?}"
    );
    joined
        .secrets
        .insert("superset-secret-key".into(), "x".into());
    assert!(crate::plan::missing_secrets(&specs, &joined).is_empty());
}

#[test]
fn archiving_is_refused_for_a_postgresql_its_pgbackrest_cannot_read() {
    use super::pgbackrest::{newest_major_supported, preflight};
    assert_eq!(newest_major_supported("2.45"), 15);
    assert_eq!(newest_major_supported("2.47"), 16);
    assert_eq!(newest_major_supported("2.55.1"), 17);
    let on_17 = config("[postgres]\nmajor = 17\n");
    // Debian 12's pgBackRest (2.45), installed or to be: refused, saying what to do.
    let e = preflight(&on_17, &bookworm(), None).unwrap_err();
    assert!(e.contains("PostgreSQL 17 with continuous archiving needs pgBackRest 2.54 or newer; the distribution's is 2.45"), "{e}");
    assert!(e.contains("[postgres.archiving] enabled = false"), "{e}");
    let e = preflight(&on_17, &bookworm(), Some("2.45-1")).unwrap_err();
    assert!(e.contains("this host's is 2.45,"), "{e}");
    // A newer one installed (PGDG's), the default major, or archiving off: fine.
    assert!(preflight(&on_17, &bookworm(), Some("2.55.1-1.pgdg120+1")).is_ok());
    assert!(preflight(&config(""), &bookworm(), None).is_ok());
    let off = config("[postgres]\nmajor = 17\n[postgres.archiving]\nenabled = false\n");
    assert!(preflight(&off, &bookworm(), None).is_ok());
}
