//! bf16 products on Intel AMX tiles (Sapphire Rapids and later Xeons).
//!
//! One `tdpbf16ps` multiplies a 16 x 32 tile of bf16 activations by a 32 x 16 tile of
//! bf16 weights into 16 x 16 f32 sums: 8192 multiply-adds, 256 times a `vdpbf16ps`'s
//! (about 16 times as many per cycle); this is what `torch.autocast` reaches through
//! oneDNN on those CPUs. The weights' panels of
//! [`super::half::PackedHalf`] are already in the tiles' pair-interleaved layout
//! (`[pair][column][2]`, 128 bytes per pair row), so a 16-column tile is a strided load
//! straight from a panel. Activations are rounded once to row-major bf16.
//!
//! The kernel is written against [`TileUnit`], the five tile operations it uses, so that
//! its blocking, padding and edges are tested everywhere against a software model of the
//! instructions (Intel's pseudo-code); the hardware unit is a handful of `asm!` lines.
//! Because no AMX machine was available while this was written, [`ready`] also checks a
//! small product against the reference before the first use and keeps the AVX512-BF16
//! kernel if they disagree.

use rayon::prelude::*;

/// Rows of a tile (and of a C tile's block half).
const TILE_ROWS: usize = 16;
/// Bytes per tile row: 32 bf16 activations, 16 weight pairs or 16 f32 sums.
const TILE_BYTES: usize = 64;
/// Input pairs consumed by one tile step.
pub(super) const STEP_PAIRS: usize = 16;
/// Rows and columns of the 2 x 2 block of C tiles each step updates.
pub(super) const BLOCK: usize = 2 * TILE_ROWS;
/// Output columns per weight panel: two tiles' worth.
pub(super) const PANEL_COLUMNS: usize = BLOCK;
/// bf16 values per pair row of a weight panel.
const PANEL_ROW_VALUES: usize = PANEL_COLUMNS * 2;
/// Bytes per pair row of a weight panel.
const PANEL_ROW_BYTES: usize = PANEL_ROW_VALUES * 2;
/// Bytes of activations a row chunk may hold: the chunk stays in a core's L2 (2 MiB on
/// Sapphire Rapids) while every panel passes over it, instead of all activations
/// streaming from L3 once per panel.
const CHUNK_BYTES: usize = 1 << 20;

/// The tile operations the kernel needs. Tiles 0-3 hold sums, 4-5 activations and 6-7
/// weights, all configured as 16 rows of 64 bytes.
pub(super) trait TileUnit: Default {
    /// Configure the eight tiles (`ldtilecfg`).
    ///
    /// # Safety
    /// The CPU has AMX and the process may use its tile state.
    unsafe fn configure(&mut self);
    /// Load tile `t` from 16 rows `stride` bytes apart (`tileloadd`).
    ///
    /// # Safety
    /// Configured; 16 rows of 64 bytes readable from `src`.
    unsafe fn load(&mut self, t: usize, src: *const u8, stride: usize);
    /// Store tile `t` to 16 rows `stride` bytes apart (`tilestored`).
    ///
    /// # Safety
    /// Configured; 16 rows of 64 bytes writable at `dst`.
    unsafe fn store(&mut self, t: usize, dst: *mut u8, stride: usize);
    /// `tile c += tile a · tile b` in bf16 pairs (`tdpbf16ps`), for the block's four
    /// combinations `(0, 4, 6)`, `(1, 4, 7)`, `(2, 5, 6)`, `(3, 5, 7)`.
    ///
    /// # Safety
    /// Configured.
    unsafe fn dot(&mut self, c: usize, a: usize, b: usize);
    /// Give the tile state back (`tilerelease`).
    ///
    /// # Safety
    /// None beyond having the CPU feature.
    unsafe fn release(&mut self);
}

/// The 64-byte tile configuration (palette 1): eight tiles of 16 rows x 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn eight_full_tiles() -> Self {
        let mut c = [0u8; 64];
        c[0] = 1; // palette 1
        for t in 0..8 {
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&(TILE_BYTES as u16).to_le_bytes());
            c[48 + t] = TILE_ROWS as u8;
        }
        Self(c)
    }
}

/// The CPU's tiles, through `asm!` (Rust's AMX intrinsics are not stable).
#[cfg(target_arch = "x86_64")]
#[derive(Default)]
pub(super) struct Amx;

/// One `asm!` per tile register, whose name must be literal in the instruction:
/// `$before` and `$after` surround the register's number.
#[cfg(target_arch = "x86_64")]
macro_rules! per_tile {
    ($t:expr, $before:literal, $after:literal, $($operands:tt)*) => {
        match $t {
            0 => std::arch::asm!(concat!($before, "0", $after), $($operands)*),
            1 => std::arch::asm!(concat!($before, "1", $after), $($operands)*),
            2 => std::arch::asm!(concat!($before, "2", $after), $($operands)*),
            3 => std::arch::asm!(concat!($before, "3", $after), $($operands)*),
            4 => std::arch::asm!(concat!($before, "4", $after), $($operands)*),
            5 => std::arch::asm!(concat!($before, "5", $after), $($operands)*),
            6 => std::arch::asm!(concat!($before, "6", $after), $($operands)*),
            7 => std::arch::asm!(concat!($before, "7", $after), $($operands)*),
            _ => unreachable!("AMX has eight tile registers"),
        }
    };
}

#[cfg(target_arch = "x86_64")]
impl TileUnit for Amx {
    unsafe fn configure(&mut self) {
        let config = TileConfig::eight_full_tiles();
        std::arch::asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack));
    }

    unsafe fn load(&mut self, t: usize, src: *const u8, stride: usize) {
        per_tile!(t, "tileloadd tmm", ", [{}+{}*1]", in(reg) src, in(reg) stride, options(nostack));
    }

    unsafe fn store(&mut self, t: usize, dst: *mut u8, stride: usize) {
        per_tile!(t, "tilestored [{}+{}*1], tmm", "", in(reg) dst, in(reg) stride, options(nostack));
    }

    unsafe fn dot(&mut self, c: usize, a: usize, b: usize) {
        match (c, a, b) {
            (0, 4, 6) => std::arch::asm!("tdpbf16ps tmm0, tmm4, tmm6", options(nostack)),
            (1, 4, 7) => std::arch::asm!("tdpbf16ps tmm1, tmm4, tmm7", options(nostack)),
            (2, 5, 6) => std::arch::asm!("tdpbf16ps tmm2, tmm5, tmm6", options(nostack)),
            (3, 5, 7) => std::arch::asm!("tdpbf16ps tmm3, tmm5, tmm7", options(nostack)),
            _ => unreachable!("the kernel uses four tile combinations only"),
        }
    }

    unsafe fn release(&mut self) {
        std::arch::asm!("tilerelease", options(nostack, nomem));
    }
}

/// `out += a · panels` for `rows` activations already rounded to bf16 in `a`
/// (`round_up(rows, 32)` rows of `2 * panel_pairs` values, zero-padded), the weights in
/// 32-column panels of `panel_pairs` pair rows each (a multiple of [`STEP_PAIRS`],
/// zero-padded), `out` row-major `rows x outputs` starting values.
///
/// # Safety
/// `U`'s operations must be usable (the CPU has AMX and the OS granted its state); the
/// buffers have the sizes above.
pub(super) unsafe fn matmul<U: TileUnit + Send>(
    a: &[u16],
    rows: usize,
    panels: &[u16],
    panel_pairs: usize,
    out: &mut [f32],
    outputs: usize,
) {
    let a_stride = 4 * panel_pairs;
    // Cheap next to the product, and what keeps the tiles inside the buffers.
    assert_eq!(a.len(), rows.div_ceil(BLOCK) * BLOCK * 2 * panel_pairs);
    assert_eq!(panel_pairs % STEP_PAIRS, 0);
    assert!(panels.len() >= outputs.div_ceil(BLOCK) * panel_pairs * PANEL_ROW_VALUES);
    assert_eq!(out.len(), rows * outputs);
    let out_ptr = crate::util::SharedOut(out.as_mut_ptr());
    let panel_len = panel_pairs * PANEL_ROW_VALUES;
    let chunk = (CHUNK_BYTES / a_stride / BLOCK).max(1) * BLOCK;
    for c0 in (0..rows).step_by(chunk) {
        let chunk_rows = chunk.min(rows - c0);
        (0..outputs.div_ceil(BLOCK)).into_par_iter().for_each(|p| {
            let mut unit = U::default();
            let panel = &panels[p * panel_len..][..panel_len];
            let cols = BLOCK.min(outputs - p * BLOCK);
            // SAFETY: the caller vouches for the unit and the sizes; each task writes only
            // its own panel's columns of `out`. Tiles live from here to the release: the
            // memset and memcpy calls in between use no AMX.
            unsafe {
                unit.configure();
                for r0 in (c0..c0 + chunk_rows).step_by(BLOCK) {
                    let block_rows = BLOCK.min(rows - r0);
                    let a_block = a.as_ptr().add(r0 * 2 * panel_pairs).cast::<u8>();
                    let c = out_ptr.at(r0 * outputs + p * BLOCK);
                    if block_rows == BLOCK && cols == BLOCK {
                        block(&mut unit, a_block, a_stride, panel, c, 4 * outputs);
                    } else {
                        // An edge block goes through a full-size copy, so tiles never read
                        // or write outside `out`.
                        let mut tmp = [0f32; BLOCK * BLOCK];
                        for r in 0..block_rows {
                            std::ptr::copy_nonoverlapping(
                                c.add(r * outputs),
                                tmp.as_mut_ptr().add(r * BLOCK),
                                cols,
                            );
                        }
                        block(
                            &mut unit,
                            a_block,
                            a_stride,
                            panel,
                            tmp.as_mut_ptr(),
                            4 * BLOCK,
                        );
                        for r in 0..block_rows {
                            std::ptr::copy_nonoverlapping(
                                tmp.as_ptr().add(r * BLOCK),
                                c.add(r * outputs),
                                cols,
                            );
                        }
                    }
                }
                unit.release();
            }
        });
    }
}

/// One 32 x 32 block of sums, `c` (row stride `ldc` bytes) loaded, updated over every
/// pair row of `panel` and stored back.
///
/// # Safety
/// Configured unit; `a` 32 rows `a_stride` bytes apart covering the panel's pairs; `c`
/// 32 rows of 32 floats.
unsafe fn block<U: TileUnit>(
    unit: &mut U,
    a: *const u8,
    a_stride: usize,
    panel: &[u16],
    c: *mut f32,
    ldc: usize,
) {
    let c = c.cast::<u8>();
    let c_tiles = [
        c,
        c.add(TILE_BYTES),
        c.add(TILE_ROWS * ldc),
        c.add(TILE_ROWS * ldc + TILE_BYTES),
    ];
    for (t, &ptr) in c_tiles.iter().enumerate() {
        unit.load(t, ptr, ldc);
    }
    let b = panel.as_ptr().cast::<u8>();
    let steps = panel.len() / (STEP_PAIRS * PANEL_ROW_VALUES);
    for s in 0..steps {
        unit.load(4, a.add(s * TILE_BYTES), a_stride);
        unit.load(5, a.add(TILE_ROWS * a_stride + s * TILE_BYTES), a_stride);
        let b_step = b.add(s * STEP_PAIRS * PANEL_ROW_BYTES);
        unit.load(6, b_step, PANEL_ROW_BYTES);
        unit.load(7, b_step.add(TILE_BYTES), PANEL_ROW_BYTES);
        unit.dot(0, 4, 6);
        unit.dot(1, 4, 7);
        unit.dot(2, 5, 6);
        unit.dot(3, 5, 7);
    }
    for (t, &ptr) in c_tiles.iter().enumerate() {
        unit.store(t, ptr, ldc);
    }
}

/// Whether the CPU reports AMX tiles with bf16 products.
#[cfg(target_arch = "x86_64")]
fn cpu_has_amx_bf16() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    // SAFETY: cpuid exists on every x86_64 CPU (the functions are safe from Rust 1.94;
    // this crate builds from 1.90); leaf 7 is read only where reported.
    #[allow(unused_unsafe)]
    let edx = unsafe {
        if __cpuid(0).eax < 7 {
            return false;
        }
        __cpuid_count(7, 0).edx
    };
    let (amx_bf16, amx_tile) = (edx >> 22 & 1 == 1, edx >> 24 & 1 == 1);
    amx_bf16 && amx_tile
}

/// Ask Linux for the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)`),
/// without which the first tile load faults.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_state() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(all(target_arch = "x86_64", not(target_os = "linux")))]
fn request_tile_state() -> bool {
    false
}

/// Whether bf16 products run on AMX here: the CPU has it, the OS granted the tile state,
/// `CLIPSCOPE_AMX` is not `0`, and a check product agreed with the reference (decided
/// once per process).
pub fn ready() -> bool {
    static READY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *READY.get_or_init(|| {
        // The check product runs on a pool of its own: a first call from a worker of the
        // global pool, waiting here, must not be needed to finish it.
        match rayon::ThreadPoolBuilder::new().num_threads(1).build() {
            Ok(pool) => pool.install(decide),
            Err(_) => false,
        }
    })
}

#[cfg(target_arch = "x86_64")]
fn decide() -> bool {
    if std::env::var("CLIPSCOPE_AMX").is_ok_and(|v| v == "0")
        || !crate::util::has_avx512f()
        || !cpu_has_amx_bf16()
    {
        return false;
    }
    if !request_tile_state() {
        tracing::debug!("the OS did not grant AMX tile state; bf16 runs on AVX512-BF16");
        return false;
    }
    let agrees = super::half::amx_agrees_with_reference();
    if !agrees {
        tracing::warn!(
            "AMX bf16 products disagreed with the reference on this CPU; using the \
             AVX512-BF16 kernel instead (please report this CPU model)"
        );
    }
    agrees
}

#[cfg(not(target_arch = "x86_64"))]
fn decide() -> bool {
    false
}

/// A software model of the tile operations, after the pseudo-code of Intel's intrinsics
/// guide: the kernel's logic runs on CPUs without AMX in tests. The hardware may sum in
/// another order and flushes denormals (Intel's manual keeps even and odd products in
/// separate sums), so results agree to rounding, not bit for bit.
#[cfg(test)]
pub(super) struct Emulated {
    tiles: [[[u8; TILE_BYTES]; TILE_ROWS]; 8],
    configured: bool,
}

#[cfg(test)]
impl Default for Emulated {
    fn default() -> Self {
        Self {
            tiles: [[[0; TILE_BYTES]; TILE_ROWS]; 8],
            configured: false,
        }
    }
}

#[cfg(test)]
impl TileUnit for Emulated {
    unsafe fn configure(&mut self) {
        self.configured = true;
    }

    unsafe fn load(&mut self, t: usize, src: *const u8, stride: usize) {
        assert!(self.configured, "tile load before ldtilecfg");
        for (r, row) in self.tiles[t].iter_mut().enumerate() {
            std::ptr::copy_nonoverlapping(src.add(r * stride), row.as_mut_ptr(), TILE_BYTES);
        }
    }

    unsafe fn store(&mut self, t: usize, dst: *mut u8, stride: usize) {
        assert!(self.configured, "tile store before ldtilecfg");
        for (r, row) in self.tiles[t].iter().enumerate() {
            std::ptr::copy_nonoverlapping(row.as_ptr(), dst.add(r * stride), TILE_BYTES);
        }
    }

    unsafe fn dot(&mut self, c: usize, a: usize, b: usize) {
        assert!(self.configured, "tdpbf16ps before ldtilecfg");
        let word = |tile: &[[u8; TILE_BYTES]; TILE_ROWS], r: usize, i: usize| {
            f32::from_bits(
                u32::from(u16::from_le_bytes([tile[r][2 * i], tile[r][2 * i + 1]])) << 16,
            )
        };
        let (ta, tb) = (self.tiles[a], self.tiles[b]);
        for m in 0..TILE_ROWS {
            let mut sums: Vec<f32> = self.tiles[c][m]
                .chunks_exact(4)
                .map(|v| f32::from_le_bytes([v[0], v[1], v[2], v[3]]))
                .collect();
            for k in 0..TILE_BYTES / 4 {
                for (n, sum) in sums.iter_mut().enumerate() {
                    *sum += word(&ta, m, 2 * k) * word(&tb, k, 2 * n);
                    *sum += word(&ta, m, 2 * k + 1) * word(&tb, k, 2 * n + 1);
                }
            }
            for (n, sum) in sums.iter().enumerate() {
                self.tiles[c][m][4 * n..4 * n + 4].copy_from_slice(&sum.to_le_bytes());
            }
        }
    }

    unsafe fn release(&mut self) {
        self.configured = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tile_configuration_is_palette_one_with_eight_16_by_64_tiles() {
        let c = TileConfig::eight_full_tiles().0;
        assert_eq!(c[0], 1);
        assert!(c[1..16].iter().all(|&b| b == 0));
        for t in 0..16 {
            let colsb = u16::from_le_bytes([c[16 + 2 * t], c[17 + 2 * t]]);
            let rows = c[48 + t];
            let want = if t < 8 { (64, 16) } else { (0, 0) };
            assert_eq!((colsb, rows), want, "tile {t}");
        }
    }

    #[test]
    fn the_emulated_dot_follows_the_pair_layout() {
        // A: row m holds pairs (m, 1) for every k; B: pair row k, column n holds (n, k).
        let mut unit = Emulated::default();
        let bf = |v: f32| half::bf16::from_f32(v).to_bits();
        let mut a = vec![0u16; TILE_ROWS * 32];
        let mut b = vec![0u16; TILE_ROWS * 32];
        for r in 0..TILE_ROWS {
            for k in 0..16 {
                a[r * 32 + 2 * k] = bf(r as f32);
                a[r * 32 + 2 * k + 1] = bf(1.0);
                b[k * 32 + 2 * r] = bf(r as f32); // here r is the column
                b[k * 32 + 2 * r + 1] = bf(k as f32);
            }
        }
        let mut c = vec![0f32; TILE_ROWS * 16];
        // SAFETY: the emulator reads and writes only the buffers given, all 16 x 64 bytes.
        unsafe {
            unit.configure();
            unit.load(4, a.as_ptr().cast(), 64);
            unit.load(6, b.as_ptr().cast(), 64);
            unit.load(0, c.as_ptr().cast(), 64);
            unit.dot(0, 4, 6);
            unit.store(0, c.as_mut_ptr().cast(), 64);
        }
        // c[m][n] = sum over k of m * n + 1 * k = 16 m n + 120.
        for m in 0..TILE_ROWS {
            for n in 0..16 {
                assert_eq!(c[m * 16 + n], (16 * m * n + 120) as f32, "({m}, {n})");
            }
        }
    }
}
