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
