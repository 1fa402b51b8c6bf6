//! The spin.toml version 2 schema as serde reads it, before validation.
//!
//! Every table denies unknown keys, as Spin's schema does. Keys Spin knows but this runner
//! does not support are read as raw TOML values so that the loader can refuse them by name.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Manifest {
    #[allow(dead_code)] // checked before this struct is read
    pub spin_manifest_version: toml::Value,
    pub application: Application,
    #[serde(default)]
    pub variables: BTreeMap<String, toml::Value>,
    /// Required, as in Spin: an app without `[[trigger.*]]` does not load.
    pub trigger: toml::Table,
    #[serde(default)]
    pub component: toml::Table,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Application {
    pub name: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    #[allow(dead_code)]
    pub description: String,
    #[serde(default)]
    #[allow(dead_code)]
    pub authors: Vec<String>,
    /// Deployment targets: checked by `spin build`/deploy, no effect on `spin up`.
    #[serde(default)]
    #[allow(dead_code)]
    pub targets: Option<toml::Value>,
    /// `[application.trigger.<type>]`: refused when present.
    #[serde(default)]
    pub trigger: Option<toml::Table>,
    /// Settings for other tools: Spin ignores them, and so does this runner.
    #[serde(default)]
    #[allow(dead_code)]
    pub tool: Option<toml::Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Variable {
    #[serde(default)]
    #[allow(dead_code)]
    pub description: Option<String>,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub secret: bool,
}

/// One `[[trigger.http]]` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpTrigger {
    #[serde(default)]
    pub id: String,
    /// A component id or an inline component table.
    #[serde(default)]
    pub component: Option<toml::Value>,
    /// Reserved by Spin for future use; refused when non-empty.
    #[serde(default)]
    pub components: Option<toml::Table>,
    pub route: toml::Value,
    #[serde(default)]
    pub executor: Option<toml::Value>,
    /// Refused when present.
    #[serde(default)]
    pub static_response: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Component {
    pub source: toml::Value,
    #[serde(default)]
    #[allow(dead_code)]
    pub description: String,
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    pub key_value_stores: Vec<String>,
    #[serde(default)]
    pub build: Option<Build>,
    /// Settings for other tools: Spin ignores them, and so does this runner.
    #[serde(default)]
    #[allow(dead_code)]
    pub tool: Option<toml::Table>,

    // Known to Spin, not supported here: refused when non-empty.
    #[serde(default)]
    pub files: Option<toml::Value>,
    #[serde(default)]
    pub exclude_files: Option<toml::Value>,
    #[serde(default)]
    pub allowed_http_hosts: Option<toml::Value>,
    #[serde(default)]
    pub sqlite_databases: Option<toml::Value>,
    #[serde(default)]
    pub ai_models: Option<toml::Value>,
    #[serde(default)]
    pub dependencies: Option<toml::Value>,
    #[serde(default)]
    pub dependencies_inherit_configuration: Option<toml::Value>,
    #[serde(default)]
    pub targets: Option<toml::Value>,
    #[serde(default)]
    pub profile: Option<toml::Value>,
}

impl Component {
    /// The unsupported keys this component sets to something non-empty, by name.
    pub fn unsupported_fields(&self) -> Vec<&'static str> {
        [
            ("files", &self.files),
            ("exclude_files", &self.exclude_files),
            ("allowed_http_hosts", &self.allowed_http_hosts),
            ("sqlite_databases", &self.sqlite_databases),
            ("ai_models", &self.ai_models),
            ("dependencies", &self.dependencies),
            (
                "dependencies_inherit_configuration",
                &self.dependencies_inherit_configuration,
            ),
            ("targets", &self.targets),
            ("profile", &self.profile),
        ]
        .into_iter()
        .filter(|(_, value)| value.as_ref().is_some_and(is_non_empty))
        .map(|(name, _)| name)
        .collect()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Build {
    pub command: Commands,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub watch: Vec<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum Commands {
    One(String),
    Many(Vec<String>),
}

/// Whether a value asks for something: empty lists and tables, `false` and `""` do not.
pub(crate) fn is_non_empty(value: &toml::Value) -> bool {
    match value {
        toml::Value::Array(items) => !items.is_empty(),
        toml::Value::Table(table) => !table.is_empty(),
        toml::Value::Boolean(b) => *b,
        toml::Value::String(s) => !s.is_empty(),
        _ => true,
    }
}
