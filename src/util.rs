//! Small helpers shared across modules.

use sha2::{Digest, Sha256};

/// A regular expression (RE2, Go's, PCRE and NGINX's alike) matching exactly `s`.
pub fn regex_literal(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = ".[]{}()\\*+?^$|".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// A generated secret's text: hex, except Fernet keys (names ending `fernet-key`),
/// which Airflow requires as URL-safe base64 of 32 bytes.
pub fn format_secret(name: &str, bytes: &[u8; 32]) -> String {
    if name.ends_with("fernet-key") {
        base64_url(bytes)
    } else {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// URL-safe base64 with padding (RFC 4648 §5).
pub fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes [`base64_url`]'s output (padding optional); None for anything else.
pub fn base64_url_decode(text: &str) -> Option<Vec<u8>> {
    let digits = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in digits.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // A lone digit (6 bits) cannot end a valid encoding.
    (bits < 6).then_some(out)
}

/// `text` with control characters escaped and cut to 256 characters, for a name a
/// caller supplied that ends up in a message or a log line.
pub fn printable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(256)
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    if text.chars().count() > 256 {
        out.push('…');
    }
    out
}

/// Hands the allocator's free pages back to the system. An apply's plan, facts and
/// downloads leave free memory scattered through the heap, which glibc keeps; the
/// daemon then idles for hours holding it. Called after each operation and refresh.
pub fn release_free_memory() {
    // SAFETY: malloc_trim takes no pointer and touches only glibc's own arenas, each
    // under its lock; it only returns free pages (madvise) and shrinks the heap's
    // top. There is no safe wrapper for it in nix or std.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// For the kill-safety tests: with `ANALYTICS_STACK_KILL_AFTER_STEPS=N` in the
/// daemon's environment, the daemon kills itself with SIGKILL right after it has
/// recorded its Nth step (counted over its whole life), as `kill -9` would. Unset
/// (always, outside tests), this does nothing.
pub fn failpoint_step_recorded() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::OnceLock;
    static KILL_AFTER: OnceLock<Option<usize>> = OnceLock::new();
    static RECORDED: AtomicUsize = AtomicUsize::new(0);
    let Some(n) = *KILL_AFTER.get_or_init(|| {
        std::env::var("ANALYTICS_STACK_KILL_AFTER_STEPS")
            .ok()
            .and_then(|v| v.parse().ok())
    }) else {
        return;
    };
    if RECORDED.fetch_add(1, Ordering::SeqCst) + 1 >= n {
        tracing::warn!("failpoint: killed after {n} recorded steps");
        let _dying =
            nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
    }
}

/// A test failpoint for the phases of a long operation (`restore`, `backup`): with
/// `ANALYTICS_STACK_KILL_AT=OPERATION:N` in the daemon's environment, the daemon
/// kills itself with SIGKILL when that operation has ended its Nth phase (counted
/// over the daemon's life). Unset (always, outside tests), this does nothing.
pub fn failpoint_phase(operation: &str) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::OnceLock;
    static KILL_AT: OnceLock<Option<(String, usize)>> = OnceLock::new();
    static ENDED: AtomicUsize = AtomicUsize::new(0);
    let Some((op, n)) = KILL_AT.get_or_init(|| {
        let v = std::env::var("ANALYTICS_STACK_KILL_AT").ok()?;
        let (op, n) = v.split_once(':')?;
        Some((op.to_string(), n.parse().ok()?))
    }) else {
        return;
    };
    if op == operation && ENDED.fetch_add(1, Ordering::SeqCst) + 1 >= *n {
        tracing::warn!("failpoint: killed after {n} {operation} phases");
        let _dying =
            nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
    }
}

/// Seconds since the epoch (0 if the clock is before it).
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_url_round_trips_and_refuses_other_text() {
        for len in 0..40 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let text = super::base64_url(&bytes);
            assert_eq!(super::base64_url_decode(&text), Some(bytes.clone()));
            assert_eq!(
                super::base64_url_decode(text.trim_end_matches('=')),
                Some(bytes)
            );
        }
        for bad in ["a", "ab+c", "ab/c", "a b", "é"] {
            assert_eq!(super::base64_url_decode(bad), None, "{bad}");
        }
    }

    use super::*;

    #[test]
    fn base64_url_matches_rfc_4648_vectors() {
        assert_eq!(base64_url(b""), "");
        assert_eq!(base64_url(b"f"), "Zg==");
        assert_eq!(base64_url(b"fo"), "Zm8=");
        assert_eq!(base64_url(b"foo"), "Zm9v");
        assert_eq!(base64_url(b"foob"), "Zm9vYg==");
        assert_eq!(base64_url(&[0xfb, 0xff]), "-_8=");
    }

    #[test]
    fn fernet_keys_are_44_characters_of_url_safe_base64() {
        let key = format_secret("airflow-fernet-key", &[7u8; 32]);
        assert_eq!(key.len(), 44);
        assert!(key.ends_with('='));
        assert_eq!(format_secret("redis-broker", &[7u8; 32]).len(), 64);
    }
}
