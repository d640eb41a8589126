//! Invalid settings fail at start with a message naming the flag or the file and field.

use std::process::Command;

use crate::common::EXE;

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(EXE).args(args).output().expect("binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_and_files_are_named() {
    let base = [
        "run",
        "--network",
        "10.244.0.0/16",
        "--public-ip",
        "192.0.2.1",
    ];
    let (ok, err) = run(&[&base[..], &["--subnet", "10.99.1.0/24"]].concat());
    assert!(!ok);
    assert!(err.contains("invalid --subnet `10.99.1.0/24`"), "{err}");

    let (ok, err) = run(&[
        &base[..],
        &["--subnet", "10.244.1.0/24", "--peer", "nonsense"],
    ]
    .concat());
    assert!(!ok);
    assert!(
        err.contains("--peer") && err.contains("SUBNET=PUBLIC_IP"),
        "{err}"
    );

    let dir = std::env::temp_dir().join(format!("fustian-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("node.toml");
    std::fs::write(
        &file,
        "network = \"10.244.0.0/16\"\nsubnet = \"10.244.1.0/24\"\npublic_ip = \"192.0.2.1\"\n\
         [[peer]]\nsubnet = \"10.244.2.0/24\"\npublic_ip = \"not-an-ip\"\n",
    )
    .expect("write");
    let (ok, err) = run(&["run", "--config", file.to_str().expect("utf8")]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!ok);
    assert!(err.contains("node.toml: peer[0] `not-an-ip`"), "{err}");
}
