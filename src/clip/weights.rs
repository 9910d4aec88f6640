//! Checking a weights file against the configuration before anything is built from it,
//! and converting PyTorch's `pytorch_model.bin` to safetensors.
//!
//! candle's loader reports a missing or misshapen tensor with a backtrace and converts
//! any dtype (integers included) to f32 without a word; here every tensor the model
//! reads is looked up in the file's header first, so a wrong file is one line naming
//! the file and the tensor.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::safetensors::SliceSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use safetensors::Dtype;

use super::config::ClipConfig;
use super::ClipError;

/// The weights file clipscope loads.
pub const SAFETENSORS: &str = "model.safetensors";
/// PyTorch's weights file (older Hugging Face repositories), converted before loading.
pub const PYTORCH_BIN: &str = "pytorch_model.bin";

/// Check the safetensors file at `path` against `config`.
pub fn check_file(path: &Path, config: &ClipConfig) -> Result<(), ClipError> {
    let file = TensorFile::open(path)?;
    let header = file
        .entries
        .iter()
        .map(|(name, e)| (name.clone(), (e.dtype, e.shape.clone())))
        .collect();
    check_views(path, &header, config)
}

/// Check safetensors bytes (named `origin` in errors) against `config`.
pub fn check_bytes(bytes: &[u8], origin: &Path, config: &ClipConfig) -> Result<(), ClipError> {
    let st = SliceSafetensors::new(bytes).map_err(|e| unreadable(origin, &e))?;
    check_views(origin, &header(st.tensors()), config)
}

type Header = HashMap<String, (Dtype, Vec<usize>)>;

fn header(views: Vec<(String, safetensors::tensor::TensorView<'_>)>) -> Header {
    views
        .into_iter()
        .map(|(name, v)| (name, (v.dtype(), v.shape().to_vec())))
        .collect()
}

fn unreadable(path: &Path, e: &candle_core::Error) -> ClipError {
    ClipError::Weights {
        path: path.to_path_buf(),
        message: format!(
            "not a readable safetensors file ({}); it may be truncated or corrupt: fetch it again",
            candle_message(e)
        ),
    }
}

fn check_views(path: &Path, header: &Header, config: &ClipConfig) -> Result<(), ClipError> {
    let bad = |message: String| ClipError::Weights {
        path: path.to_path_buf(),
        message,
    };
    for (name, want) in super::train::weight_shapes(config) {
        let Some((dtype, shape)) = header.get(&name) else {
            return Err(bad(format!(
                "no tensor {name} (not a Hugging Face CLIPModel checkpoint, or one for \
                 another architecture than config.json describes)"
            )));
        };
        if !matches!(dtype, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64) {
            return Err(bad(format!(
                "tensor {name} is {dtype:?}, not a floating-point type"
            )));
        }
        if *shape != want {
            return Err(bad(format!(
                "tensor {name} is {shape:?} where config.json needs {want:?}: \
                 config.json does not match these weights"
            )));
        }
    }
    Ok(())
}

/// A candle error's message on one line, without the backtrace, path or context
/// wrappers that candle adds (the caller names the file).
pub fn candle_message(e: &candle_core::Error) -> String {
    use candle_core::Error as E;
    match e {
        E::WithBacktrace { inner, .. } | E::WithPath { inner, .. } => candle_message(inner),
        E::Context { inner, context } => format!("{context}: {}", candle_message(inner)),
        other => other
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
    }
}

/// Convert a PyTorch state dict (`pytorch_model.bin`, the zip format of `torch.save`)
/// to a safetensors file at `dest`. candle's pickle reader only rebuilds tensors and
/// runs no code from the file; written through a temporary file and renamed.
pub fn convert_pytorch_bin(src: &Path, dest: &Path) -> Result<(), ClipError> {
    let bad = |e: candle_core::Error| ClipError::Weights {
        path: src.to_path_buf(),
        message: format!(
            "cannot read as a PyTorch state dict ({}); it may be truncated or corrupt",
            candle_message(&e)
        ),
    };
    let tensors: HashMap<String, candle_core::Tensor> = candle_core::pickle::read_all(src)
        .map_err(bad)?
        .into_iter()
        .collect();
    if tensors.is_empty() {
        return Err(ClipError::Weights {
            path: src.to_path_buf(),
            message: "holds no tensors".into(),
        });
    }
    let tmp = dest.with_extension("safetensors.tmp");
    candle_core::safetensors::save(&tensors, &tmp).map_err(|e| ClipError::Weights {
        path: tmp.clone(),
        message: candle_message(&e),
    })?;
    crate::util::with_usual_permissions(&tmp)
        .and_then(|()| std::fs::rename(&tmp, dest))
        .map_err(|source| ClipError::Io {
            path: dest.to_path_buf(),
            source,
        })
}

/// A safetensors file read tensor by tensor into memory the model owns.
///
/// candle's CPU tensors own their storage, so a memory-mapped file would be resident
/// twice while a model is built from it (the mapped pages and the copies): 2x the
/// weights file at peak. Reading each tensor straight from the file into its final
/// buffer keeps the process at one copy plus the tensor being read.
pub struct TensorFile {
    path: PathBuf,
    file: File,
    /// Where the tensors' bytes start: after the length and the JSON header.
    data_start: u64,
    entries: HashMap<String, Entry>,
}

struct Entry {
    dtype: Dtype,
    shape: Vec<usize>,
    begin: u64,
    end: u64,
}

#[derive(serde::Deserialize)]
struct RawEntry {
    dtype: Dtype,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// safetensors' own cap on the JSON header, so a corrupt length asks for no huge buffer.
const MAX_HEADER: u64 = 100_000_000;

impl TensorFile {
    /// Open `path` and read its header; every entry is checked against the file's size.
    pub fn open(path: &Path) -> Result<Self, ClipError> {
        let io = |source| ClipError::Io {
            path: path.to_path_buf(),
            source,
        };
        let bad = |why: String| ClipError::Weights {
            path: path.to_path_buf(),
            message: format!(
                "not a readable safetensors file ({why}); it may be truncated or corrupt: \
                 fetch it again"
            ),
        };
        let file = File::open(path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        let mut len = [0u8; 8];
        read_exact_at(&file, &mut len, 0).map_err(|_| bad("shorter than 8 bytes".into()))?;
        let header_len = u64::from_le_bytes(len);
        if header_len > MAX_HEADER || 8 + header_len > size {
            return Err(bad(format!(
                "header length {header_len} in a {size}-byte file"
            )));
        }
        let mut json = vec![0u8; header_len as usize];
        read_exact_at(&file, &mut json, 8).map_err(io)?;
        let raw: HashMap<String, serde_json::Value> =
            serde_json::from_slice(&json).map_err(|e| bad(format!("header: {e}")))?;
        let data_start = 8 + header_len;
        let mut entries = HashMap::new();
        for (name, value) in raw {
            if name == "__metadata__" {
                continue;
            }
            let e: RawEntry = serde_json::from_value(value)
                .map_err(|e| bad(format!("header entry {name}: {e}")))?;
            let [begin, end] = e.data_offsets;
            let bits = e.shape.iter().product::<usize>() as u64 * e.dtype.bitsize() as u64;
            let bytes = bits.div_ceil(8);
            if begin > end || end - begin != bytes || data_start + end > size {
                return Err(bad(format!("tensor {name} lies outside the file")));
            }
            entries.insert(
                name,
                Entry {
                    dtype: e.dtype,
                    shape: e.shape,
                    begin,
                    end,
                },
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            data_start,
            entries,
        })
    }

    /// Read tensor `name` onto the CPU in the file's dtype (f32 without an extra copy).
    fn read(&self, name: &str) -> candle_core::Result<Tensor> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            })?;
        let offset = self.data_start + e.begin;
        let failed = |err: std::io::Error| {
            candle_core::Error::Msg(format!(
                "reading {name} from {}: {err}",
                self.path.display()
            ))
        };
        let numel = e.shape.iter().product::<usize>();
        if e.dtype == Dtype::F32 {
            let mut values = crate::util::zeroed_floats(numel);
            // SAFETY: any byte pattern is a valid f32; the slice covers exactly `values`.
            let bytes = unsafe {
                std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), numel * 4)
            };
            read_exact_at(&self.file, bytes, offset).map_err(failed)?;
            if cfg!(target_endian = "big") {
                values
                    .iter_mut()
                    .for_each(|v| *v = f32::from_bits(v.to_bits().swap_bytes()));
            }
            return Tensor::from_vec(values, e.shape.as_slice(), &Device::Cpu);
        }
        let dtype = match e.dtype {
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            Dtype::F64 => DType::F64,
            other => {
                return Err(candle_core::Error::Msg(format!(
                    "tensor {name} is {other:?}, not a floating-point type"
                )))
            }
        };
        let mut bytes = vec![0u8; (e.end - e.begin) as usize];
        read_exact_at(&self.file, &mut bytes, offset).map_err(failed)?;
        Tensor::from_raw_buffer(&bytes, dtype, &e.shape, &Device::Cpu)
    }
}

impl candle_nn::var_builder::SimpleBackend for TensorFile {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.get_unchecked(name, dtype, device)?;
        if tensor.shape() != &shape {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: shape,
                got: tensor.shape().clone(),
            }
            .bt());
        }
        Ok(tensor)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.read(name)?.to_dtype(dtype)?.to_device(device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        match std::os::windows::fs::FileExt::seek_read(file, buf, offset)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::var_builder::SimpleBackend;

    fn saved(dir: &Path) -> PathBuf {
        let path = dir.join("w.safetensors");
        let a = Tensor::arange(0f32, 6., &Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        let b = a.to_dtype(DType::F16).unwrap();
        let tensors = HashMap::from([("a".to_string(), a), ("b".to_string(), b)]);
        candle_core::safetensors::save(&tensors, &path).unwrap();
        path
    }

    #[test]
    fn tensors_read_from_the_file_match_what_was_saved() {
        let dir = tempfile::tempdir().unwrap();
        let file = TensorFile::open(&saved(dir.path())).unwrap();
        let want = vec![vec![0f32, 1., 2.], vec![3., 4., 5.]];
        for name in ["a", "b"] {
            let t = file.get(
                (2, 3).into(),
                name,
                candle_nn::Init::Const(0.),
                DType::F32,
                &Device::Cpu,
            );
            assert_eq!(t.unwrap().to_vec2::<f32>().unwrap(), want, "{name}");
        }
        let wrong = file.get(
            (3, 2).into(),
            "a",
            candle_nn::Init::Const(0.),
            DType::F32,
            &Device::Cpu,
        );
        assert!(wrong
            .unwrap_err()
            .to_string()
            .contains("shape mismatch for a"));
        assert!(!file.contains_tensor("c"));
    }

    #[test]
    fn a_truncated_file_is_refused_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = saved(dir.path());
        let bytes = std::fs::read(&path).unwrap();
        for keep in [4, 20, bytes.len() - 4] {
            std::fs::write(&path, &bytes[..keep]).unwrap();
            let err = TensorFile::open(&path)
                .err()
                .expect("truncated file refused");
            assert!(
                err.to_string().contains("truncated or corrupt"),
                "{keep}: {err}"
            );
        }
    }
}
