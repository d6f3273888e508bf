//! Verify + unpack throughput of a large release-style tar.gz, against `sha256sum`
//! followed by GNU `tar xzf` on the same file, in one run. Prints figures.
//! Run: `cargo bench --bench unpack` (ANALYTICS_STACK_BENCH_MB sets the size).

use analytics_stack::artifact::{fetch::sha256_file, unpack, ArchiveFormat};
use std::io::Write;
use std::process::Command;
use std::time::Instant;

fn main() {
    let mb: usize = std::env::var("ANALYTICS_STACK_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(192);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src/bigapp-1.0");
    std::fs::create_dir_all(src.join("bin")).unwrap();
    // Half incompressible (like binaries' code sections), half text.
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for i in 0..mb / 4 {
        let mut f = std::fs::File::create(src.join(format!("bin/part{i:03}"))).unwrap();
        let mut buf = Vec::with_capacity(4 << 20);
        while buf.len() < 2 << 20 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf.extend_from_slice(&x.to_le_bytes());
        }
        while buf.len() < 4 << 20 {
            buf.extend_from_slice(
                format!("line {i} of a configuration or data file {}\n", buf.len()).as_bytes(),
            );
        }
        f.write_all(&buf).unwrap();
    }
    let archive = tmp.path().join("bigapp.tar.gz");
    let ok = Command::new("tar")
        .arg("czf")
        .arg(&archive)
        .arg("-C")
        .arg(tmp.path().join("src"))
        .arg("bigapp-1.0")
        .status()
        .unwrap();
    assert!(ok.success());
    let size = std::fs::metadata(&archive).unwrap().len() as f64 / 1048576.0;
    println!("archive: {size:.0} MiB compressed, {mb} MiB unpacked");

    compare(&archive, size, &|dir| {
        // Everything really arrived.
        let bytes: u64 = std::fs::read_dir(dir.join("bin"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        let source: u64 = std::fs::read_dir(src.join("bin"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert_eq!(bytes, source);
    });

    // Many small files and some links, like Grafana's public/ tree: what each entry
    // costs (the unpacker opens every parent directory without following links and
    // resolves every link beneath staging at the end).
    let files = 20_000;
    let small = tmp.path().join("small/webapp-1.0");
    for i in 0..files {
        let dir = small.join(format!("public/d{:02}/e{:02}", i % 50, i / 50 % 20));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("f{i}.js")),
            format!("export const v{i} = {i};\n"),
        )
        .unwrap();
        if i % 100 == 0 {
            std::os::unix::fs::symlink(format!("f{i}.js"), dir.join(format!("l{i}.js"))).unwrap();
        }
    }
    let archive = tmp.path().join("webapp.tar.gz");
    assert!(Command::new("tar")
        .arg("czf")
        .arg(&archive)
        .arg("-C")
        .arg(tmp.path().join("small"))
        .arg("webapp-1.0")
        .status()
        .unwrap()
        .success());
    let size = std::fs::metadata(&archive).unwrap().len() as f64 / 1048576.0;
    println!(
        "\narchive: {files} small files and {} links, {size:.1} MiB compressed",
        files / 100
    );
    compare(&archive, size, &|dir| {
        assert!(dir.join("public/d00/e00/f0.js").is_file());
        assert!(dir.join("public/d00/e00/l0.js").exists());
    });
}

/// Verify + unpack `archive` with ours and with sha256sum + GNU tar, best of three.
fn compare(archive: &std::path::Path, size: f64, check: &dyn Fn(&std::path::Path)) {
    let tmp = tempfile::tempdir_in(archive.parent().unwrap()).unwrap();
    let mut ours = f64::MAX;
    let mut gnu = f64::MAX;
    for round in 0..3 {
        let out = tmp.path().join(format!("ours{round}"));
        let t = Instant::now();
        let digest = sha256_file(archive).unwrap();
        let dir = unpack(archive, ArchiveFormat::TarGz, &out, "1.0").unwrap();
        ours = ours.min(t.elapsed().as_secs_f64());
        assert_eq!(digest.len(), 64);
        check(&dir);
        std::fs::remove_dir_all(&out).unwrap();

        let out = tmp.path().join(format!("gnu{round}"));
        std::fs::create_dir_all(&out).unwrap();
        let t = Instant::now();
        assert!(Command::new("sha256sum")
            .arg(archive)
            .output()
            .unwrap()
            .status
            .success());
        assert!(Command::new("tar")
            .arg("xzf")
            .arg(archive)
            .arg("-C")
            .arg(&out)
            .status()
            .unwrap()
            .success());
        gnu = gnu.min(t.elapsed().as_secs_f64());
        std::fs::remove_dir_all(&out).unwrap();
    }
    println!(
        "analytics-stack verify+unpack: {ours:.2} s ({:.0} MiB/s of archive)",
        size / ours
    );
    println!(
        "sha256sum + tar xzf:           {gnu:.2} s ({:.0} MiB/s of archive)",
        size / gnu
    );
    println!("ratio (ours / GNU): {:.2}", ours / gnu);
}
