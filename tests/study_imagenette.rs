//! `clipscope study imagenette` end to end against a local server that plays fast.ai's
//! bucket and the Hugging Face hub: a tiny Imagenette-shaped archive made here, a seeded
//! 1000-class ResNet18 in torchvision naming, and the tiny fixture CLIP as ViT-B/32.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_nn::VarMap;
use clipscope::cnn::checkpoint;
use clipscope::cnn::ResNet18;
use clipscope::data::fetch::md5_file;
use clipscope::data::folder::IMAGENETTE_CLASSES;
use common::{assert_success, clipscope, fixtures, serve, usage_error};

const TRAIN_PER_CLASS: usize = 3;
const VAL_PER_CLASS: usize = 2;

/// `imagenette2-160/{train,val}/<wnid>/*.JPEG` with small seeded pictures, packed as
/// `dir/imagenette2-160.tgz`; returns the validation images, relative to the tree.
fn make_archive(dir: &Path) -> BTreeSet<String> {
    let tree = tempfile::tempdir().unwrap();
    let root = tree.path().join("imagenette2-160");
    let mut val = BTreeSet::new();
    for (c, (wnid, _)) in IMAGENETTE_CLASSES.iter().enumerate() {
        for (part, n) in [("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)] {
            let folder = root.join(part).join(wnid);
            std::fs::create_dir_all(&folder).unwrap();
            for i in 0..n {
                let name = format!("{wnid}_{i}.JPEG");
                let img = image::RgbImage::from_fn(24, 20, |x, y| {
                    let v = (x * 7 + y * 3 + i as u32 * 11) as u8;
                    image::Rgb([(c as u8) * 25, v, 255 - v])
                });
                img.save_with_format(folder.join(&name), image::ImageFormat::Jpeg)
                    .unwrap();
                if part == "val" {
                    val.insert(format!("val/{wnid}/{name}"));
                }
            }
        }
    }
    let file = std::fs::File::create(dir.join("imagenette2-160.tgz")).unwrap();
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        file,
        flate2::Compression::fast(),
    ));
    tar.append_dir_all("imagenette2-160", &root).unwrap();
    tar.into_inner().unwrap().finish().unwrap();
    val
}

/// The hub's layout: the CNN weights and the CLIP files where the registry looks.
fn make_hub(dir: &Path) {
    let resnet = dir.join("timm/resnet18.tv_in1k/resolve/main");
    std::fs::create_dir_all(&resnet).unwrap();
    let map = VarMap::new();
    ResNet18::new(&map, &Device::Cpu, 1000, 42).unwrap();
    map.save(resnet.join("model.safetensors")).unwrap();
    let clip = dir.join("openai/clip-vit-base-patch32/resolve/refs%2Fpr%2F15");
    std::fs::create_dir_all(&clip).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixtures().join("tiny-clip").join(f), clip.join(f)).unwrap();
    }
}

struct Study {
    endpoint: String,
    md5: String,
    cache: PathBuf,
    output: PathBuf,
}

impl Study {
    fn run(&self, extra: &[&str]) -> std::process::Output {
        clipscope()
            .env("HF_ENDPOINT", &self.endpoint)
            .env("CLIPSCOPE_DATA_URL", &self.endpoint)
            .env("CLIPSCOPE_DATA_MD5", &self.md5)
            .env("CLIPSCOPE_CACHE", &self.cache)
            .args([
                "study",
                "imagenette",
                "--image-size",
                "32",
                "--batch-size",
                "8",
            ])
            .arg("--output")
            .arg(&self.output)
            .args(extra)
            .output()
            .unwrap()
    }
}

#[test]
fn study_imagenette_fetches_trains_and_compares_then_resumes() {
    let served = tempfile::tempdir().unwrap();
    let val_images = make_archive(served.path());
    make_hub(served.path());
    let (endpoint, seen) = serve(served.path(), "/");
    let work = tempfile::tempdir().unwrap();
    let study = Study {
        endpoint,
        md5: md5_file(&served.path().join("imagenette2-160.tgz")).unwrap(),
        cache: work.path().join("cache"),
        output: work.path().join("study"),
    };

    let out = study.run(&["--epochs", "2"]);
    assert_success(&out);
    let fetched = seen.lock().unwrap().clone();
    assert_eq!(
        fetched.len(),
        5,
        "archive, CNN weights, 3 CLIP files: {fetched:?}"
    );
    assert!(fetched.contains(&"/imagenette2-160.tgz".to_string()));
    assert!(study.cache.join("data/imagenette2-160/val").is_dir());

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(study.output.join("report.json")).unwrap()).unwrap();
    let images: BTreeSet<String> = report["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        images, val_images,
        "the report is on exactly the validation images"
    );
    let models = report["models"].as_array().unwrap();
    let kinds: Vec<&str> = models.iter().map(|m| m["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["clip-zero-shot", "cnn"]);
    assert_eq!(models[0]["name"], "ViT-B/32");
    for m in models {
        assert_eq!(
            m["n"].as_u64().unwrap() as usize,
            val_images.len(),
            "{}",
            m["name"]
        );
        let confusion: u64 = m["confusion"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap())
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(confusion as usize, val_images.len());
    }
    let predictions = report["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), val_images.len());
    assert!(predictions
        .iter()
        .all(|p| p["answers"].as_array().unwrap().len() == 2));
    assert!(report["prompt_variants"].as_array().unwrap().len() >= 7);
    let probe = &report["linear_probe"][0];
    assert_eq!(
        probe["train_images"].as_u64().unwrap() as usize,
        IMAGENETTE_CLASSES.len() * TRAIN_PER_CLASS
    );
    assert!(report["few_shot"][0]["points"].as_array().unwrap().len() == 5);
    let run = study.output.join("resnet18-frozen");
    let meta = checkpoint::load_meta(&run).unwrap();
    assert!(meta.config.freeze_backbone);
    assert_eq!(
        (meta.epochs_done, meta.config.pretrained.as_str()),
        (2, "imagenet")
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("20 validation images of 10 classes"),
        "{stdout}"
    );

    // Again: nothing is downloaded, the finished run is reused, the report rewritten.
    let checkpoint_json = std::fs::read(run.join("checkpoint.json")).unwrap();
    std::fs::remove_file(study.output.join("report.json")).unwrap();
    let again = study.run(&["--epochs", "2"]);
    assert_success(&again);
    assert_eq!(seen.lock().unwrap().len(), 5, "nothing downloaded again");
    assert_eq!(
        std::fs::read(run.join("checkpoint.json")).unwrap(),
        checkpoint_json
    );
    let stderr = String::from_utf8(again.stderr).unwrap();
    assert!(stderr.contains("already trained for 2 epochs"), "{stderr}");
    assert!(study.output.join("report.json").is_file());

    // More epochs continue the run from its checkpoint.
    let more = study.run(&["--epochs", "3", "--no-probe"]);
    assert_success(&more);
    let stderr = String::from_utf8(more.stderr).unwrap();
    assert!(stderr.contains("at epoch 3"), "{stderr}");
    assert_eq!(checkpoint::load_meta(&run).unwrap().epochs_done, 3);
    assert_eq!(seen.lock().unwrap().len(), 5);
}

#[test]
fn study_imagenette_offline_says_what_failed_and_how_to_go_on() {
    let work = tempfile::tempdir().unwrap();
    let out = clipscope()
        .env("CLIPSCOPE_CACHE", work.path().join("cache"))
        .args(["study", "imagenette", "--output"])
        .arg(work.path().join("study"))
        .output()
        .unwrap();
    let stderr = usage_error(&out);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("clipscope: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("http://127.0.0.1:9/imagenette2-160.tgz")
            && errors[0].contains("--data-dir"),
        "{stderr}"
    );

    let out = clipscope()
        .args(["study", "imagenette", "--epochs", "0", "--output"])
        .arg(work.path().join("study"))
        .output()
        .unwrap();
    assert!(usage_error(&out).contains("--epochs"));
}

#[test]
fn fetch_keeps_a_complete_unpack_and_redoes_an_interrupted_one() {
    use clipscope::data::fetch::fetch_archive;
    let served = tempfile::tempdir().unwrap();
    let val_images = make_archive(served.path());
    let md5 = md5_file(&served.path().join("imagenette2-160.tgz")).unwrap();
    let (endpoint, seen) = serve(served.path(), "/");
    let url = format!("{endpoint}/imagenette2-160.tgz");
    let to = tempfile::tempdir().unwrap();
    let fetch = || fetch_archive(&url, &md5, to.path(), &mut |_, _| {});
    let tree = fetch().unwrap();
    let image = tree.join(val_images.iter().next().unwrap());
    assert!(image.is_file());
    assert_eq!(seen.lock().unwrap().len(), 1);

    // Complete: used as it is, even without its archive.
    std::fs::remove_file(&image).unwrap();
    std::fs::rename(
        to.path().join("imagenette2-160.tgz"),
        to.path().join("moved.tgz"),
    )
    .unwrap();
    assert_eq!(fetch().unwrap(), tree);
    assert!(!image.exists(), "a complete unpack is not touched");
    assert_eq!(seen.lock().unwrap().len(), 1);

    // Interrupted (its marker left behind): unpacked again from the archive there.
    std::fs::rename(
        to.path().join("moved.tgz"),
        to.path().join("imagenette2-160.tgz"),
    )
    .unwrap();
    std::fs::write(to.path().join(".imagenette2-160.unpacking"), b"").unwrap();
    assert_eq!(fetch().unwrap(), tree);
    assert!(image.is_file());
    assert!(!to.path().join(".imagenette2-160.unpacking").exists());
    assert_eq!(seen.lock().unwrap().len(), 1, "the archive there was used");
}
