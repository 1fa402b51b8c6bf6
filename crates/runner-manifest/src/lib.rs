//! Parses and validates a Spin manifest (spin.toml, version 2), as Spin 3 reads it.
//!
//! What this runner supports is kept; what Spin accepts but this runner does not support
//! (other trigger types, `files`, SQLite databases, remote sources, …) is refused with an
//! error naming the component and the field, so an app never runs differently from `spin up`.
//! Unknown keys are refused as Spin refuses them.

mod names;
mod raw;
pub mod template;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

pub use names::{validate_component_id, validate_variable_name};
use template::Template;

/// A loaded, validated Spin application.
#[derive(Clone, Debug)]
pub struct App {
    /// `[application] name`.
    pub name: String,
    /// `[application] version` (empty when not set).
    pub version: String,
    /// The absolute directory holding the manifest; relative paths are resolved against it.
    pub dir: PathBuf,
    /// `[variables]`: application variables by name.
    pub variables: BTreeMap<String, Variable>,
    /// `[[trigger.http]]` entries, in manifest order.
    pub http_triggers: Vec<HttpTrigger>,
    /// `[component.<id>]` tables (and inline trigger components) by id.
    pub components: BTreeMap<String, Component>,
}

/// An application variable (`[variables] name = { … }`).
///
/// Exactly one of `default` and `required` is set. The `Debug` output hides the default of a
/// secret variable.
#[derive(Clone, PartialEq, Eq)]
pub struct Variable {
    /// The value used when no provider has one.
    pub default: Option<String>,
    /// A provider must supply a value, or the app does not start.
    pub required: bool,
    /// The value is sensitive: never print it.
    pub secret: bool,
}

impl fmt::Debug for Variable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let default = match (&self.default, self.secret) {
            (Some(_), true) => Some("***"),
            (Some(value), false) => Some(value.as_str()),
            (None, _) => None,
        };
        f.debug_struct("Variable")
            .field("default", &default)
            .field("required", &self.required)
            .field("secret", &self.secret)
            .finish()
    }
}

/// One `[[trigger.http]]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpTrigger {
    /// Where the trigger listens.
    pub route: Route,
    /// The id of the component that handles it (always present in [`App::components`]).
    pub component: String,
}

/// An HTTP trigger route, kept raw: the router crate parses the pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `route = "/path"`, `"/prefix/..."`, `"/users/:id"`.
    Path(String),
    /// `route = { private = true }`: reachable only through `*.spin.internal` chaining.
    Private,
}

/// A `[component.<id>]` table.
#[derive(Clone, Debug)]
pub struct Component {
    /// The component id (kebab-case).
    pub id: String,
    /// Absolute path of the Wasm file.
    pub source: PathBuf,
    /// `allowed_outbound_hosts` entries, raw (they may hold `{{ app_variable }}` templates).
    pub allowed_outbound_hosts: Vec<String>,
    /// `[component.<id>.variables]`: key → template over application variables.
    pub variables: BTreeMap<String, String>,
    /// `environment`: WASI environment variables for the component.
    pub environment: BTreeMap<String, String>,
    /// `key_value_stores`: the labels of the key-value stores the component may open.
    pub key_value_stores: Vec<String>,
    /// `[component.<id>.build]`, used by `spin build`-like tooling.
    pub build: Option<Build>,
}

/// A `[component.<id>.build]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Build {
    /// The command or commands, run in order.
    pub command: Vec<String>,
    /// Absolute working directory, if the manifest sets one (else the app directory).
    pub workdir: Option<PathBuf>,
    /// Paths or globs `spin watch` would watch, relative to the working directory.
    pub watch: Vec<String>,
}

/// Reads and validates the manifest at `path`.
pub fn load(path: &Path) -> Result<App> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read Spin manifest {}", path.display()))?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    App::from_toml(&text, &dir)
        .map_err(|err| anyhow!("invalid Spin manifest {}: {err:#}", path.display()))
}

impl App {
    /// Parses and validates manifest text; relative paths are resolved against `app_dir`.
    pub fn from_toml(text: &str, app_dir: &Path) -> Result<App> {
        let table: toml::Table = text.parse().context("the manifest is not valid TOML")?;
        check_version(&table)?;
        if !table.contains_key("trigger") {
            bail!("the app has no triggers: add a [[trigger.http]] entry");
        }
        let manifest: raw::Manifest = toml::from_str(text).map_err(|e| anyhow!("{e}"))?;
        let dir = std::path::absolute(app_dir)
            .with_context(|| format!("bad application directory {}", app_dir.display()))?;

        if let Some(trigger_settings) = &manifest.application.trigger {
            if let Some(kind) = trigger_settings.keys().next() {
                bail!(
                    "[application.trigger.{kind}] is not supported by this runner \
                     (application-level trigger settings such as the version 1 `base` \
                     have no version 2 equivalent here)"
                );
            }
        }

        let variables = manifest
            .variables
            .into_iter()
            .map(|(name, value)| Ok((name.clone(), variable(&name, value)?)))
            .collect::<Result<BTreeMap<_, _>>>()?;

        let mut components = BTreeMap::new();
        for (id, value) in manifest.component {
            validate_component_id(&id).map_err(|e| anyhow!("invalid component id `{id}`: {e}"))?;
            let raw = raw::Component::deserialize(value)
                .map_err(|e| anyhow!("invalid [component.{id}]: {e}"))?;
            let component = component(&id, raw, &dir, &variables)?;
            components.insert(id, component);
        }

        let http_triggers = http_triggers(manifest.trigger, &mut components, &dir, &variables)?;
        Ok(App {
            name: manifest.application.name,
            version: manifest.application.version,
            dir,
            variables,
            http_triggers,
            components,
        })
    }

    /// Components that no trigger uses (Spin loads them but never runs them): worth a warning.
    pub fn unused_components(&self) -> Vec<&str> {
        let used: BTreeSet<&str> = self
            .http_triggers
            .iter()
            .map(|t| t.component.as_str())
            .collect();
        self.components
            .keys()
            .map(String::as_str)
            .filter(|id| !used.contains(id))
            .collect()
    }
}

fn check_version(table: &toml::Table) -> Result<()> {
    const V1: &str = "Spin manifest version 1 is not supported by this runner: \
                      rewrite spin.toml in the version 2 format (`spin_manifest_version = 2`)";
    match table.get("spin_manifest_version") {
        Some(toml::Value::Integer(2)) => Ok(()),
        Some(toml::Value::String(v)) if v == "1" => bail!("{V1}"),
        Some(other) => bail!("unsupported spin_manifest_version {other}: expected 2"),
        None if table.contains_key("spin_version") => bail!("{V1}"),
        None => bail!("missing `spin_manifest_version = 2`"),
    }
}

fn variable(name: &str, value: toml::Value) -> Result<Variable> {
    validate_variable_name(name)
        .map_err(|e| anyhow!("invalid application variable name in [variables]: {e}"))?;
    let raw = raw::Variable::deserialize(value)
        .map_err(|e| anyhow!("invalid [variables] entry `{name}`: {e}"))?;
    if raw.required == raw.default.is_some() {
        bail!("application variable `{name}` must be `required` OR have a `default`");
    }
    Ok(Variable {
        default: raw.default,
        required: raw.required,
        secret: raw.secret,
    })
}

fn component(
    id: &str,
    raw: raw::Component,
    dir: &Path,
    app_variables: &BTreeMap<String, Variable>,
) -> Result<Component> {
    if let Some(field) = raw.unsupported_fields().first() {
        bail!(
            "component `{id}` sets `{field}`, which this runner does not support \
             (run the app with Spin itself, or remove `{field}`)"
        );
    }
    let source = match &raw.source {
        toml::Value::String(path) => dir.join(path),
        toml::Value::Table(t) if t.contains_key("url") => bail!(
            "component `{id}`: `source = {{ url, digest }}` (a remote Wasm source) is not \
             supported by this runner: download the file and use a local path"
        ),
        toml::Value::Table(t) if t.contains_key("package") => bail!(
            "component `{id}`: `source = {{ registry, package, version }}` (a registry source) \
             is not supported by this runner: use a local path"
        ),
        other => bail!("component `{id}`: invalid `source` {other}: expected a file path"),
    };

    for (key, value) in &raw.variables {
        validate_variable_name(key)
            .map_err(|e| anyhow!("component `{id}`: invalid variable name: {e}"))?;
        check_template(value, app_variables)
            .map_err(|e| anyhow!("component `{id}`: variable `{key}` = {value:?}: {e}"))?;
    }
    for host in &raw.allowed_outbound_hosts {
        check_template(host, app_variables)
            .map_err(|e| anyhow!("component `{id}`: allowed_outbound_hosts entry {host:?}: {e}"))?;
    }

    let build = raw.build.map(|b| Build {
        command: match b.command {
            raw::Commands::One(cmd) => vec![cmd],
            raw::Commands::Many(cmds) => cmds,
        },
        workdir: b.workdir.map(|w| dir.join(w)),
        watch: b.watch,
    });
    Ok(Component {
        id: id.to_owned(),
        source,
        allowed_outbound_hosts: raw.allowed_outbound_hosts,
        variables: raw.variables,
        environment: raw.environment,
        key_value_stores: raw.key_value_stores,
        build,
    })
}

/// A template must parse and name only declared application variables (as in Spin).
fn check_template(text: &str, app_variables: &BTreeMap<String, Variable>) -> Result<()> {
    let template = Template::parse(text)?;
    for name in template.variables() {
        if !app_variables.contains_key(name) {
            bail!("unknown application variable {name:?} (declare it in [variables])");
        }
    }
    Ok(())
}

fn http_triggers(
    triggers: toml::Table,
    components: &mut BTreeMap<String, Component>,
    dir: &Path,
    app_variables: &BTreeMap<String, Variable>,
) -> Result<Vec<HttpTrigger>> {
    let mut raw_triggers = Vec::new();
    for (kind, entries) in triggers {
        if kind != "http" {
            bail!("trigger type `{kind}` ([[trigger.{kind}]]) is not supported by this runner: only `http` triggers are");
        }
        let toml::Value::Array(entries) = entries else {
            bail!("`trigger.http` must be an array of tables: write [[trigger.http]]");
        };
        for (i, entry) in entries.into_iter().enumerate() {
            let t = raw::HttpTrigger::deserialize(entry)
                .map_err(|e| anyhow!("invalid [[trigger.http]] #{}: {e}", i + 1))?;
            raw_triggers.push(t);
        }
    }
    if raw_triggers.is_empty() {
        bail!("the app has no triggers: add a [[trigger.http]] entry");
    }
    assign_trigger_ids(&mut raw_triggers)?;

    let mut out = Vec::with_capacity(raw_triggers.len());
    for t in raw_triggers {
        let id = &t.id;
        if t.static_response.is_some() {
            bail!("HTTP trigger `{id}`: `static_response` is not supported by this runner");
        }
        if t.components.as_ref().is_some_and(|c| !c.is_empty()) {
            bail!("HTTP trigger `{id}`: `components` is not supported by this runner");
        }
        let component_id = match t.component {
            None => bail!("HTTP trigger `{id}` has no `component`"),
            Some(toml::Value::String(reference)) => {
                if !components.contains_key(&reference) {
                    bail!("HTTP trigger `{id}` refers to component `{reference}`, but there is no [component.{reference}]");
                }
                reference
            }
            Some(inline @ toml::Value::Table(_)) => {
                let inline_id = inline_component_id(id, components);
                let raw = raw::Component::deserialize(inline)
                    .map_err(|e| anyhow!("invalid inline component of HTTP trigger `{id}`: {e}"))?;
                let component = component(&inline_id, raw, dir, app_variables)?;
                components.insert(inline_id.clone(), component);
                inline_id
            }
            Some(other) => {
                bail!("HTTP trigger `{id}`: invalid `component` {other}: expected a component id")
            }
        };
        check_executor(t.executor.as_ref(), &component_id)?;
        let route = route(t.route, id)?;
        out.push(HttpTrigger {
            route,
            component: component_id,
        });
    }
    Ok(out)
}

/// Gives every trigger an id the way Spin does: `<component>-http-trigger` when free, else
/// `http-trigger<N>`. The ids name triggers (and inline components) in messages.
fn assign_trigger_ids(triggers: &mut [raw::HttpTrigger]) -> Result<()> {
    for t in triggers.iter() {
        if let Some(toml::Value::String(reference)) = &t.component {
            validate_component_id(reference).map_err(|e| {
                anyhow!("HTTP trigger refers to invalid component id `{reference}`: {e}")
            })?;
        }
    }
    let mut taken: BTreeSet<String> = triggers.iter().map(|t| t.id.clone()).collect();
    let mut counter = 1;
    for t in triggers.iter_mut().filter(|t| t.id.is_empty()) {
        if let Some(toml::Value::String(reference)) = &t.component {
            let candidate = format!("{reference}-http-trigger");
            if taken.insert(candidate.clone()) {
                t.id = candidate;
                continue;
            }
        }
        t.id = loop {
            let candidate = format!("http-trigger{counter}");
            if taken.insert(candidate.clone()) {
                break candidate;
            }
            counter += 1;
        };
    }
    Ok(())
}

/// The id Spin gives an inline component: `<trigger id>-component` when valid and free,
/// else `inline-component<N>`.
fn inline_component_id(trigger_id: &str, components: &BTreeMap<String, Component>) -> String {
    let natural = format!("{trigger_id}-component");
    if validate_component_id(&natural).is_ok() && !components.contains_key(&natural) {
        return natural;
    }
    (1..)
        .map(|n| format!("inline-component{n}"))
        .find(|id| !components.contains_key(id))
        .expect("an unused id exists")
}

fn check_executor(executor: Option<&toml::Value>, component_id: &str) -> Result<()> {
    let Some(executor) = executor else {
        return Ok(());
    };
    let table = executor.as_table().ok_or_else(|| {
        anyhow!("component `{component_id}`: HTTP trigger `executor` must be a table like {{ type = \"spin\" }}")
    })?;
    match table.get("type").and_then(toml::Value::as_str) {
        Some("spin" | "http") => {
            if let Some(extra) = table.keys().find(|k| *k != "type") {
                bail!("component `{component_id}`: unknown field `{extra}` in HTTP trigger `executor`");
            }
            Ok(())
        }
        Some("wagi") => bail!(
            "component `{component_id}`: the `wagi` HTTP executor is not supported by this runner \
             (only `executor = {{ type = \"spin\" }}` is)"
        ),
        Some(other) => {
            bail!("component `{component_id}`: unknown HTTP executor type `{other}`")
        }
        None => bail!("component `{component_id}`: HTTP trigger `executor` needs a `type`"),
    }
}

fn route(value: toml::Value, trigger_id: &str) -> Result<Route> {
    match value {
        toml::Value::String(path) => Ok(Route::Path(path)),
        toml::Value::Table(table) => {
            if let Some(extra) = table.keys().find(|k| *k != "private") {
                bail!("HTTP trigger `{trigger_id}`: unknown field `{extra}` in `route`");
            }
            match table.get("private") {
                Some(toml::Value::Boolean(true)) => Ok(Route::Private),
                Some(toml::Value::Boolean(false)) => bail!(
                    "route must be a string pattern or '{{ private = true }}': \
                     HTTP trigger `{trigger_id}` has {{ private = false }}"
                ),
                _ => bail!("HTTP trigger `{trigger_id}`: `route` table must be {{ private = true }}"),
            }
        }
        other => bail!("HTTP trigger `{trigger_id}`: invalid `route` {other}: expected a path or {{ private = true }}"),
    }
}

#[cfg(test)]
mod tests;
