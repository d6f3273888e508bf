use super::*;

fn with(files: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    load_texts(files)
}

#[test]
fn embedded_default_is_complete_and_valid() {
    let config = with(&[]).expect("default must load");
    assert_eq!(config.nginx.port.get(), 80);
    assert_eq!(config.postgres.port.get(), 5432);
    assert_eq!(config.redis.broker.port.get(), 6379);
    assert_eq!(config.redis.cache.port.get(), 6380);
    assert_eq!(config.postgres.shared_buffers.megabytes(), 128);
    assert!(config.nginx.enabled && config.postgres.enabled && config.redis.enabled);
}

#[test]
fn files_merge_key_by_key_in_order() {
    let config = with(&[
        (
            "stack.toml",
            "[nginx]\nport = 8080\n[redis.cache]\nmaxmemory = \"1GB\"\n",
        ),
        (
            "stack.d/10-local.toml",
            "[nginx]\nport = 8081\n[postgres]\nenabled = false\n[airflow]\nenabled = false\n[superset]\nenabled = false\n[dlt]\nenabled = false\n",
        ),
    ])
    .unwrap();
    assert_eq!(config.nginx.port.get(), 8081);
    assert_eq!(
        config.nginx.listen.to_string(),
        "0.0.0.0",
        "untouched keys keep the default"
    );
    assert_eq!(config.redis.cache.maxmemory.megabytes(), 1024);
    assert_eq!(config.redis.broker.maxmemory.megabytes(), 256);
    assert!(!config.postgres.enabled);
}

#[test]
fn every_problem_is_reported_with_file_line_and_column() {
    let text = "[nginx]\nport = 0\nlisten = \"nowhere\"\n[postgres]\nshared_bufers = \"1GB\"\n[mystery]\nx = 1\n";
    let errors = with(&[("/etc/analytics-stack/stack.toml", text)])
        .unwrap_err()
        .0;
    let rendered: Vec<String> = errors.iter().map(|d| d.to_string()).collect();
    assert_eq!(errors.len(), 4, "{rendered:#?}");
    let find = |needle: &str| {
        errors
            .iter()
            .find(|d| d.message.contains(needle))
            .unwrap_or_else(|| panic!("no diagnostic mentions {needle}: {rendered:#?}"))
    };
    let port = find("nginx.port");
    assert_eq!((port.line, port.column), (2, 8));
    assert!(port.message.contains("between 1 and 65535"));
    let listen = find("nginx.listen");
    assert_eq!((listen.line, listen.column), (3, 10));
    let typo = find("shared_bufers");
    assert_eq!((typo.line, typo.column), (5, 1));
    assert!(typo.message.contains("unknown field"));
    let section = find("mystery");
    assert_eq!((section.line, section.column), (6, 2));
    assert!(errors
        .iter()
        .all(|d| d.file == "/etc/analytics-stack/stack.toml"));
}

#[test]
fn syntax_errors_name_the_drop_in() {
    let errors = with(&[
        ("stack.toml", "[nginx]\nport = 81\n"),
        ("stack.d/20-bad.toml", "[redis\nport = 1\n"),
    ])
    .unwrap_err()
    .0;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].file, "stack.d/20-bad.toml");
    assert_eq!(errors[0].line, 1);
}

#[test]
fn problems_in_two_files_are_both_reported() {
    let errors = with(&[
        ("a.toml", "[nginx]\nport = \"eighty\"\n"),
        ("b.toml", "[redis.broker]\nmaxmemory = \"lots\"\n"),
    ])
    .unwrap_err()
    .0;
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!((errors[0].file.as_str(), errors[0].line), ("a.toml", 2));
    assert_eq!((errors[1].file.as_str(), errors[1].line), ("b.toml", 2));
}

#[test]
fn a_later_file_can_fix_nothing_it_does_not_set() {
    // b.toml sets another key; a.toml's bad value is still reported at a.toml.
    let errors = with(&[
        ("a.toml", "[postgres]\nmax_connections = 3\n"),
        ("b.toml", "[postgres]\nport = 5433\n"),
    ])
    .unwrap_err()
    .0;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].file, "a.toml");
    assert_eq!((errors[0].line, errors[0].column), (2, 19));
}

#[test]
fn two_components_on_one_port_are_refused() {
    let errors = with(&[("stack.toml", "[redis.cache]\nport = 5432\n")])
        .unwrap_err()
        .0;
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].message.contains("already used by postgres.port"),
        "{errors:?}"
    );
    assert_eq!((errors[0].file.as_str(), errors[0].line), ("stack.toml", 2));
}

#[test]
fn a_disabled_component_frees_its_port() {
    let config = with(&[(
        "stack.toml",
        "[postgres]\nenabled = false\n[redis.cache]\nport = 5432\n[airflow]\nenabled = false\n[superset]\nenabled = false\n[dlt]\nenabled = false\n",
    )])
    .unwrap();
    assert_eq!(config.redis.cache.port.get(), 5432);
}

#[test]
fn sizes_accept_units_in_any_case() {
    for (text, mb) in [("\"64mb\"", 64), ("\"2GB\"", 2048), ("\"2048kB\"", 2)] {
        let config =
            with(&[("s.toml", &format!("[postgres]\nshared_buffers = {text}\n"))]).unwrap();
        assert_eq!(config.postgres.shared_buffers.megabytes(), mb);
    }
    assert!(with(&[("s.toml", "[postgres]\nshared_buffers = \"12 parsecs\"\n")]).is_err());
}

#[test]
fn drop_ins_are_read_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("stack.d")).unwrap();
    std::fs::write(dir.path().join("stack.toml"), "[nginx]\nport = 8000\n").unwrap();
    std::fs::write(
        dir.path().join("stack.d/20-b.toml"),
        "[nginx]\nport = 8002\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("stack.d/10-a.toml"),
        "[nginx]\nport = 8001\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("stack.d/README"), "not toml").unwrap();
    let config = load_dir(dir.path()).unwrap();
    assert_eq!(config.nginx.port.get(), 8002);
}

#[test]
fn an_application_whose_store_is_disabled_is_refused_at_the_users_line() {
    let err = with(&[(
        "stack.toml",
        "[stack]\nhostname = \"h\"\n[redis]\nenabled = false\n",
    )])
    .unwrap_err()
    .to_string();
    assert!(err.contains("stack.toml:4:11"), "{err}");
    assert!(err.contains("redis is needed by airflow"), "{err}");
    assert!(err.contains("redis is needed by superset"), "{err}");
    let ok = with(&[(
        "stack.toml",
        "[redis]\nenabled = false\n[airflow]\nenabled = false\n[superset]\nenabled = false\n[dlt]\nenabled = false\n",
    )]);
    assert!(ok.is_ok());
}

#[test]
fn urls_that_would_break_out_of_their_file_are_refused_and_tokens_never_printed() {
    for bad in [
        "http://mirror.internal/debian\ndeb [trusted=yes] http://evil/ bookworm main",
        "http://mirror.internal/deb ian",
        "http://mirror.internal/\"debian",
        "http://mirror.internal/debian'",
        "http://mirror.internal/$(id)",
        "http://user:tok\nen@mirror.internal/",
        "http://mirror.internal:99999/",
        "http:///debian",
        "file:///srv/debian",
        "http://[::1/debian",
    ] {
        for key in ["[apt]\nmirror", "[archives]\nmirror", "[python]\nindex_url"] {
            let text = format!("{key} = {}\n", toml_edit::value(bad));
            let err = with(&[("stack.toml", &text)]).unwrap_err().to_string();
            assert!(
                err.contains("is not a usable http(s) URL"),
                "{bad:?}: {err}"
            );
            assert!(!err.contains('\n') || err.lines().count() == 1, "{err}");
        }
    }
    let secret = "http://builder:s3cr3t-token@mirror.internal/debian";
    let err = with(&[(
        "stack.toml",
        "[apt]\nmirror = \"http://builder:s3cr3t-token@mirror.internal/$x\"\n",
    )])
    .unwrap_err()
    .to_string();
    assert!(!err.contains("s3cr3t"), "{err}");
    // A good URL with credentials is accepted, used as written and printed redacted.
    let c = with(&[(
        "stack.toml",
        &format!("[archives]\nmirror = \"{secret}\"\n"),
    )])
    .unwrap();
    assert_eq!(c.archives.mirror.as_str(), secret);
    let shown = toml::to_string(&c).unwrap();
    assert!(
        !shown.contains("s3cr3t") && shown.contains("http://***@mirror.internal/debian"),
        "{shown}"
    );
    for good in [
        "https://mirror.internal:8443/debian/",
        "http://[fd00::1]:8080/m",
        "http://10.0.0.1/pypi/simple",
    ] {
        with(&[("stack.toml", &format!("[apt]\nmirror = \"{good}\"\n"))]).unwrap();
    }
}

#[test]
fn a_plan_never_shows_a_mirrors_token() {
    let c = with(&[(
        "stack.toml",
        "[archives]\nmirror = \"https://ci:tok-123@mirror.internal/gh\"\n[statsd_exporter]\nenabled = true\n",
    )])
    .unwrap();
    let platform = crate::components::Platform {
        codename: "bookworm".into(),
        arch: "amd64".into(),
        ..Default::default()
    };
    let specs = crate::components::render_all(&c, &platform);
    let pin = specs.iter().find_map(|s| s.archive.clone()).unwrap();
    assert!(
        pin.url.contains("tok-123"),
        "the download itself uses the token"
    );
    let json = serde_json::to_string(&pin).unwrap();
    assert!(
        !json.contains("tok-123") && json.contains("***@mirror.internal"),
        "{json}"
    );
}

#[test]
fn durations_and_names_in_any_script_are_refused_not_a_panic() {
    for bad in ["15é", "é", "1日", "", "d", "0d", "-1d", "1.5d"] {
        let text = format!("[loki]\nretention = {}\n", toml_edit::value(bad));
        let err = with(&[("stack.toml", &text)]).unwrap_err().to_string();
        assert!(err.contains("is not a duration"), "{bad:?}: {err}");
    }
    for bad in ["wheel group", "adm\nroot", "a:b", "-x"] {
        let text = format!("[stack]\nadmin_group = {}\n", toml_edit::value(bad));
        let err = with(&[("stack.toml", &text)]).unwrap_err().to_string();
        assert!(err.contains("is not a group name"), "{bad:?}: {err}");
    }
    let err = with(&[("stack.toml", "[bundle]\npath = \"relative.tar\"\n")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("not an absolute path"), "{err}");
}

mod any_text {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        /// Whatever string a value holds, validation answers (accepts or refuses)
        /// and never panics.
        #[test]
        fn no_value_panics_the_parser(v in "\\PC{0,24}|[0-9]{0,3}[a-zé日\\n]{0,2}") {
            for key in ["[loki]\nretention", "[prometheus]\nretention", "[postgres]\nshared_buffers",
                        "[apt]\nmirror", "[stack]\nhostname", "[stack]\nadmin_group", "[python]\ninterpreter"] {
                let text = format!("{key} = {}\n", toml_edit::value(v.as_str()));
                let _answered = with(&[("stack.toml", &text)]);
            }
        }
    }
}

#[test]
fn urls_quoted_in_errors_lose_their_credentials() {
    assert_eq!(
        redact_urls_in(
            "GET http://u:p@m.internal/a/b failed (see https://x.org/y), https://t@h:1/z"
        ),
        "GET http://***@m.internal/a/b failed (see https://x.org/y), https://***@h:1/z"
    );
}

#[test]
fn operators_pin_archives_the_catalog_leaves_to_checksum_files() {
    use crate::artifact::catalog::DigestSource;
    let sha = "AB".repeat(32);
    let c = with(&[(
        "stack.toml",
        &format!(
            "[archives]\nsha256 = {{ statsd-exporter = \"{sha}\", uv = \"{}\" }}\n",
            "cd".repeat(32)
        ),
    )])
    .unwrap();
    let platform = crate::components::Platform {
        codename: "bookworm".into(),
        arch: "amd64".into(),
        ..Default::default()
    };
    let specs = crate::components::render_all(&c, &platform);
    let statsd = specs.iter().find(|s| s.name == "statsd-exporter").unwrap();
    assert_eq!(
        statsd.archive.as_ref().unwrap().digest,
        DigestSource::Pinned(sha.to_lowercase())
    );
    // The catalog's own pin of uv stays.
    let uv = &specs.iter().find_map(|s| s.venv.as_ref()).unwrap().uv;
    assert_ne!(uv.digest, DigestSource::Pinned("cd".repeat(32)));
    let err = with(&[("stack.toml", "[archives]\nsha256 = { loki = \"xyz\" }\n")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not a sha256"), "{err}");
}

#[test]
fn tls_files_need_both_paths_and_the_paths_need_tls_files() {
    let text = "[nginx]\ntls = \"files\"\ncertificate = \"/etc/ssl/stack.pem\"\n";
    let errors = with(&[("/etc/analytics-stack/stack.toml", text)])
        .unwrap_err()
        .0;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].message.contains("nginx.key")
            && errors[0]
                .message
                .contains("needs both a certificate and a key"),
        "{}",
        errors[0]
    );
    let text = "[nginx]\ncertificate = \"/etc/ssl/stack.pem\"\n";
    let errors = with(&[("/etc/analytics-stack/stack.toml", text)])
        .unwrap_err()
        .0;
    assert!(
        errors[0]
            .message
            .contains("is used only with tls = \"files\""),
        "{}",
        errors[0]
    );
    assert_eq!(errors[0].line, 2);
    let errors = with(&[("s.toml", "[nginx]\ntls = \"maybe\"\n")])
        .unwrap_err()
        .0;
    assert!(errors[0].message.contains("self-signed"), "{}", errors[0]);
    // HTTP and HTTPS may not share a port.
    let errors = with(&[("s.toml", "[nginx]\nhttps_port = 80\n")])
        .unwrap_err()
        .0;
    assert!(
        errors
            .iter()
            .any(|e| e.message.contains("nginx.https_port")),
        "{errors:?}"
    );
    let ok = with(&[(
        "s.toml",
        "[nginx]\ntls = \"files\"\ncertificate = \"/etc/ssl/s.pem\"\nkey = \"/etc/ssl/s.key\"\n",
    )])
    .unwrap();
    assert_eq!(ok.nginx.tls, crate::config::TlsMode::Files);
}

#[test]
fn workers_need_an_address_of_this_host_and_the_stack_ca() {
    let err = |text: &str| load_texts(&[("stack.toml", text)]).unwrap_err().to_string();
    assert!(err("[workers]\naddress = \"127.0.0.1\"\n").contains("not loopback"));
    assert!(err("[workers]\naddress = \"0.0.0.0\"\n").contains("not loopback"));
    assert!(err("[workers]\naddress = \"db.example\"\n").contains("is not an IP address"));
    assert!(
        err("[workers.hosts.w1]\nadded = 1\naddress = \"10.0.0.2\"\n")
            .contains("workers.address is \"\"")
    );
    assert!(
        err("[workers.hosts.W1]\nadded = 1\naddress = \"10.0.0.2\"\n")
            .contains("is not a worker name")
    );
    let no_address =
        err("[workers]\naddress = \"10.0.0.1\"\n[workers.hosts.w1]\nadded = 1\naddress = \"\"\n");
    assert!(
        no_address
            .contains("workers.hosts.w1.address: a worker needs the address it connects from"),
        "{no_address}"
    );
    let files = err("[workers]\naddress = \"10.0.0.1\"\n[nginx]\ntls = \"off\"\n");
    assert!(files.contains("nginx.tls = \"self-signed\""), "{files}");
    let no_pg = err("[workers]\naddress = \"10.0.0.1\"\n[postgres]\nenabled = false\n[airflow]\nenabled = false\n[superset]\nenabled = false\n[dlt]\nenabled = false\n[postgres_exporter]\nenabled = false\n");
    assert!(no_pg.contains("worker hosts need postgres here"), "{no_pg}");
    let clash = err("[workers]\naddress = \"10.0.0.1\"\nbroker_port = 6379\n");
    assert!(clash.contains("port 6379 is already used"), "{clash}");
    // Superset's worker on worker hosts: its door's port is checked, and it needs
    // Superset here.
    let clash = err("[workers]\naddress = \"10.0.0.1\"\nsuperset = true\ncache_port = 6390\n");
    assert!(
        clash.contains("workers.cache_port: port 6390 is already used by workers.broker_port"),
        "{clash}"
    );
    let no_superset =
        err("[workers]\naddress = \"10.0.0.1\"\nsuperset = true\n[superset]\nenabled = false\n");
    assert!(
        no_superset
            .contains("workers.superset: Superset's worker on worker hosts needs Superset here"),
        "{no_superset}"
    );
    let ok = load_texts(&[("stack.toml", "[workers]\naddress = \"10.0.0.1\"\n")]).unwrap();
    assert_eq!(ok.workers.address.get(), Some([10, 0, 0, 1].into()));
}

#[test]
fn a_worker_host_runs_none_of_the_primarys_components_and_says_so_at_the_line() {
    let join = "[stack]\nrole = \"worker\"\n[worker]\nname = \"w1\"\naddress = \"10.0.0.2\"\nprimary = \"10.0.0.1\"\n";
    let config = load_texts(&[("10-join.toml", join)]).unwrap();
    assert!(!config.postgres.enabled && !config.redis.enabled && !config.nginx.enabled);
    assert!(!config.grafana.enabled && !config.loki.enabled && !config.superset.enabled);
    assert!(config.airflow.enabled && config.node_exporter.enabled && config.log_shipper.enabled);
    assert_eq!(config.backup.schedule.as_str(), "");
    // A user's file that turns one on is an error at its line, not silently ignored.
    let err = load_texts(&[
        ("stack.toml", "[grafana]\nenabled = true\n"),
        ("10-join.toml", join),
    ])
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("stack.toml:2:11: grafana.enabled: a worker host"),
        "{err}"
    );
    // What a worker needs, named.
    let missing = load_texts(&[("s.toml", "[stack]\nrole = \"worker\"\n")])
        .unwrap_err()
        .to_string();
    for key in ["worker.name", "worker.address", "worker.primary"] {
        assert!(
            missing.contains(&format!("{key}: a worker host needs it")),
            "{missing}"
        );
    }
    // Superset is the one the user (or `join`, when the primary grants it) may turn
    // on: its Celery worker alone runs here.
    let granted = load_texts(&[
        ("10-join.toml", join),
        ("b.toml", "[superset]\nenabled = true\n"),
    ])
    .unwrap();
    assert!(granted.superset.enabled && !granted.postgres.enabled);
    let no_airflow = load_texts(&[("a.toml", join), ("b.toml", "[airflow]\nenabled = false\n")])
        .unwrap_err()
        .to_string();
    assert!(
        no_airflow.contains("airflow.enabled: a worker host runs Airflow"),
        "{no_airflow}"
    );
}
