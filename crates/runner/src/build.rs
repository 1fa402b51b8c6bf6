//! `spin build`: runs each component's `[component.<id>.build] command` in its work directory.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Runs the build commands of `components` (all when empty), in manifest order, stopping at the
/// first failure as `spin build` does.
pub fn build(manifest: &Path, components: &[String]) -> Result<()> {
    let app = runner_manifest::load(manifest)
        .with_context(|| format!("loading {}", manifest.display()))?;
    for id in components {
        if !app.components.contains_key(id) {
            bail!("no component `{id}` in {}", manifest.display());
        }
    }
    for (id, component) in &app.components {
        if !components.is_empty() && !components.contains(id) {
            continue;
        }
        let Some(build) = &component.build else {
            println!("Component {id} has no build command.");
            continue;
        };
        let workdir = build.workdir.clone().unwrap_or_else(|| app.dir.clone());
        for command in &build.command {
            println!("Building component {id} with `{command}`");
            let status = Command::new("sh")
                .arg("-c")
                .arg(command)
                .current_dir(&workdir)
                .status()
                .with_context(|| {
                    format!(
                        "component `{id}`: running `{command}` in {}",
                        workdir.display()
                    )
                })?;
            if !status.success() {
                bail!("component `{id}`: build command `{command}` failed ({status})");
            }
        }
    }
    println!("Finished building all Spin components");
    Ok(())
}
