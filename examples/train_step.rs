//! Time ResNet18 (or, with `MODEL=vgg16`, VGG16) training steps and evaluation forward
//! passes, and single convolutions with `CONVS=1`, on the CPU or, with `DEVICE=cuda` in
//! a `cuda` build, on the GPU (no data loading),
//! to compare with `bench/train_step_torch.py`; `EVAL_ONLY=1` skips the training steps
//! (to profile the evaluation forward pass alone), `SEPARATE_HEAPS=1` leaves glibc's
//! per-thread heaps as they are, `CLIPSCOPE_LOG=clipscope::cnn::conv=trace` logs every
//! convolution op's time (summed up by `bench/conv_times.py`). Usage:
//! `cargo run --release --example train_step [BATCH] [SIZE] [STEPS]`
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use clipscope::cnn::optim::{Optimizer, OptimizerKind, Param};
use clipscope::cnn::{Arch, Network};

fn main() -> candle_core::Result<()> {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("CLIPSCOPE_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init();
    }
    // As the binary's training and evaluation commands do, before any thread exists.
    if std::env::var_os("SEPARATE_HEAPS").is_none() {
        clipscope::util::use_one_heap();
    }
    // On a worker of rayon's pool, as the library's training loop runs its steps.
    clipscope::util::on_worker(run)
}

fn run() -> candle_core::Result<()> {
    // As the clipscope binary does (see src/main.rs): candle's idle pool thread parks
    // at once instead of spinning against rayon's.
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0");
    }
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (batch, size, steps) = (
        *args.first().unwrap_or(&32),
        *args.get(1).unwrap_or(&64),
        *args.get(2).unwrap_or(&10),
    );
    clipscope::util::retain_freed_memory();
    let dev = match std::env::var("DEVICE") {
        Ok(spec) => clipscope::clip::parse_device(&spec)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?,
        Err(_) => Device::Cpu,
    };
    let map = VarMap::new();
    let arch = std::env::var("MODEL")
        .ok()
        .and_then(|m| Arch::from_name(&m))
        .unwrap_or(Arch::Resnet18);
    let model = Network::new(arch, &map, &dev, 4, 0)?;
    let mut params: Vec<Param> = map
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(n, v)| Param {
            name: n.clone(),
            var: v.clone(),
        })
        .collect();
    params.sort_by(|a, b| a.name.cmp(&b.name));
    let mut opt = Optimizer::new(OptimizerKind::Adamw, params, 1e-3, 0.0);
    let x = Tensor::randn(0f32, 1., (batch, 3, size, size), &dev)?;
    let y = Tensor::from_vec(
        (0..batch as u32).map(|i| i % 4).collect::<Vec<_>>(),
        batch,
        &dev,
    )?;
    let mut times = Vec::new();
    let mut phases = [0f64; 3];
    let training_steps = if std::env::var_os("EVAL_ONLY").is_some() {
        0
    } else {
        steps + 2
    };
    for i in 0..training_steps {
        let t = Instant::now();
        // A GPU's calls return before its work is done: wait for it before each reading.
        let logits = model.forward_t(&x, true)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
        dev.synchronize()?;
        let t1 = t.elapsed().as_secs_f64();
        let grads = loss.backward()?;
        dev.synchronize()?;
        let t2 = t.elapsed().as_secs_f64();
        opt.step(&grads)?;
        dev.synchronize()?;
        let t3 = t.elapsed().as_secs_f64();
        if i >= 2 {
            phases[0] += t1;
            phases[1] += t2 - t1;
            phases[2] += t3 - t2;
        }
        times.push(t3);
    }
    let per = |p: f64| p / steps as f64 * 1e3;
    println!(
        "mean forward {:.1} ms, backward {:.1} ms, optimizer {:.1} ms",
        per(phases[0]),
        per(phases[1]),
        per(phases[2])
    );
    report(
        "train step",
        batch,
        size,
        times.get(2..).unwrap_or_default(),
    );

    // Evaluation-mode forward pass (what --freeze-backbone and `eval` run per batch).
    let mut ev = Vec::new();
    for _ in 0..steps.max(3) {
        let t = Instant::now();
        let logits = model.forward_t(&x, false)?;
        logits.to_vec2::<f32>()?;
        ev.push(t.elapsed().as_secs_f64());
    }
    report("eval forward", batch, size, &ev);

    if std::env::var_os("CONVS").is_none() {
        return Ok(());
    }
    // Single convolutions of ResNet18 at this size (cin, cout, k, stride, input side).
    let s = size / 4;
    for (cin, cout, k, st, h) in [
        (3, 64, 7, 2, size),
        (64, 64, 3, 1, s),
        (64, 128, 3, 2, s),
        (128, 128, 3, 1, s / 2),
        (256, 256, 3, 1, s / 4),
        (512, 512, 3, 1, s / 8),
    ] {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (batch, cin, h, h), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.1, (cout, cin, k, k), &dev)?)?;
        let (mut f, mut b) = (Vec::new(), Vec::new());
        for _ in 0..7 {
            let t = Instant::now();
            let y = clipscope::cnn::conv::conv2d(x.as_tensor(), w.as_tensor(), st, k / 2)?;
            let y = y.to_dtype(DType::F32)?;
            f.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let _g = y.sum_all()?.backward()?;
            b.push(t.elapsed().as_secs_f64());
        }
        f.sort_by(f64::total_cmp);
        b.sort_by(f64::total_cmp);
        println!(
            "conv {cin:>3}->{cout:<3} k{k} s{st} {h:>3}x{h:<3}: fwd {:6.2} ms, bwd {:6.2} ms",
            f[3] * 1e3,
            b[3] * 1e3
        );
    }
    Ok(())
}

/// Print the median of `seconds` as time per batch and images per second, and the
/// fastest time.
fn report(what: &str, batch: usize, size: usize, seconds: &[f64]) {
    let mut t = seconds.to_vec();
    t.sort_by(f64::total_cmp);
    let Some(&med) = t.get(t.len() / 2) else {
        return;
    };
    // The fastest run as well: on a shared machine it is the steadiest of the two.
    println!(
        "{what} b{batch} {size}px: median {:.1} ms, {:.1} img/s (fastest {:.1} ms)",
        med * 1e3,
        batch as f64 / med,
        t[0] * 1e3
    );
}
