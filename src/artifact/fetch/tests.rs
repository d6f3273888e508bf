use super::*;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A loopback HTTP server for one body. With `cut_first_at`, the first response stops
/// after that many bytes (an interrupted download). Honours `Range: bytes=N-`.
struct Server {
    url: String,
    requests: Arc<AtomicUsize>,
    ranges: Arc<std::sync::Mutex<Vec<Option<u64>>>>,
}

fn serve(body: Vec<u8>, cut_first_at: Option<usize>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/archive.tar.gz", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let ranges = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (req, rng) = (requests.clone(), ranges.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming().take(16) {
            let Ok(mut stream) = stream else { continue };
            let n = req.fetch_add(1, Ordering::SeqCst);
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut range = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    range = v.trim().trim_end_matches('-').parse::<u64>().ok();
                }
            }
            rng.lock().unwrap().push(range);
            let start = range.unwrap_or(0) as usize;
            let part = &body[start.min(body.len())..];
            let head = if range.is_some() {
                format!("HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nConnection: close\r\n\r\n", part.len(), body.len() - 1, body.len())
            } else {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    part.len()
                )
            };
            let _ = stream.write_all(head.as_bytes());
            let send = match (n, cut_first_at) {
                (0, Some(cut)) => &part[..cut],
                _ => part,
            };
            let _ = stream.write_all(send);
        }
    });
    Server {
        url,
        requests,
        ranges,
    }
}

fn body() -> Vec<u8> {
    (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect()
}

fn digest(b: &[u8]) -> String {
    crate::util::sha256_hex(b)
}

#[tokio::test]
async fn a_verified_download_is_cached_and_not_fetched_again() {
    let b = body();
    let server = serve(b.clone(), None);
    let cache = tempfile::tempdir().unwrap();
    let fetcher = Fetcher::new(cache.path()).unwrap();
    let seen = std::sync::Mutex::new((0u64, None));
    let path = fetcher
        .fetch(&server.url, "x.tar.gz", &digest(&b), &|d, t| {
            *seen.lock().unwrap() = (d, t)
        })
        .await
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b);
    assert_eq!(
        *seen.lock().unwrap(),
        (b.len() as u64, Some(b.len() as u64))
    );
    fetcher
        .fetch(&server.url, "x.tar.gz", &digest(&b), &|_, _| {})
        .await
        .unwrap();
    assert_eq!(
        server.requests.load(Ordering::SeqCst),
        1,
        "a cached, verified archive is not downloaded again"
    );
}

#[tokio::test]
async fn a_digest_mismatch_names_url_and_both_digests_and_keeps_nothing() {
    let b = body();
    let server = serve(b.clone(), None);
    let cache = tempfile::tempdir().unwrap();
    let fetcher = Fetcher::new(cache.path()).unwrap();
    let wrong = "0".repeat(64);
    let err = fetcher
        .fetch(&server.url, "x.tar.gz", &wrong, &|_, _| {})
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, FetchError::Digest { .. }));
    assert!(
        text.contains(&server.url) && text.contains(&wrong) && text.contains(&digest(&b)),
        "{text}"
    );
    assert_eq!(
        std::fs::read_dir(cache.path()).unwrap().count(),
        0,
        "nothing may stay in the cache"
    );
}

#[tokio::test]
async fn an_interrupted_download_resumes_where_it_stopped() {
    let b = body();
    let server = serve(b.clone(), Some(100_000));
    let cache = tempfile::tempdir().unwrap();
    let fetcher = Fetcher::new(cache.path()).unwrap();
    let err = fetcher
        .fetch(&server.url, "x.tar.gz", &digest(&b), &|_, _| {})
        .await
        .unwrap_err();
    assert!(
        matches!(err, FetchError::Length { .. } | FetchError::Network { .. }),
        "{err}"
    );
    assert!(
        !cache.path().join("x.tar.gz").exists(),
        "an unverified file is never in place"
    );
    let path = fetcher
        .fetch(&server.url, "x.tar.gz", &digest(&b), &|_, _| {})
        .await
        .unwrap();
    assert_eq!(std::fs::read(path).unwrap(), b);
    assert_eq!(
        server.ranges.lock().unwrap().clone(),
        vec![None, Some(100_000)]
    );
}

#[tokio::test]
async fn a_cached_file_that_no_longer_verifies_is_fetched_again() {
    let b = body();
    let server = serve(b.clone(), None);
    let cache = tempfile::tempdir().unwrap();
    std::fs::write(cache.path().join("x.tar.gz"), b"tampered").unwrap();
    let fetcher = Fetcher::new(cache.path()).unwrap();
    let path = fetcher
        .fetch(&server.url, "x.tar.gz", &digest(&b), &|_, _| {})
        .await
        .unwrap();
    assert_eq!(std::fs::read(path).unwrap(), b);
}

#[tokio::test]
async fn http_errors_are_typed() {
    let cache = tempfile::tempdir().unwrap();
    let fetcher = Fetcher::new(cache.path()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/missing.zip", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = [0u8; 1024];
            let _ = std::io::Read::read(&mut s, &mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    let err = fetcher
        .fetch(&url, "missing.zip", &"0".repeat(64), &|_, _| {})
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Http { status: 404, .. }), "{err}");
}
