//! Sharded, resumable jobs run as a scheduler runs them: the real binary, the tiny
//! fixture model, generated images in a temporary folder. Three shards at once merge to
//! the unsharded run; a shard killed with SIGKILL part-way and resumed gives the same
//! merged result with every image once.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{assert_success, fixtures, usage_error};
use serde_json::Value;

/// Images in the jobs of the issue's checks: more than 200, not a multiple of 3 or of
/// the batch.
const IMAGES: usize = 203;
/// Images in the other tests' jobs, which need fewer to make their point.
const FEW: usize = 41;

/// The binary, kept off the user's cache (each test has its own) and the network.
fn clipscope(cache: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clipscope"));
    cmd.env("CLIPSCOPE_CACHE", cache)
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .stdin(Stdio::null());
    cmd
}

fn tiny() -> String {
    fixtures().join("tiny-clip").display().to_string()
}

/// A folder of small generated pictures, each different.
fn make_images(dir: &Path, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let (w, h) = (24 + (i % 7) as u32, 20 + (i % 5) as u32);
            let img = image::RgbImage::from_fn(w, h, |x, y| {
                let v = (x * 37 + y * 11 + i as u32 * 53) % 256;
                image::Rgb([v as u8, (v * 3 % 256) as u8, (i * 7 % 256) as u8])
            });
            let path = dir.join(format!("img{i:03}.png"));
            img.save(&path).unwrap();
            path
        })
        .collect()
}

struct Job {
    dir: tempfile::TempDir,
    list: PathBuf,
    images: Vec<PathBuf>,
}

impl Job {
    fn new(n: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pictures = dir.path().join("pictures");
        std::fs::create_dir(&pictures).unwrap();
        let images = make_images(&pictures, n);
        let list = dir.path().join("list.txt");
        write_list(&list, &images);
        Self { dir, list, images }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn cache(&self) -> PathBuf {
        self.path("cache")
    }

    /// `merge PARTS... -o OUT`, names relative to the job's folder.
    fn merge(&self, parts: &[&str], out: &str) -> Output {
        self.merge_with(parts, out, &[])
    }

    /// `merge PARTS... -o OUT` with `extra` arguments.
    fn merge_with(&self, parts: &[&str], out: &str, extra: &[&str]) -> Output {
        let mut cmd = clipscope(&self.cache());
        cmd.arg("merge");
        for part in parts {
            cmd.arg(self.path(part));
        }
        cmd.arg("-o").arg(self.path(out)).args(extra);
        run(cmd)
    }

    /// `classify --inputs LIST` with `extra` arguments.
    fn classify(&self, extra: &[&str]) -> Command {
        let mut cmd = clipscope(&self.cache());
        cmd.args(["classify", "--inputs"])
            .arg(&self.list)
            .args(["--labels", "cat,dog,a red car", "--model-dir", &tiny()])
            .args(extra);
        cmd
    }
}

fn write_list(list: &Path, images: &[PathBuf]) {
    let text: String = images
        .iter()
        .map(|p| format!("{}\n", p.display()))
        .collect();
    std::fs::write(list, text).unwrap();
}

fn run(mut cmd: Command) -> Output {
    cmd.output().unwrap()
}

fn spawn(mut cmd: Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: Child) -> Output {
    let out = child.wait_with_output().unwrap();
    assert_success(&out);
    out
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Same images in the same order, probabilities within 1e-6.
fn assert_same_results(got: &[Value], want: &[Value]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g["image"], w["image"]);
        let (gp, wp) = (
            g["predictions"].as_array().unwrap(),
            w["predictions"].as_array().unwrap(),
        );
        assert_eq!(gp.len(), wp.len());
        for w in wp {
            let g = gp.iter().find(|g| g["label"] == w["label"]).unwrap();
            let d = (g["probability"].as_f64().unwrap() - w["probability"].as_f64().unwrap()).abs();
            assert!(d <= 1e-6, "{}: {} differs by {d}", w["image"], w["label"]);
        }
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn three_shards_at_once_merge_to_the_unsharded_run() {
    let job = Job::new(IMAGES);
    let shards: Vec<Child> = (0..3)
        .map(|i| {
            let out = job.path(&format!("shard-{i}.jsonl"));
            let mut cmd = job.classify(&["--shard", &format!("{i}/3"), "--output"]);
            cmd.arg(out);
            spawn(cmd)
        })
        .collect();
    let mut whole = job.classify(&["--no-cache", "--output"]);
    whole.arg(job.path("whole.jsonl"));
    assert_success(&run(whole));
    for (i, child) in shards.into_iter().enumerate() {
        let out = finish(child);
        assert!(
            stderr(&out).contains(&format!("shard {i}/3: 6")),
            "{}",
            stderr(&out)
        );
    }
    let out = job.merge(
        &["shard-2.jsonl", "shard-0.jsonl", "shard-1.jsonl"],
        "merged.jsonl",
    );
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 shards"));
    let merged = read_lines(&job.path("merged.jsonl"));
    let whole = read_lines(&job.path("whole.jsonl"));
    assert_eq!(whole.len(), IMAGES);
    assert_eq!(whole[0]["image"], job.images[0].display().to_string());
    assert_same_results(&merged, &whole);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(job.path("merged.jsonl.manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["complete"], Value::Bool(true));
    assert_eq!(manifest["items"], IMAGES);

    // An earlier merge is replaced only with --force.
    let shards = ["shard-0.jsonl", "shard-1.jsonl", "shard-2.jsonl"];
    let again = job.merge(&shards, "merged.jsonl");
    assert!(usage_error(&again).contains("already there; give --force"));
    assert_success(&job.merge_with(&shards, "merged.jsonl", &["--force"]));
    // A merge that fails part-way (a shard damaged after it finished) leaves nothing.
    let shard_1 = job.path("shard-1.jsonl");
    let text = std::fs::read_to_string(&shard_1).unwrap();
    std::fs::write(&shard_1, text.replacen('{', "{oops", 1)).unwrap();
    let broken = job.merge(&shards, "broken.jsonl");
    assert!(
        usage_error(&broken).contains("shard-1.jsonl"),
        "{}",
        stderr(&broken)
    );
    assert!(!job.path("broken.jsonl").exists());
    assert!(!job.path("broken.jsonl.manifest.json").exists());
    // Nor does a failed --force cost the earlier, whole output.
    let before = std::fs::read(job.path("merged.jsonl")).unwrap();
    usage_error(&job.merge_with(&shards, "merged.jsonl", &["--force"]));
    assert_eq!(std::fs::read(job.path("merged.jsonl")).unwrap(), before);
    assert!(job.path("merged.jsonl.manifest.json").exists());
    let leftovers: Vec<_> = std::fs::read_dir(job.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("merging"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A named pipe in the list: reading it blocks until someone writes, so the shard
/// stops part-way, deterministically, after the results before it are flushed.
#[cfg(unix)]
fn make_fifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates a file.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

fn wait_for_lines(path: &Path, at_least: usize) {
    let start = Instant::now();
    loop {
        let n = std::fs::read_to_string(path).map_or(0, |s| s.lines().count());
        if n >= at_least {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{n} lines after 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(unix)]
#[test]
fn a_shard_killed_part_way_resumes_with_every_image_once() {
    use std::io::Write;
    let mut job = Job::new(IMAGES);
    // With the pipe, shard 1/3 covers inputs 68..136; the pipe is its 40th.
    let blocker = job.path("pictures/img-blocker.png");
    make_fifo(&blocker);
    job.images.insert(107, blocker.clone());
    write_list(&job.list, &job.images);
    let out1 = job.path("shard-1.jsonl");

    let mut first = job.classify(&["--shard", "1/3", "--output"]);
    first.arg(&out1);
    let mut killed = spawn(first);
    let others: Vec<Child> = [0, 2]
        .iter()
        .map(|i| {
            let mut cmd = job.classify(&["--shard", &format!("{i}/3"), "--output"]);
            cmd.arg(job.path(&format!("shard-{i}.jsonl")));
            spawn(cmd)
        })
        .collect();
    wait_for_lines(&out1, 16);
    killed.kill().unwrap(); // SIGKILL
    let status = killed.wait().unwrap();
    assert!(!status.success());
    for child in others {
        finish(child);
    }
    let before = read_lines(&out1).len();
    assert!(
        (16..40).contains(&before),
        "{before} results before the kill"
    );

    // Merging now is refused: the shard did not finish.
    let parts = ["shard-0.jsonl", "shard-1.jsonl", "shard-2.jsonl"];
    let merge = |out: &str| job.merge(&parts, out);
    assert!(usage_error(&merge("early.jsonl")).contains("shard 1/3 is not finished"));

    // As if the kill had come in the middle of a write.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&out1)
        .unwrap();
    f.write_all(br#"{"image":"half a li"#).unwrap();
    drop(f);
    std::fs::remove_file(&blocker).unwrap();
    std::fs::copy(&job.images[0], &blocker).unwrap();

    let mut again = job.classify(&["--shard", "1/3", "--resume", "--output"]);
    again.arg(&out1);
    let out = run(again);
    assert_success(&out);
    assert!(
        stderr(&out).contains(&format!("({before} from an earlier run)")),
        "{}",
        stderr(&out)
    );
    assert_success(&merge("merged.jsonl"));

    let mut whole = job.classify(&["--no-cache", "--output"]);
    whole.arg(job.path("whole.jsonl"));
    assert_success(&run(whole));
    let merged = read_lines(&job.path("merged.jsonl"));
    assert_same_results(&merged, &read_lines(&job.path("whole.jsonl")));
    let mut names: Vec<&str> = merged
        .iter()
        .map(|r| r["image"].as_str().unwrap())
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), IMAGES + 1, "each image exactly once");
}

#[test]
fn resuming_or_merging_another_jobs_output_is_refused() {
    let job = Job::new(FEW);
    let out = job.path("r.jsonl");
    let mut first = job.classify(&["--shard", "0/2", "--output"]);
    first.arg(&out);
    assert_success(&run(first));
    let mut other_labels = clipscope(&job.cache());
    other_labels
        .args(["classify", "--inputs"])
        .arg(&job.list)
        .args(["--labels", "cat,dog", "--model-dir", &tiny()])
        .args(["--shard", "0/2", "--resume", "--output"])
        .arg(&out);
    let err = usage_error(&run(other_labels));
    assert!(
        err.contains("another job's output")
            && err.contains("the setting labels (--labels) differs"),
        "{err}"
    );

    // Nor are embeddings of another precision mixed in.
    let mut other_precision = job.classify(&["--shard", "0/2", "--resume", "--precision", "bf16"]);
    other_precision.arg("--output").arg(&out);
    let err = usage_error(&run(other_precision));
    assert!(
        err.contains(
            r#"the setting model_precision (--precision) differs (the output has the default, this run "bf16")"#
        ),
        "{err}"
    );

    let mut other_shard = job.classify(&["--shard", "1/2", "--resume", "--output"]);
    other_shard.arg(&out);
    assert!(usage_error(&run(other_shard)).contains("it is shard 0/2, not 1/2"));

    let merge = job.merge(&["r.jsonl"], "m.jsonl");
    assert!(usage_error(&merge).contains("shard 1/2 is missing"));

    // Resuming a finished shard does nothing more.
    let mut done = job.classify(&["--shard", "0/2", "--resume", "--output"]);
    done.arg(&out);
    let o = run(done);
    assert_success(&o);
    assert!(stderr(&o).contains("20 inputs") && stderr(&o).contains("(20 from"));
}

#[test]
fn a_rerun_without_resume_or_force_keeps_the_earlier_results() {
    let job = Job::new(FEW);
    let out = job.path("r.jsonl");
    let mut first = job.classify(&["--output"]);
    first.arg(&out);
    assert_success(&run(first));
    let before = std::fs::read(&out).unwrap();
    let results = read_lines(&out);

    let mut again = job.classify(&["--output"]);
    again.arg(&out);
    let err = usage_error(&run(again));
    assert!(
        err.contains("r.jsonl: holds results of an earlier run")
            && err.contains("--resume")
            && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&out).unwrap(),
        before,
        "the results are untouched"
    );

    let mut forced = job.classify(&["--force", "--output"]);
    forced.arg(&out);
    let o = run(forced);
    assert_success(&o);
    assert!(
        stderr(&o).contains("(0 from an earlier run)"),
        "{}",
        stderr(&o)
    );
    assert_same_results(&read_lines(&out), &results);

    // Embeddings too: the shard's files are refused, another shard beside them is not.
    let dir = job.path("emb");
    let embed = |extra: &[&str]| {
        let mut cmd = clipscope(&job.cache());
        cmd.args(["embed", "--inputs"])
            .arg(&job.list)
            .args(["--model-dir", &tiny()])
            .args(extra)
            .arg("--output")
            .arg(&dir);
        run(cmd)
    };
    assert_success(&embed(&["--shard", "0/2"]));
    let npy = dir.join("part-00000-of-00002.npy");
    let rows = std::fs::read(&npy).unwrap();
    let err = usage_error(&embed(&["--shard", "0/2"]));
    assert!(err.contains("holds results of an earlier run"), "{err}");
    assert_eq!(
        std::fs::read(&npy).unwrap(),
        rows,
        "the embeddings are untouched"
    );
    let err = usage_error(&embed(&["--shard", "0/2", "--resume", "--force"]));
    assert!(
        err.contains("'--resume' cannot be used with '--force'"),
        "{err}"
    );
    assert_success(&embed(&["--shard", "1/2"]));
    assert_success(&embed(&["--shard", "0/2", "--force"]));
}

#[test]
fn job_options_that_cannot_work_are_refused_and_q_keeps_the_summary_quiet() {
    let job = Job::new(FEW);
    let refused = |extra: &[&str]| usage_error(&run(job.classify(extra)));
    let err = refused(&["--output", "-"]);
    assert!(err.contains("--output -: a job writes files"), "{err}");
    let err = refused(&["--format", "csv", "--output", "r.jsonl"]);
    assert!(
        err.contains("'--format <FORMAT>' cannot be used with '--output"),
        "{err}"
    );
    let notes = job.path("notes.txt");
    std::fs::write(&notes, "hello").unwrap();
    let mut onto_notes = job.classify(&["--output"]);
    onto_notes.arg(&notes);
    let err = usage_error(&run(onto_notes));
    assert!(
        err.contains("notes.txt: exists and is not a clipscope output"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "hello");
    let mut unclosed = clipscope(&job.cache());
    unclosed
        .args(["classify", "--inputs"])
        .arg(&job.list)
        .args(["--labels", "\"cat, sitting,dog", "--model-dir", &tiny()]);
    let err = usage_error(&run(unclosed));
    assert!(err.contains("a double quote is never closed"), "{err}");

    let empty = run(job.classify(&["--shard", "0/50", "--format", "json"]));
    assert_success(&empty);
    assert!(
        stderr(&empty).contains("shard 0/50 holds none of the 41 input(s)"),
        "{}",
        stderr(&empty)
    );

    let mut quiet = job.classify(&["-q", "--output"]);
    quiet.arg(job.path("q.jsonl"));
    let o = run(quiet);
    assert_success(&o);
    assert_eq!(stderr(&o), "", "-q leaves stderr to errors");
    assert_eq!(read_lines(&job.path("q.jsonl")).len(), FEW);
}

#[test]
fn embeddings_go_to_npy_shards_that_merge_to_the_unsharded_ones() {
    let job = Job::new(FEW);
    let parts = job.path("parts");
    let shards: Vec<Child> = (0..3)
        .map(|i| {
            let mut cmd = clipscope(&job.cache());
            cmd.args(["embed", "--inputs"])
                .arg(&job.list)
                .args(["--model-dir", &tiny(), "--shard", &format!("{i}/3")])
                .arg("--output")
                .arg(&parts);
            spawn(cmd)
        })
        .collect();
    for child in shards {
        finish(child);
    }
    let mut whole = clipscope(&job.cache());
    whole
        .args(["embed", "--no-cache", "--model-dir", &tiny(), "--output"])
        .arg(job.path("whole"))
        .arg(job.path("pictures"));
    assert_success(&run(whole));
    assert_success(&job.merge(&["parts"], "merged"));
    // Shards of the same inputs split two ways cannot share a folder: refused up front.
    let mut two_ways = clipscope(&job.cache());
    two_ways
        .args(["embed", "--inputs"])
        .arg(&job.list)
        .args(["--model-dir", &tiny(), "--shard", "0/2", "--output"])
        .arg(&parts);
    let err = usage_error(&run(two_ways));
    assert!(err.contains("a shard of a job split another way"), "{err}");
    // A file that is no job's output is named as such.
    let npy = parts.join("part-00000-of-00003.npy");
    let mut not_output = clipscope(&job.cache());
    not_output
        .arg("merge")
        .arg(&npy)
        .arg("-o")
        .arg(job.path("x.jsonl"));
    assert!(usage_error(&run(not_output)).contains("not the output of a clipscope job"));

    let rows = |dir: &str| -> (Vec<f32>, Vec<Value>) {
        let bytes = std::fs::read(job.path(dir).join("part-00000-of-00001.npy")).unwrap();
        let header = std::str::from_utf8(&bytes[10..128]).unwrap();
        assert!(
            header.contains(&format!("'shape': ({FEW}, 16)")),
            "{header}"
        );
        let floats = bytes[128..]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        (
            floats,
            read_lines(&job.path(dir).join("part-00000-of-00001.jsonl")),
        )
    };
    let (merged, merged_table) = rows("merged");
    let (whole, whole_table) = rows("whole");
    assert_eq!(merged_table, whole_table);
    assert_eq!(whole_table[5]["image"], job.images[5].display().to_string());
    assert_eq!(merged.len(), FEW * 16);
    assert!(merged
        .iter()
        .zip(&whole)
        .all(|(a, b)| (a - b).abs() <= 1e-6));
}

#[test]
fn half_precision_rows_and_inputs_from_standard_input() {
    let job = Job::new(FEW);
    let list: String = job.images[..20]
        .iter()
        .map(|p| format!("{}\n", p.display()))
        .collect();
    let mut cmd = clipscope(&job.cache());
    cmd.args([
        "embed",
        "--inputs",
        "-",
        "--precision",
        "f16",
        "--model-dir",
        &tiny(),
    ])
    .arg("--output")
    .arg(job.path("h"))
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(list.as_bytes())
        .unwrap();
    finish(child);
    let bytes = std::fs::read(job.path("h/part-00000-of-00001.npy")).unwrap();
    assert!(std::str::from_utf8(&bytes[10..128])
        .unwrap()
        .contains("'<f2'"));
    assert_eq!(bytes.len(), 128 + 20 * 16 * 2);

    // The same embeddings as JSON on standard output, to f16's precision.
    let mut json = clipscope(&job.cache());
    json.args(["embed", "--model-dir", &tiny()])
        .arg(&job.images[3]);
    let v: Value = serde_json::from_slice(&run(json).stdout).unwrap();
    let want = v["items"][0]["embedding"].as_array().unwrap();
    for (k, w) in want.iter().enumerate() {
        let at = 128 + (3 * 16 + k) * 2;
        let h = half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32();
        assert!((h - w.as_f64().unwrap() as f32).abs() < 1e-3);
    }
}

#[test]
fn shard_auto_reads_the_schedulers_variables() {
    let job = Job::new(FEW);
    let mut slurm = job.classify(&["--shard", "auto", "--output"]);
    slurm
        .arg(job.path("s.jsonl"))
        .env("SLURM_ARRAY_TASK_ID", "2")
        .env("SLURM_ARRAY_TASK_MIN", "1")
        .env("SLURM_ARRAY_TASK_COUNT", "4");
    let out = run(slurm);
    assert!(
        stderr(&out).contains("shard 1/4: 10 inputs"),
        "{}",
        stderr(&out)
    );

    let mut k8s = job.classify(&["--shard", "auto", "--output"]);
    k8s.arg(job.path("k.jsonl"))
        .env("JOB_COMPLETION_INDEX", "3");
    assert!(usage_error(&run(k8s)).contains("--shard-count"));

    let mut k8s = job.classify(&["--shard", "auto", "--shard-count", "4", "--format", "json"]);
    k8s.env("JOB_COMPLETION_INDEX", "3");
    let out = run(k8s);
    assert_success(&out);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 11);
    assert_eq!(
        results[10]["image"],
        job.images[FEW - 1].display().to_string()
    );

    let bad = run(job.classify(&["--shard", "3/3"]));
    assert!(usage_error(&bad).contains("--shard 3/3: shard 3 is out of range"));
}

#[test]
fn a_job_reports_each_failed_input_on_stderr_as_it_goes() {
    let job = Job::new(FEW);
    let broken = job.path("pictures").join("broken.png");
    std::fs::write(&broken, b"not a picture").unwrap();
    let mut images = job.images.clone();
    images.push(broken.clone());
    write_list(&job.list, &images);
    let mut classify = job.classify(&["--output"]);
    classify.arg(job.path("out.jsonl"));
    let mut embed = clipscope(&job.cache());
    embed
        .args(["embed", "--inputs"])
        .arg(&job.list)
        .args(["--model-dir", &tiny(), "--output"])
        .arg(job.path("embeddings"));
    for cmd in [classify, embed] {
        let out = run(cmd);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        let line = format!("clipscope: error: {}", broken.display());
        assert_eq!(err.matches(&line).count(), 1, "{err}");
        assert!(err.contains("1 failed"), "{err}");
    }
}
