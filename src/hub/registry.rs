//! The registry of CLIP models known by name, compiled in from `models/registry.toml`.

use serde::Deserialize;

use super::HubError;

const REGISTRY_TOML: &str = include_str!("../../models/registry.toml");

/// One downloadable model.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ModelEntry {
    /// The name users type, e.g. `ViT-B/32`.
    pub name: String,
    /// Other accepted spellings (case-insensitive).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Hugging Face repository.
    pub repo: String,
    /// Branch or ref that carries `model.safetensors`.
    pub revision: String,
    /// Files to fetch.
    pub files: Vec<String>,
    /// Input side in pixels.
    pub image_size: usize,
    /// Preprocessing mean.
    pub mean: [f32; 3],
    /// Preprocessing std.
    pub std: [f32; 3],
    /// Approximate download size, in MB.
    pub size_mb: u32,
    /// One line for `models list`.
    pub description: String,
}

impl ModelEntry {
    /// Folder name in the cache: the name with path separators made safe.
    pub fn cache_name(&self) -> String {
        self.name.replace(['/', '@', '\\'], "-")
    }

    fn matches(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
            || self.cache_name().eq_ignore_ascii_case(name)
            || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    }
}

/// A CNN's pretrained weights.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct CnnEntry {
    /// Architecture name, e.g. `resnet18`.
    pub name: String,
    /// Hugging Face repository.
    pub repo: String,
    /// Branch or ref.
    pub revision: String,
    /// Files to fetch (the first is the weights).
    pub files: Vec<String>,
    /// Approximate download size, in MB.
    pub size_mb: u32,
    /// One line for listings.
    pub description: String,
}

/// All known models and the default.
#[derive(Clone, Debug, Deserialize)]
pub struct Registry {
    /// Name of the default model.
    pub default: String,
    /// The entries, in display order.
    #[serde(rename = "model")]
    pub models: Vec<ModelEntry>,
    /// CNN weights by architecture.
    #[serde(default)]
    pub cnn: Vec<CnnEntry>,
}

impl Registry {
    /// The registry shipped with clipscope.
    pub fn builtin() -> Result<Self, HubError> {
        Self::parse(REGISTRY_TOML)
    }

    /// Parse a registry from TOML text.
    pub fn parse(text: &str) -> Result<Self, HubError> {
        let reg: Registry = toml::from_str(text).map_err(|e| HubError::Registry(e.to_string()))?;
        if reg.find(&reg.default).is_err() {
            return Err(HubError::Registry(format!(
                "default model {:?} is not listed",
                reg.default
            )));
        }
        Ok(reg)
    }

    /// Look a model up by name or alias (case-insensitive).
    pub fn find(&self, name: &str) -> Result<&ModelEntry, HubError> {
        // The built-in model is no registry entry, but `--model` takes it too.
        let built_in = [super::DEMO_MODEL];
        find_named(
            &self.models,
            name,
            &built_in,
            |m| m.matches(name),
            |m| &m.name,
        )
    }

    /// Pretrained weights for a CNN architecture.
    pub fn find_cnn(&self, name: &str) -> Result<&CnnEntry, HubError> {
        find_named(
            &self.cnn,
            name,
            &[],
            |m| m.name.eq_ignore_ascii_case(name),
            |m| &m.name,
        )
    }

    /// The default model's entry.
    pub fn default_model(&self) -> Result<&ModelEntry, HubError> {
        self.find(&self.default)
    }
}

/// The first entry that `matches`, or an error listing the `built_in` names and every
/// entry's.
fn find_named<'a, T>(
    entries: &'a [T],
    name: &str,
    built_in: &[&str],
    matches: impl Fn(&T) -> bool,
    entry_name: impl Fn(&T) -> &String,
) -> Result<&'a T, HubError> {
    entries
        .iter()
        .find(|e| matches(e))
        .ok_or_else(|| HubError::UnknownModel {
            name: name.to_string(),
            known: built_in
                .iter()
                .map(|b| format!("{b} (built in)"))
                .chain(entries.iter().map(|e| entry_name(e).clone()))
                .collect::<Vec<_>>()
                .join(", "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_registry_has_the_expected_models() {
        let r = Registry::builtin().unwrap();
        assert_eq!(
            r.default_model().unwrap().repo,
            "openai/clip-vit-base-patch32"
        );
        assert_eq!(r.default_model().unwrap().revision, "refs/pr/15");
        for n in [
            "ViT-B/32",
            "vit-b-16",
            "ViT-L/14",
            "ViT-L/14@336",
            "l14-336",
        ] {
            assert!(r.find(n).is_ok(), "{n}");
        }
        assert_eq!(r.find("ViT-L/14@336").unwrap().image_size, 336);
        assert_eq!(
            r.find_cnn("resnet18").unwrap().repo,
            "timm/resnet18.tv_in1k"
        );
        let err = r.find("ViT-H/14").unwrap_err().to_string();
        assert!(
            err.contains("ViT-H/14") && err.contains("ViT-B/32") && err.contains("demo"),
            "{err}"
        );
    }
}
