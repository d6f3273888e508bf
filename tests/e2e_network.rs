//! End-to-end, across hosts: the stack on one container and an outsider on another,
//! on a private bridge with no route out (tests/common/net.rs). From the other host,
//! only NGINX's door answers — every other port of the stack is closed to it — and
//! the door serves the landing page by address, over HTTPS. Then the primary takes
//! worker hosts (`[workers] address`, `worker add`): PostgreSQL and the broker's TLS
//! door answer too, but only over TLS, only to a worker's logins (not to the stack's
//! own roles, even with their passwords) and only from that worker's address;
//! `worker remove` ends a live session
//! and every later login. The stack installs with no network beyond the bridge
//! (Debian packages from the image's apt cache).

mod common;

use common::{net::Bridge, redis_refusal, Container, RedisRefusal};

const PRIMARY: &str = "10.231.0.1";
const OUTSIDER: &str = "10.231.0.9";
/// The HTTP doors between the hosts that this stack has (no Airflow and no Loki
/// here: their doors are tried from a worker host in `tests/e2e_workers.rs`).
const WORKER_DOORS: [&str; 1] = ["/stack-dags/current"];

#[test]
#[ignore = "needs root and systemd-nspawn: run through tests/run-all.sh"]
fn from_another_host_only_the_doors_answer_and_only_to_worker_logins() {
    let bridge = Bridge::create("as-test-br0");
    let primary = Container::boot_on("as-e2e-net-primary", &bridge, PRIMARY);
    primary.start_daemon();
    primary.without_apps();
    primary.without_release_archives();
    // Installed from the image's apt cache (no route out), which has no exporter.
    primary.ok("printf '[postgres_exporter]\\nenabled = false\\n' > /etc/analytics-stack/stack.d/02-offline.toml");
    let out = primary.ok("analytics-stack apply 2>&1");
    assert!(out.contains("every component is healthy"), "{out}");
    let outsider = Container::boot_on("as-e2e-net-outsider", &bridge, OUTSIDER);

    // The bridge connects them, and nothing else: no route out.
    outsider.ok(&format!("timeout 3 bash -c '</dev/tcp/{PRIMARY}/80'"));
    let out = outsider.sh("timeout 5 curl -fsS -o /dev/null https://pypi.org/simple/");
    assert_ne!(out.status.code(), Some(0), "the bridge routes out");

    // Every TCP port anything listens on in the primary, tried from the other host.
    let listening: std::collections::BTreeSet<u16> = primary
        .ok("ss -Hltn | awk '{print $4}' | sed 's/.*://'")
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    assert!(
        [5432u16, 6379, 9090, 9100]
            .iter()
            .all(|p| listening.contains(p)),
        "the stack runs: {listening:?}"
    );
    let open: Vec<u16> = listening
        .iter()
        .copied()
        .filter(|port| {
            outsider
                .sh(&format!("timeout 3 bash -c '</dev/tcp/{PRIMARY}/{port}'"))
                .status
                .success()
        })
        .collect();
    assert_eq!(
        open,
        [80, 443],
        "of {listening:?}, the ports the other host reaches"
    );

    // The door, by address, over HTTPS with the stack's CA (its certificate names
    // the host's addresses).
    let ca = primary.ok("cat /var/lib/analytics-stack/tls/ca.crt");
    outsider.ok(&format!("cat > /root/stack-ca.crt <<'EOF'\n{ca}EOF"));
    let page = outsider.ok(&format!(
        "curl -fsS --cacert /root/stack-ca.crt https://{PRIMARY}/"
    ));
    assert!(page.contains("<html"), "{page}");
    let redirect = outsider.ok(&format!(
        "curl -sS -o /dev/null -w '%{{http_code}} %{{redirect_url}}' http://{PRIMARY}/"
    ));
    assert!(
        redirect.starts_with("30"),
        "plain HTTP redirects: {redirect}"
    );

    workers(&primary, &outsider);
    drop(outsider);
    drop(primary);
    drop(bridge);
}

/// A libpq connection string to the primary, presenting the worker's certificate.
fn pg(user: &str, db: &str, ssl: &str) -> String {
    pg_as(user, db, ssl, "/root/w1")
}

/// The same with the certificate and key at `client`.crt/.key.
fn pg_as(user: &str, db: &str, ssl: &str, client: &str) -> String {
    format!("host={PRIMARY} port=5432 user={user} dbname={db} sslmode={ssl} sslrootcert=/root/stack-ca.crt sslcert={client}.crt sslkey={client}.key connect_timeout=5")
}

/// What the enrollment door answers `from` (status and body) for worker `name`'s
/// request at `csr` (a file there) with `secret`.
fn enroll(from: &Container, name: &str, secret: &str, csr: &str) -> (String, String) {
    let request = serde_json::json!({
        "name": name,
        "secret": secret,
        "request": from.ok(&format!("cat {csr}")),
    });
    from.put_file("/root/enroll.json", &request.to_string());
    let status = from.ok(&format!(
        "curl -sS -o /root/enroll.out -w '%{{http_code}}' --cacert /root/stack-ca.crt -H 'Content-Type: application/json' --data-binary @/root/enroll.json https://{PRIMARY}/stack-enroll"
    ));
    (status.trim().to_string(), from.ok("cat /root/enroll.out"))
}

/// A worker key and request (as `join` makes them) at `path`.key/.csr.
fn new_request(on: &Container, path: &str) {
    on.ok(&format!("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {path}.key -out {path}.csr -subj /CN=anything 2>/dev/null"));
}

fn workers(primary: &Container, outsider: &Container) {
    // PostgreSQL's and Redis's clients on the other host, from the image's cache.
    outsider.ok("DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql-client-15 redis-tools >/dev/null");
    primary.ok(&format!("printf '[workers]\\naddress = \"{PRIMARY}\"\\n' > /etc/analytics-stack/stack.d/20-workers.toml"));
    let denied =
        primary.sh("runuser -u alice -- analytics-stack worker add w2 --address 10.231.0.8");
    assert_eq!(denied.status.code(), Some(5));
    // The first worker's add applies the address too; a second apply does nothing.
    let started = std::time::Instant::now();
    // The token into a new file only root reads (nothing of it on the terminal).
    let said = primary.ok(&format!(
        "analytics-stack worker add w1 --address {OUTSIDER} --token-file /root/w1.token 2>&1"
    ));
    assert_eq!(
        primary.ok("stat -c '%a %U' /root/w1.token").trim(),
        "600 root"
    );
    let token = primary.ok("cat /root/w1.token").trim().to_string();
    assert!(
        said.contains("/root/w1.token") && !said.contains(&token),
        "{said}"
    );
    eprintln!(
        "[figure] worker add (the address applied with it): {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(token.starts_with("asw1."), "{token}");
    assert!(primary
        .ok("analytics-stack apply")
        .contains("nothing to do"));
    let again = primary.sh("analytics-stack worker add w1 --address 10.231.0.8");
    assert_eq!(again.status.code(), Some(6), "a worker is added once");
    let bad = primary.sh("analytics-stack worker add 'W1;drop' --address 10.231.0.8");
    assert_eq!(bad.status.code(), Some(6));
    let listed = primary.ok("analytics-stack worker list");
    assert!(
        listed.contains("w1") && listed.contains("worker_w1"),
        "{listed}"
    );
    // The token, read as the worker will: JSON behind its version.
    let json = outsider.ok(&format!(
        "printf %s '{}' | tr '_-' '/+' | base64 -d",
        &token["asw1.".len()..]
    ));
    let t: serde_json::Value = serde_json::from_str(&json).expect("the token is JSON");
    assert_eq!(t["primary"], PRIMARY);
    // The door serves the CA (over plain HTTP too, for a host that has nothing to
    // trust yet): what the token pins.
    let served = outsider.ok(&format!(
        "curl -fsS http://{PRIMARY}/stack-ca.crt | openssl x509 -outform der | sha256sum | cut -d' ' -f1"
    ));
    assert_eq!(
        t["ca_sha256"].as_str().unwrap(),
        served.trim(),
        "the CA the door serves"
    );
    let fingerprint =
        outsider.ok("openssl x509 -in /root/stack-ca.crt -outform der | sha256sum | cut -d' ' -f1");
    assert_eq!(
        t["ca_sha256"].as_str().unwrap(),
        fingerprint.trim(),
        "the token pins the CA"
    );
    let (role, pw) = (
        t["postgres_role"].as_str().unwrap(),
        t["postgres_password"].as_str().unwrap(),
    );
    let (user, bpw) = (
        t["broker_user"].as_str().unwrap(),
        t["broker_password"].as_str().unwrap(),
    );

    hostile_door_at_join(outsider, &token);
    enrollment(primary, outsider, &t);

    // Ports the other host now reaches: NGINX's, PostgreSQL's and the broker's door.
    for port in [5432, 6390] {
        outsider.ok(&format!("timeout 3 bash -c '</dev/tcp/{PRIMARY}/{port}'"));
    }
    for port in [6379, 6380] {
        assert!(!outsider
            .sh(&format!("timeout 3 bash -c '</dev/tcp/{PRIMARY}/{port}'"))
            .status
            .success());
    }

    // PostgreSQL: the worker's role over verified TLS, to its databases only.
    let psql = |conn: String, password: &str| {
        outsider.sh(&format!("PGPASSWORD='{password}' psql '{conn}' -XAtc 'SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()'"))
    };
    for db in ["airflow", "warehouse"] {
        let out = psql(pg(role, db, "verify-full"), pw);
        assert!(
            out.status.success(),
            "{db}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("{role}|t")
        );
    }
    for (conn, password, why) in [
        (pg(role, "airflow", "disable"), pw.to_string(), "no TLS"),
        (
            pg(role, "superset", "verify-full"),
            pw.to_string(),
            "not its database",
        ),
        (
            pg(role, "airflow", "verify-full"),
            "wrong".to_string(),
            "a wrong password",
        ),
        (
            pg("warehouse", "warehouse", "verify-full"),
            primary
                .ok("cat /var/lib/analytics-stack/secrets/postgres-warehouse")
                .trim()
                .to_string(),
            "the stack's own role, with its password",
        ),
    ] {
        let out = psql(conn, &password);
        assert!(
            !out.status.success(),
            "{why}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    // From another address (the primary's own, on the bridge: neither loopback nor
    // the worker's), the worker's logins are refused, TLS and password or not.
    primary.ok("cp /var/lib/analytics-stack/tls/ca.crt /root/stack-ca.crt");
    let out = primary.sh(&format!(
        "PGPASSWORD='{pw}' psql '{}' -XAtc 'SELECT 1'",
        pg(role, "airflow", "verify-full")
    ));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no pg_hba.conf entry"),
        "{out:?}"
    );
    let out = primary.sh(&format!(
        "REDISCLI_AUTH='{bpw}' redis-cli -h {PRIMARY} -p 6390 --user {user} --tls --cacert /root/stack-ca.crt PING"
    ));
    assert_eq!(
        redis_refusal(&out),
        RedisRefusal::Closed,
        "not an allowed address: {out:?}"
    );

    // The broker, through its TLS door, as the worker's user: Airflow's keys and
    // channels (what its Celery needs), nothing of Superset's (not granted here),
    // nothing of the administration, no listing of the instance's keys.
    let redis = |args: &str| {
        outsider.sh(&format!(
            "REDISCLI_AUTH='{bpw}' redis-cli -h {PRIMARY} -p 6390 --user {user} {args}"
        ))
    };
    let tls = "--tls --cacert /root/stack-ca.crt --cert /root/w1.crt --key /root/w1.key";
    let out = redis(&format!("{tls} LPUSH airflow:probe 1"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A key Superset's Celery sends its queries through (the queue it reads) and a
    // result it would read, a key outside any prefix, Superset's broadcast channel,
    // and the commands that would list every key or channel: each refused by the ACL.
    let mut refused = 0;
    for args in [
        "LPUSH superset:celery forged",
        "GET superset:celery-task-meta-1",
        "LPUSH probe 1",
        "PUBLISH superset:/1.celery.pidbox shutdown",
        "PSUBSCRIBE 'superset:*'",
        "SCAN 0",
        "RANDOMKEY",
        "PUBSUB CHANNELS",
        "KEYS '*'",
        "CONFIG GET requirepass",
        "FLUSHALL",
    ] {
        // (`timeout`: a PSUBSCRIBE that were granted would wait for messages.)
        let out = outsider.sh(&format!(
            "REDISCLI_AUTH='{bpw}' timeout 10 redis-cli -h {PRIMARY} -p 6390 --user {user} {tls} {args}"
        ));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("NOPERM"),
            "{args}: {out:?}"
        );
        refused += 1;
    }
    eprintln!("[figure] broker commands outside the worker's grant refused: {refused}");
    // Airflow's own login on the primary (which every DAG's code can read) is held
    // to Airflow's keyspace the same way: Superset's queue is out of its reach.
    let app = |user: &str, args: &str| {
        let out = primary.sh(&format!(
            "REDISCLI_AUTH=\"$(cat /var/lib/analytics-stack/secrets/redis-broker-{user})\" redis-cli -p 6379 --user {user} {args}"
        ));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(app("airflow", "LPUSH airflow:probe 2").trim(), "2");
    assert!(app("airflow", "LPUSH superset:celery forged").contains("NOPERM"));
    assert!(app("superset", "LRANGE airflow:probe 0 -1").contains("NOPERM"));
    assert!(app("superset", "PUBLISH airflow:/0.celery.pidbox shutdown").contains("NOPERM"));
    let out = redis("PING");
    assert_eq!(
        redis_refusal(&out),
        RedisRefusal::Closed,
        "without TLS: {out:?}"
    );
    let out = outsider.sh(&format!(
        "REDISCLI_AUTH=wrong redis-cli -h {PRIMARY} -p 6390 --user {user} {tls} PING"
    ));
    assert_eq!(
        redis_refusal(&out),
        RedisRefusal::Auth,
        "a wrong password: {out:?}"
    );
    primary.ok("redis-cli -p 6379 --no-auth-warning -a \"$(cat /var/lib/analytics-stack/secrets/redis-broker)\" DEL airflow:probe");

    // Removed: a session it has open ends, and it logs in nowhere any more. The
    // session is seen connected (and running its sleep) from the primary first, and
    // still running just before the removal.
    outsider.ok(&format!("(PGPASSWORD='{pw}' psql '{}' -XAtc 'SELECT pg_sleep(120)' >/tmp/sleep.out 2>&1; echo $? >/tmp/sleep.rc) >/dev/null 2>&1 &", pg(role, "airflow", "verify-full")));
    let sessions = format!(
        "psql -h /run/analytics-postgres -p 5432 -U postgres -d postgres -XAtc \"SELECT count(*) FROM pg_stat_activity WHERE usename = '{role}' AND query LIKE '%pg_sleep%' AND state = 'active'\""
    );
    primary.ok(&format!(
        "for i in $(seq 600); do test \"$({sessions})\" = 1 && exit 0; sleep 0.1; done; exit 1"
    ));
    outsider.ok("test ! -e /tmp/sleep.rc");
    let started = std::time::Instant::now();
    primary.ok("analytics-stack worker remove w1");
    eprintln!(
        "[figure] worker remove: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // It ended (well before its 120 s), because the server terminated it.
    outsider.ok("for i in $(seq 1 50); do test -s /tmp/sleep.rc && break; sleep 0.2; done; test -s /tmp/sleep.rc");
    let rc = outsider.ok("cat /tmp/sleep.rc");
    let said = outsider.ok("cat /tmp/sleep.out");
    assert_ne!(rc.trim(), "0", "the session ended in error: {said}");
    assert!(
        said.contains("terminating connection due to administrator command"),
        "ended by the server: {said}"
    );
    assert_eq!(primary.ok(&sessions).trim(), "0");
    let out = psql(pg(role, "airflow", "verify-full"), pw);
    assert!(!out.status.success(), "a removed worker's role");
    // Its address left the door's allow list with it: closed before Redis answers.
    let out = redis(&format!("{tls} PING"));
    assert_eq!(
        redis_refusal(&out),
        RedisRefusal::Closed,
        "a removed worker's user: {out:?}"
    );
    assert!(primary.ok("analytics-stack worker list").trim().is_empty());
    assert_eq!(
        primary.sh("analytics-stack worker remove w1").status.code(),
        Some(7)
    );
    assert!(primary
        .ok("analytics-stack apply")
        .contains("nothing to do"));

    // Added again under its name and address: a new identity. The removed worker's
    // certificate stays refused at the doors (even with the new logins), the new
    // enrollment's is admitted.
    primary.ok(&format!(
        "analytics-stack worker add w1 --address {OUTSIDER} --token-file /root/w1-again.token"
    ));
    let again: serde_json::Value = serde_json::from_slice(
        &analytics_stack::util::base64_url_decode(
            &primary.ok("cat /root/w1-again.token").trim()["asw1.".len()..],
        )
        .unwrap(),
    )
    .unwrap();
    let bpw = again["broker_password"].as_str().unwrap();
    let redis_as = |client: &str| {
        outsider.sh(&format!(
            "REDISCLI_AUTH='{bpw}' timeout 10 redis-cli -h {PRIMARY} -p 6390 --user {user} --tls --cacert /root/stack-ca.crt --cert {client}.crt --key {client}.key PING"
        ))
    };
    let doors_as = |client: &str, path: &str| {
        outsider
            .ok(&format!(
                "curl -sS -o /dev/null -w '%{{http_code}}' --cacert /root/stack-ca.crt --cert {client}.crt --key {client}.key https://{PRIMARY}{path}"
            ))
            .trim()
            .to_string()
    };
    for path in WORKER_DOORS {
        assert_eq!(
            doors_as("/root/w1", path),
            "403",
            "{path}: the removed worker's certificate"
        );
    }
    assert_eq!(
        redis_refusal(&redis_as("/root/w1")),
        RedisRefusal::Closed,
        "the removed worker's certificate at the broker"
    );
    new_request(outsider, "/root/w1b");
    let (status, cert) = enroll(
        outsider,
        "w1",
        again["enroll_secret"].as_str().unwrap(),
        "/root/w1b.csr",
    );
    assert_eq!(status, "200", "{cert}");
    outsider.put_file("/root/w1b.crt", &cert);
    assert_eq!(
        String::from_utf8_lossy(&redis_as("/root/w1b").stdout).trim(),
        "PONG"
    );
    for path in WORKER_DOORS {
        assert_ne!(doors_as("/root/w1b", path), "403", "{path}");
    }
    primary.ok("analytics-stack worker remove w1");
}

/// The enrollment door, as `join` uses it and as an attacker would; then every door
/// between the hosts, with the certificate it signed, with none, and with one
/// another CA signed for the same subject and key.
fn enrollment(primary: &Container, outsider: &Container, t: &serde_json::Value) {
    let secret = t["enroll_secret"].as_str().unwrap();
    new_request(outsider, "/root/w1");
    let mut refused = 0;
    // A guessed secret, and a name that is no worker's: refused alike, the pending
    // secret not spent.
    for (name, guess) in [("w1", "0".repeat(64)), ("w9", secret.to_string())] {
        let (status, body) = enroll(outsider, name, &guess, "/root/w1.csr");
        assert_eq!((status.as_str(), body.trim()), ("403", "refused"), "{name}");
        refused += 1;
    }
    // Anything but a POST.
    let code = outsider.ok(&format!(
        "curl -sS -o /dev/null -w '%{{http_code}}' --cacert /root/stack-ca.crt https://{PRIMARY}/stack-enroll"
    ));
    assert_eq!(code.trim(), "403", "a GET");
    refused += 1;
    // From an address that is no worker's (the primary's own on the bridge), with
    // the right secret: NGINX does not pass it on.
    primary.ok("cp /var/lib/analytics-stack/tls/ca.crt /root/stack-ca.crt");
    new_request(primary, "/root/p");
    let (status, _) = enroll(primary, "w1", secret, "/root/p.csr");
    assert_eq!(status, "403", "from another address");
    refused += 1;
    // The daemon's socket is NGINX's group's alone: a local account on the primary
    // cannot reach it past NGINX.
    let out = primary.sh(&format!(
        "runuser -u nobody -- curl -sS --unix-socket {} -X POST http://x/stack-enroll",
        analytics_stack::daemon::enroll::SOCKET
    ));
    assert!(!out.status.success(), "{out:?}");
    refused += 1;
    // The journal says which refusal each was; the secret appears nowhere.
    let journal = primary.ok("journalctl -u analytics-stackd --no-pager -o cat");
    assert!(
        journal.contains("worker w1: not its token's secret")
            && journal.contains("\"w9\" is not a worker of this host"),
        "{journal}"
    );
    assert!(!journal.contains(secret));

    // The worker's own request: its certificate, of the stack CA, for a client.
    let (status, cert) = enroll(outsider, "w1", secret, "/root/w1.csr");
    assert_eq!(status, "200", "{cert}");
    outsider.put_file("/root/w1.crt", &cert);
    let verified =
        outsider.ok("openssl verify -purpose sslclient -CAfile /root/stack-ca.crt /root/w1.crt");
    assert!(verified.contains("OK"), "{verified}");
    // Once: the same secret again, even for the same key, is refused.
    let (status, _) = enroll(outsider, "w1", secret, "/root/w1.csr");
    assert_eq!(status, "403", "a token signs once");
    refused += 1;

    // Another CA's certificate, for the same key and the very subject the primary
    // gave (what a host that stole the key but not the CA could make).
    let identity = primary.ok(
        "sed -n 's/^identity = \"\\(.*\\)\"$/\\1/p' /etc/analytics-stack/stack.d/90-workers.toml",
    );
    outsider.ok(&format!(
        "cd /root && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout other-ca.key -out other-ca.crt -subj /CN=other -days 1 2>/dev/null
         openssl req -new -key w1.key -subj '/O=analytics-stack workers/OU={}/CN=worker_w1' -out forged.csr
         printf 'extendedKeyUsage=clientAuth\n' > ext
         openssl x509 -req -in forged.csr -CA other-ca.crt -CAkey other-ca.key -CAcreateserial -days 1 -extfile ext -out forged.crt 2>/dev/null
         cp w1.key forged.key",
        identity.trim()
    ));
    let role = t["postgres_role"].as_str().unwrap();
    let pw = t["postgres_password"].as_str().unwrap();
    let (user, bpw) = (
        t["broker_user"].as_str().unwrap(),
        t["broker_password"].as_str().unwrap(),
    );
    // Each door: the worker's certificate opens it; none, or the forged one, not.
    let psql = |client: &str| {
        outsider.sh(&format!(
            "PGPASSWORD='{pw}' psql '{}' -XAtc 'SELECT current_user'",
            pg_as(role, "airflow", "verify-full", client)
        ))
    };
    let redis = |client: &str| {
        outsider.sh(&format!(
            "REDISCLI_AUTH='{bpw}' timeout 10 redis-cli -h {PRIMARY} -p 6390 --user {user} --tls --cacert /root/stack-ca.crt{} PING",
            if client.is_empty() { String::new() } else { format!(" --cert {client}.crt --key {client}.key") }
        ))
    };
    let http = |client: &str, path: &str| {
        outsider
            .ok(&format!(
                "curl -sS -o /dev/null -w '%{{http_code}}' --cacert /root/stack-ca.crt{} https://{PRIMARY}{path}",
                if client.is_empty() { String::new() } else { format!(" --cert {client}.crt --key {client}.key") }
            ))
            .trim()
            .to_string()
    };
    let out = psql("/root/w1");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), role, "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&redis("/root/w1").stdout).trim(),
        "PONG"
    );
    for path in WORKER_DOORS {
        let code = http("/root/w1", path);
        assert!(
            code != "403" && code != "400",
            "{path} with the worker's certificate: {code}"
        );
    }
    for client in ["/root/none", "/root/forged"] {
        // Without one: "connection requires a valid client certificate"; another
        // CA's: the handshake fails, "unknown ca".
        let out = psql(client);
        let why = if client == "/root/none" {
            "requires a valid client certificate"
        } else {
            "unknown ca"
        };
        assert!(
            !out.status.success() && String::from_utf8_lossy(&out.stderr).contains(why),
            "PostgreSQL with {client}: {out:?}"
        );
        refused += 1;
        let out = redis(if client == "/root/none" { "" } else { client });
        assert_eq!(
            redis_refusal(&out),
            RedisRefusal::Closed,
            "the broker's door with {client}: {out:?}"
        );
        refused += 1;
        for path in WORKER_DOORS {
            let code = http(if client == "/root/none" { "" } else { client }, path);
            assert!(
                code == "403" || code == "400",
                "{path} with {client}: {code}"
            );
            refused += 1;
        }
    }
    eprintln!("[figure] enrollment and client-certificate attacks refused: {refused}");
}

/// A host on the LAN answers `join` in the primary's place (here: the primary's
/// address on the worker itself, as ARP or DNS spoofing would make it) and serves the
/// real CA certificate (public at /stack-ca.crt) followed by its own. The pin matches
/// the first block; the join is refused all the same, and nothing is written. The
/// token is given in a file (on standard input here), and no command line on the
/// worker ever holds it or its passwords.
fn hostile_door_at_join(worker: &Container, token: &str) {
    worker.start_daemon();
    worker.ok(&format!(
        "ip addr add {PRIMARY}/32 dev lo
         mkdir -p /root/hostile && cd /root/hostile
         openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout key.pem -out cert.pem -subj /CN=hostile -days 1 -addext basicConstraints=critical,CA:TRUE 2>/dev/null
         cat /root/stack-ca.crt cert.pem > stack-ca.crt
         systemd-run --unit=hostile-door --working-directory=/root/hostile openssl s_server -accept {PRIMARY}:443 -cert cert.pem -key key.pem -WWW -quiet
         for i in $(seq 50); do timeout 1 bash -c '</dev/tcp/{PRIMARY}/443' 2>/dev/null && exit 0; sleep 0.1; done; exit 1"
    ));
    // What the hostile door answers: both certificates, the real one first.
    let served = worker.ok(&format!(
        "curl -ksS https://{PRIMARY}/stack-ca.crt | grep -c 'BEGIN CERTIFICATE'"
    ));
    assert_eq!(served.trim(), "2");
    worker.put_secret("/root/w1.token", &format!("{token}\n"));
    let on_the_line = worker.sh(&format!("analytics-stack join {PRIMARY} --token {token}"));
    assert_eq!(on_the_line.status.code(), Some(2), "{on_the_line:?}");
    assert!(String::from_utf8_lossy(&on_the_line.stderr).contains("--token-file"));
    // The token reaches the CLI a second late, so the join is seen running.
    let (refused, cmdlines) = worker.sh_watching_cmdlines(&format!(
        "(sleep 1; cat /root/w1.token) | analytics-stack join {PRIMARY} --token-file -"
    ));
    let err = String::from_utf8_lossy(&refused.stderr).to_string();
    assert_eq!(refused.status.code(), Some(10), "{err}");
    assert!(
        err.contains("PEM blocks") && err.contains("nothing was written"),
        "{err}"
    );
    worker.ok("test ! -e /var/lib/analytics-stack/tls/ca.crt && test ! -e /etc/analytics-stack/stack.d/10-join.toml && test -z \"$(ls -A /var/lib/analytics-stack/secrets 2>/dev/null)\"");
    assert!(
        cmdlines.contains("--token-file"),
        "the scan saw the join: {cmdlines}"
    );
    let t: serde_json::Value = serde_json::from_slice(
        &analytics_stack::util::base64_url_decode(&token["asw1.".len()..]).unwrap(),
    )
    .unwrap();
    for secret in [
        token,
        t["postgres_password"].as_str().unwrap(),
        t["broker_password"].as_str().unwrap(),
    ] {
        assert!(!cmdlines.contains(secret), "a secret on a command line");
    }
    worker.ok(&format!(
        "systemctl stop hostile-door; ip addr del {PRIMARY}/32 dev lo"
    ));
}
