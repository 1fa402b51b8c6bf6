//! Spin application variables: templates, providers and resolution.
//!
//! At start-up [`Resolved::resolve`] asks the providers for every application variable
//! (first provider with a value wins, then the manifest default), fails if a required one is
//! unset (as Spin does before serving), and renders each component's variable templates.
//! The env and static providers do not change while the app runs, so a guest's
//! `variables.get` is then a map lookup.

mod provider;

use std::collections::BTreeMap;
use std::fmt;

use anyhow::anyhow;
use runner_manifest::{validate_variable_name, App};

pub use provider::{EnvProvider, Provider, StaticProvider};
pub use runner_manifest::template::{Part, Template, TemplateError};

/// Why the variables could not be resolved at start-up. Never contains a value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Required variables that no provider set.
    #[error("{}", missing_message(.0))]
    MissingRequired(Vec<String>),
    /// A provider failed while reading `name`.
    #[error("cannot read variable `{name}`: {source:#}")]
    Provider {
        /// The application variable.
        name: String,
        /// The provider's error.
        source: anyhow::Error,
    },
    /// A component variable template cannot be rendered.
    #[error("component `{component}`: variable `{key}`: {message}")]
    Template {
        /// The component id.
        component: String,
        /// The component variable.
        key: String,
        /// What is wrong.
        message: String,
    },
}

fn missing_message(names: &[String]) -> String {
    names
        .iter()
        .map(|name| {
            format!(
                "variable `{name}` is required but not set (set {} or pass --variable {name}=…)",
                EnvProvider::env_var_name(name)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A guest's `variables.get` failure, one-to-one with the WIT `fermyon:spin/variables@2.0.0`
/// `error` variant. The messages are Spin's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VariableError {
    /// The key is not a valid variable name (Spin does not lowercase it).
    #[error("invalid variable name: {0}")]
    InvalidName(String),
    /// The component has no such variable.
    #[error("undefined variable: {0}")]
    Undefined(String),
    /// A provider failed.
    #[error("provider error: {0}")]
    Provider(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// A resolved value; `Debug` prints `***` for secrets.
#[derive(Clone)]
struct Value {
    text: String,
    secret: bool,
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.secret {
            f.write_str("***")
        } else {
            fmt::Debug::fmt(&self.text, f)
        }
    }
}

/// Every application variable and component variable of an app, resolved once.
#[derive(Debug)]
pub struct Resolved {
    /// Application variable → value.
    app: BTreeMap<String, Value>,
    /// Component id → component variable → rendered value.
    components: BTreeMap<String, BTreeMap<String, Value>>,
}

impl Resolved {
    /// Resolves the app's variables: each application variable takes the value of the first
    /// provider that has one (pass the `--variable` provider before the env provider, as
    /// Spin ranks them), else its default. Fails listing every required variable left unset.
    pub fn resolve(app: &App, providers: &[Box<dyn Provider>]) -> Result<Resolved, Error> {
        let mut values = BTreeMap::new();
        let mut missing = Vec::new();
        for (name, variable) in &app.variables {
            let mut found = None;
            for provider in providers {
                found = provider.get(name).map_err(|source| Error::Provider {
                    name: name.clone(),
                    source,
                })?;
                if found.is_some() {
                    break;
                }
            }
            match found.or_else(|| variable.default.clone()) {
                Some(text) => {
                    values.insert(
                        name.clone(),
                        Value {
                            text,
                            secret: variable.secret,
                        },
                    );
                }
                None => missing.push(name.clone()),
            }
        }
        if !missing.is_empty() {
            return Err(Error::MissingRequired(missing));
        }

        let mut components = BTreeMap::new();
        for (id, component) in &app.components {
            let mut rendered = BTreeMap::new();
            for (key, text) in &component.variables {
                let template_error = |message: String| Error::Template {
                    component: id.clone(),
                    key: key.clone(),
                    message,
                };
                let template = Template::parse(text).map_err(|e| template_error(e.to_string()))?;
                let secret = template
                    .variables()
                    .any(|name| values.get(name).is_some_and(|v: &Value| v.secret));
                let text = render_with(&template, &values).map_err(template_error)?;
                rendered.insert(key.clone(), Value { text, secret });
            }
            components.insert(id.clone(), rendered);
        }
        Ok(Resolved {
            app: values,
            components,
        })
    }

    /// A component variable, as a guest's `variables.get(key)` sees it (Spin's messages).
    pub fn get(&self, component: &str, key: &str) -> Result<&str, VariableError> {
        validate_variable_name(key).map_err(VariableError::InvalidName)?;
        let variables = self.components.get(component).ok_or_else(|| {
            VariableError::Undefined(format!("no variable for component {component:?}"))
        })?;
        variables.get(key).map(|v| v.text.as_str()).ok_or_else(|| {
            VariableError::Undefined(format!("no variable for {component:?}.{key:?}"))
        })
    }

    /// Renders a manifest template over the application variables, as Spin renders
    /// `allowed_outbound_hosts` entries (component variables are not visible there).
    /// `component` only names the component in errors.
    pub fn render(&self, component: &str, template: &str) -> anyhow::Result<String> {
        let parsed = Template::parse(template)
            .map_err(|e| anyhow!("component `{component}`: {template:?}: {e}"))?;
        render_with(&parsed, &self.app)
            .map_err(|e| anyhow!("component `{component}`: {template:?}: {e}"))
    }
}

fn render_with(template: &Template, values: &BTreeMap<String, Value>) -> Result<String, String> {
    template.render(|name| {
        values
            .get(name)
            .map(|v| v.text.as_str())
            .ok_or_else(|| format!("unknown application variable {name:?}"))
    })
}

#[cfg(test)]
mod tests;
