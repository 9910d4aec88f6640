//! Small helpers shared across domains.

use std::io::Write;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

/// Write a file atomically: a temporary file in the same folder, synced, then renamed
/// over the target, so readers see the old or the new content, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    let result = written.and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        // A full disk must not also keep the half-written file that filled it.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `text` with each control character (C0, DEL, C1) shown as `�`, for names and
/// messages that came from outside on their way to a terminal: a file name may hold
/// an escape sequence, or a line break that would split a one-line message.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().any(char::is_control) {
        std::borrow::Cow::Owned(
            text.chars()
                .map(|c| if c.is_control() { '\u{fffd}' } else { c })
                .collect(),
        )
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// Open (creating it if need be) a file that serves only to be locked. flock needs no
/// write access, so a lock file another user left read-only is opened for reading.
pub fn open_lock_file(path: &Path) -> std::io::Result<std::fs::File> {
    let open = |write| {
        std::fs::OpenOptions::new()
            .create(write)
            .truncate(false)
            .read(true)
            .write(write)
            .open(path)
    };
    open(true).or_else(|_| open(false))
}

/// `n` and `noun`, plural (with an s) unless `n` is 1: "1 input", "3 inputs".
pub fn count(n: usize, noun: &str) -> String {
    match n {
        1 => format!("1 {noun}"),
        n => format!("{n} {noun}s"),
    }
}

/// How long a temporary file must have gone untouched before it counts as orphaned:
/// a process on another machine (a cache shared over NFS) or in another PID namespace
/// (pods sharing a volume) is invisible in this `/proc`, so only age can tell.
const ORPHAN_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Remove the temporary files (`NAME.tmp-PID`) in `dir` that processes no longer
/// running left behind, stopped by a signal before they could rename or remove them:
/// a prepared-weights store's is hundreds of megabytes. A file counts as orphaned when
/// no process here has its PID and it has not been written for a day. Only where it
/// can tell that a process is gone (Linux); files it cannot remove stay.
pub fn remove_orphaned_temporaries(dir: &Path) {
    #[cfg(target_os = "linux")]
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.rsplit_once(".tmp-"))
            .and_then(|(_, pid)| pid.parse::<u32>().ok());
        let gone = pid.is_some_and(|pid| {
            pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
        });
        let stale = entry
            .metadata()
            .ok()
            .filter(std::fs::Metadata::is_file)
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= ORPHAN_AGE);
        if gone && stale {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = dir;
}

/// Gives a file the permissions a newly created one gets (`0666` less the umask):
/// candle writes safetensors through a temporary file created `0600`, which left
/// checkpoints unreadable to the group and others, unlike every other output.
pub fn with_usual_permissions(path: &Path) -> std::io::Result<()> {
    // Only where the umask can be read without changing it (Linux): elsewhere the file
    // keeps the temporary file's stricter mode rather than a guessed, looser one.
    #[cfg(target_os = "linux")]
    if let Some(umask) = umask() {
        use std::os::unix::fs::PermissionsExt;
        let mode = 0o666 & !umask;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    #[cfg(not(target_os = "linux"))]
    let _ = path;
    Ok(())
}

/// The process's umask, read from `/proc/self/status` (setting it to read it, as
/// `umask(2)` does, would race with threads creating files).
#[cfg(target_os = "linux")]
fn umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Umask:"))?;
    u32::from_str_radix(line.trim_start_matches("Umask:").trim(), 8).ok()
}

/// An error and its causes on one line, `context: cause: cause`, for the user. A cause
/// whose text the line already holds is left out (thiserror messages often include their
/// source, which the chain then repeats), and so is anything after a message's first
/// line (candle appends backtraces).
pub fn error_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = String::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        let text = text.lines().next().unwrap_or_default().trim();
        if !text.is_empty() && !line.contains(text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(text);
        }
        next = e.source();
    }
    line
}

/// A horizontal bar of `fraction` (0..=1) in eighth-block characters, padded to `width`
/// cells: the probability bars of the text output and of the app.
pub fn bar(fraction: f64, width: usize) -> String {
    const PARTS: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];
    let eighths = (fraction.clamp(0.0, 1.0) * (width * 8) as f64).round() as usize;
    let mut s = "█".repeat(eighths / 8);
    if !eighths.is_multiple_of(8) {
        s.push(PARTS[eighths % 8]);
    }
    format!("{s:<width$}")
}

/// A base URL from the environment variable `var`, else `default`, without a trailing `/`.
pub fn env_url(var: &str, default: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| default.to_string())
        .trim_end_matches('/')
        .to_string()
}

/// Keep freed memory in the allocator instead of handing it back to the system after
/// each use. Training allocates and frees the same large buffers every step; glibc maps
/// blocks over 128 KiB afresh each time and returns them on free, so every step paid
/// for page faults and zeroing (about 8% of a ResNet step). The setting is process-wide
/// and stays: [`trim_freed_memory`] returns what is free at the end of a training run.
/// Leaves the larger settings of [`use_one_heap`] in place. No-op elsewhere than glibc.
pub fn retain_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if !ONE_HEAP.load(std::sync::atomic::Ordering::Relaxed) {
        // SAFETY: mallopt only changes allocator thresholds, under glibc's own locks; any
        // thread may allocate meanwhile.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        }
    }
}

/// Whether [`use_one_heap`] has run.
static ONE_HEAP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// For a process that trains or evaluates networks from start to end: every thread
/// allocates from glibc's main heap, blocks up to 1 GiB included, and freed blocks stay
/// there for the next batch (until [`trim_freed_memory`]). By default each thread of
/// rayon's pool has its own arena of 64 MiB heaps and blocks over 32 MiB are mapped
/// afresh, so every batch faulted in and unmapped its largest activations again: with
/// one heap a ResNet18 epoch at 224 px trained at 19.1-22.2 images/s instead of
/// 14.3-14.6 (system time 20 s to 1.9 s) and `clipscope eval` took a third less time,
/// at no more peak memory (docs/cnn.md). Must run before any other thread exists, since
/// glibc gives a thread its arena at its first allocation; the binary calls it for its
/// training and evaluation commands, not for the app. No-op elsewhere than glibc.
pub fn use_one_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: as in `retain_freed_memory`; glibc applies the arena limit to threads that
    // have not allocated yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        // glibc 2.34 and older refuse thresholds over 32 MiB (and a refused value would
        // leave the fixed 128 KiB one once the trim threshold is set).
        if libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30) == 0 {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        }
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
    ONE_HEAP.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Give the allocator's free memory back to the system (after training). No-op
/// elsewhere than glibc.
pub fn trim_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages, under glibc's own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Run `f` on a worker of rayon's pool (at once when already on one). A forward or
/// backward pass is hundreds of parallel operations; called from a thread outside the
/// pool, each one is handed to the workers while the caller sleeps until it is done: a
/// wake-up per operation, and one thread more than the cores. On a worker the caller
/// takes its share of every operation instead (paired runs on 2 busy cores: ViT-B/32 at
/// batch 1 and the text encoder 13-21% faster, a ResNet18 training step 7-21%;
/// docs/benchmarks.md).
pub fn on_worker<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    rayon::join(f, || ()).0
}

/// The CPU's model name and the vector extensions that matter for speed, for benchmark
/// headers: "AMD EPYC (family 26 model 2); avx2 avx512f avx512_bf16".
pub fn cpu_summary() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo_field(&info, "flags").unwrap_or_default();
    let wanted = [
        "avx2",
        "fma",
        "avx512f",
        "avx512_vnni",
        "avx512_bf16",
        "avx512_fp16",
        "amx_bf16",
    ];
    let have: Vec<&str> = wanted
        .into_iter()
        .filter(|w| flags.split_whitespace().any(|f| f == *w))
        .collect();
    format!("{}; {}", cpu_model_in(&info), have.join(" "))
}

/// The CPU's model name with its family and model numbers where /proc/cpuinfo gives
/// them: virtual machines often name only the vendor line ("AMD EPYC" is Zen 3 as
/// family 25 model 1, Zen 4 as family 25 model 17 and Zen 5 as family 26), and speed
/// differs between them.
pub fn cpu_model() -> String {
    cpu_model_in(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default())
}

fn cpu_model_in(info: &str) -> String {
    let name = cpuinfo_field(info, "model name").unwrap_or_else(|| std::env::consts::ARCH.into());
    match (
        cpuinfo_field(info, "cpu family"),
        cpuinfo_field(info, "model"),
    ) {
        (Some(family), Some(model)) => format!("{name} (family {family} model {model})"),
        _ => name,
    }
}

/// The first CPU's value of the /proc/cpuinfo field `key` (the whole key: "model" is not
/// "model name").
fn cpuinfo_field(info: &str, key: &str) -> Option<String> {
    info.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

/// One output buffer shared by parallel tasks that each write their own disjoint part of
/// it (rows, columns or panels of a matrix product).
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(pub(crate) *mut f32);

// SAFETY: a SharedOut only hands out addresses; the tasks that write through them touch
// disjoint elements (each caller's contract).
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The address `offset` floats in (writing through it is the caller's business).
    pub(crate) fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// Whether this CPU has AVX-512F, which the hand-written f32 kernels (CLIP's weight
/// panels, the CNN's direct convolutions and dot products) need; always false in a
/// build without the `avx512` feature.
pub fn has_avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    return cfg!(feature = "avx512") && std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether this CPU has AVX2 and FMA, which the AVX2 kernels (CLIP's weight panels, the
/// vectorised exponential) need.
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether the CPU is Intel's (cpuid's vendor `GenuineIntel`): on the Intel CPU measured
/// (Emerald Rapids) the AVX512-BF16 pair product gave half the products per second of
/// f32's fused multiply-add, where on AMD's Zen 4 and 5 bf16 ran faster than f32.
pub fn cpu_is_intel() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: cpuid exists on every x86_64 CPU (the function is safe from Rust 1.94;
        // this crate builds from 1.90).
        #[allow(unused_unsafe)]
        let id = unsafe { std::arch::x86_64::__cpuid(0) };
        // The vendor string is EBX, EDX, ECX in that order.
        let vendor = [id.ebx, id.edx, id.ecx].map(u32::to_le_bytes).concat();
        vendor == b"GenuineIntel"
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// A zeroed buffer of `len` floats whose pages the kernel may back with huge pages:
/// loading a model writes 600 MB of fresh memory, and with 4 KiB pages about a fifth of
/// the load went to page faults. No-op elsewhere than Linux.
pub fn zeroed_floats(len: usize) -> Vec<f32> {
    let v = vec![0f32; len];
    #[cfg(target_os = "linux")]
    if len * 4 >= 4 << 20 {
        // SAFETY: madvise only hints how to back pages of this allocation, which is
        // live and untouched; an error (no THP support) is harmless and ignored.
        unsafe {
            let page = 4096;
            let start = (v.as_ptr() as usize).next_multiple_of(page);
            let end = (v.as_ptr() as usize + len * 4) / page * page;
            if end > start {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    v
}

/// The transpose of a row-major `rows × cols` matrix, in cache-sized tiles.
pub fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    // 16 x 16 tiles: every cache line read and written is used whole (16 floats), and
    // sixteen write streams stay clear of L1's set conflicts when the row length is a
    // multiple of 4 KiB (3072 floats is 3 x 4 KiB).
    const TILE: usize = 16;
    let mut t = zeroed_floats(a.len());
    // Each task writes TILE rows of the result (TILE columns of `a`).
    t.par_chunks_mut(TILE * rows.max(1))
        .enumerate()
        .for_each(|(cb, out)| {
            let c0 = cb * TILE;
            let cw = TILE.min(cols - c0);
            for r0 in (0..rows).step_by(TILE) {
                let rw = TILE.min(rows - r0);
                let mut tile = [[0f32; TILE]; TILE];
                for (r, line) in tile.iter_mut().enumerate().take(rw) {
                    line[..cw].copy_from_slice(&a[(r0 + r) * cols + c0..][..cw]);
                }
                for c in 0..cw {
                    let dst = &mut out[c * rows + r0..][..rw];
                    for (r, d) in dst.iter_mut().enumerate() {
                        *d = tile[r][c];
                    }
                }
            }
        });
    t
}

/// Whether two paths name the same file or folder: compared as canonical paths where both
/// exist (so `d/train` and `./d/train` agree), else as written.
pub fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Whether two optional paths are both absent or name the same file or folder.
pub fn same_optional_path(a: Option<&Path>, b: Option<&Path>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => same_path(a, b),
        _ => false,
    }
}

/// `path` made absolute against the current folder (not resolving links): how run
/// records keep the folders they were made from, so that a later command in another
/// folder finds the same ones.
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Whether `dir` is a folder with anything in it.
pub fn is_occupied_folder(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

/// Refuse an `--output` folder that exists as a file, before any work that would have
/// to be thrown away when its first file could not be written.
/// `flag` names the option in the message.
pub fn check_output_is_folder(output: &Path, flag: &str) -> Result<(), String> {
    // The nearest part of the path that exists must be a folder: `file/sub` cannot be
    // created any more than `file` can be written into.
    let existing = output.ancestors().find(|p| std::fs::metadata(p).is_ok());
    match existing.filter(|p| !p.is_dir()) {
        Some(file) if file == output => Err(format!(
            "{} is a file, not a folder; give another {flag}",
            output.display()
        )),
        Some(file) => Err(format!(
            "{}: {} is a file, not a folder; give another {flag}",
            output.display(),
            file.display()
        )),
        None => Ok(()),
    }
}

/// Refuse to start a new run in a folder that already holds files, unless the run is
/// resumed or replacing it was asked for; the message names both ways out.
pub fn check_run_folder(output: &Path, resume: bool, force: bool) -> Result<(), String> {
    check_output_is_folder(output, "--output")?;
    if is_occupied_folder(output) && !resume && !force {
        return Err(format!(
            "{} is not empty; give --resume to continue its run, --force to replace it, or another --output",
            output.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("{path}: {source}")]
    struct Wrapped {
        path: String,
        source: std::io::Error,
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn temporaries_of_ended_processes_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        // No process has a PID above the kernel's limit of 2^22.
        let orphan = dir.path().join("store.tmp-99999999");
        let fresh = dir.path().join("other.tmp-99999998");
        let mine = dir.path().join(format!("store.tmp-{}", std::process::id()));
        let other = dir.path().join("store.safetensors");
        for path in [&orphan, &fresh, &mine, &other] {
            std::fs::write(path, b"x").unwrap();
        }
        // Untouched for two days; `fresh` may be a live process's on another machine.
        let old = std::time::SystemTime::now() - 2 * super::ORPHAN_AGE;
        for path in [&orphan, &mine, &other] {
            std::fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        super::remove_orphaned_temporaries(dir.path());
        assert!(!orphan.exists() && fresh.exists() && mine.exists() && other.exists());
    }

    #[test]
    fn the_cpu_model_carries_its_family_and_model_numbers() {
        let info = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\n\
                    model\t\t: 2\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2\n";
        assert_eq!(super::cpu_model_in(info), "AMD EPYC (family 26 model 2)");
        // Without the numbers (other architectures), the name alone.
        assert_eq!(super::cpu_model_in("model name\t: Some CPU\n"), "Some CPU");
        assert_eq!(super::cpuinfo_field(info, "model").as_deref(), Some("2"));
    }

    #[test]
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    fn the_cpu_vendor_is_the_one_linux_reports() {
        let info = std::fs::read_to_string("/proc/cpuinfo").expect("/proc/cpuinfo");
        let vendor = super::cpuinfo_field(&info, "vendor_id");
        assert_eq!(
            super::cpu_is_intel(),
            vendor.as_deref() == Some("GenuineIntel")
        );
    }

    #[test]
    fn an_error_line_names_each_cause_once_on_one_line() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone (os error 2)\nmore");
        let e = anyhow::Error::new(Wrapped {
            path: "a.txt".into(),
            source: io,
        })
        .context("cannot read labels");
        assert_eq!(
            error_line(e.as_ref()),
            "cannot read labels: a.txt: gone (os error 2)"
        );
    }

    use super::*;

    #[test]
    fn transpose_matches_the_definition_on_ragged_shapes() {
        for (rows, cols) in [(13, 7), (1, 5), (5, 1), (9, 17), (3072, 3)] {
            let a: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let t = transpose(&a, rows, cols);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(t[c * rows + r], a[r * cols + c], "{rows}x{cols} at {r},{c}");
                }
            }
        }
    }

    #[test]
    fn bars_have_fixed_width() {
        assert_eq!(bar(0.0, 4).chars().count(), 4);
        assert_eq!(bar(1.0, 4), "████");
        assert_eq!(bar(0.5, 4), "██  ");
        assert_eq!(bar(0.0625, 2), "▏ ");
    }

    #[test]
    fn atomic_write_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
