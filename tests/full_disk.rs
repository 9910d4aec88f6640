//! A full disk during training: the save fails with one line that says so, the previous
//! checkpoint stays intact and usable, and no half-written file is left. The disk is a
//! small tmpfs mounted in a private mount namespace (`unshare -r -m`, no root needed where
//! user namespaces are allowed); where they are not, the tests say so and pass.

mod common;

use std::path::Path;
use std::process::Command;

fn namespaces_work() -> bool {
    let probe = tempfile::tempdir().unwrap();
    let ok = Command::new("unshare")
        .args([
            "-r",
            "-m",
            "sh",
            "-c",
            "mount -t tmpfs -o size=1m tmpfs \"$1\"",
            "sh",
        ])
        .arg(probe.path())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: no tmpfs can be mounted here (`unshare -r -m` and `mount` failed)");
    }
    ok
}

/// Run `script` with a `size` tmpfs mounted at `$DISK` (a fresh folder), `$BIN` the
/// binary and `$OUT` a folder on the ordinary disk for results.
fn on_small_disk(size: &str, script: &str, out: &Path) {
    let disk = out.join("disk");
    std::fs::create_dir(&disk).unwrap();
    let full = format!("set -e\nmount -t tmpfs -o size={size} tmpfs \"$DISK\"\n{script}",);
    let status = Command::new("unshare")
        .args(["-r", "-m", "sh", "-c", &full])
        .env("DISK", &disk)
        .env("OUT", out)
        .env("BIN", assert_cmd::cargo::cargo_bin("clipscope"))
        .status()
        .unwrap();
    assert!(status.success(), "the script failed: {status}");
}

fn read(out: &Path, name: &str) -> String {
    std::fs::read_to_string(out.join(name)).unwrap_or_default()
}

/// The checks common to both commands: failed, one line naming the full disk and the
/// intact checkpoint, the folder's files unchanged and nothing half-written beside them.
fn assert_failed_cleanly(out: &Path) {
    let stderr = read(out, "stderr");
    // 2: the command could not finish what it writes (docs/cli.md, exit statuses).
    assert_eq!(read(out, "rc").trim(), "2", "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    let line = errors[0];
    assert!(line.starts_with("clipscope: error: "), "{line}");
    assert!(line.contains("No space left on device"), "{line}");
    assert!(
        line.contains("previous checkpoint") && line.contains("intact"),
        "{line}"
    );
    assert_eq!(
        read(out, "before"),
        read(out, "after"),
        "the run folder changed"
    );
    let listing = read(out, "listing");
    assert!(
        !listing.contains(".tmp") && !listing.contains(".new"),
        "half-written files left: {listing}"
    );
}

#[test]
fn train_on_a_full_disk_keeps_the_previous_checkpoint() {
    if !namespaces_work() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let data = out.path().join("data");
    clipscope::data::synthetic::make_shapes(&data, 6, 32, 2).unwrap();
    let script = format!(
        r#"
train() {{ "$BIN" train --model resnet18 --pretrained none --image-size 32 --batch-size 8 \
    --data "{data}" --output "$DISK/run" "$@"; }}
train --epochs 1 > /dev/null
# Fill what is left of the disk.
cat /dev/zero > "$DISK/filler" 2>/dev/null || true
(cd "$DISK/run" && sha256sum * > "$OUT/before")
set +e
train --epochs 2 --resume > /dev/null 2> "$OUT/stderr"
echo $? > "$OUT/rc"
set -e
(cd "$DISK/run" && sha256sum * > "$OUT/after")
ls -A "$DISK/run" > "$OUT/listing"
rm "$DISK/filler"
"$BIN" eval --format json --checkpoint "$DISK/run" --data "{data}" > "$OUT/eval"
"#,
        data = data.display()
    );
    on_small_disk("300m", &script, out.path());
    assert_failed_cleanly(out.path());
    assert!(read(out.path(), "stderr").contains("(epoch 1)"));
    let eval: serde_json::Value = serde_json::from_str(&read(out.path(), "eval")).unwrap();
    assert!(eval.is_object(), "{eval}");
}

#[test]
fn finetune_on_a_full_disk_keeps_the_previous_checkpoint() {
    if !namespaces_work() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let data = out.path().join("data");
    clipscope::data::synthetic::make_shapes(&data, 8, 48, 3).unwrap();
    let script = format!(
        r#"
finetune() {{ "$BIN" finetune --model-dir "{tiny}" --batch-size 8 --data "{data}" \
    --output "$DISK/run" "$@"; }}
finetune --epochs 1 > /dev/null 2>&1
cat /dev/zero > "$DISK/filler" 2>/dev/null || true
(cd "$DISK/run" && find . -type f | sort | xargs sha256sum > "$OUT/before")
set +e
finetune --epochs 2 --resume > /dev/null 2> "$OUT/stderr"
echo $? > "$OUT/rc"
set -e
(cd "$DISK/run" && find . -type f | sort | xargs sha256sum > "$OUT/after")
ls -A "$DISK/run" > "$OUT/listing"
rm "$DISK/filler"
finetune --epochs 2 --resume > /dev/null 2>&1
"#,
        tiny = common::fixtures().join("tiny-clip").display(),
        data = data.display()
    );
    on_small_disk("64m", &script, out.path());
    assert_failed_cleanly(out.path());
}
