//! The runner's own WIT (`wit/fermyon-spin`) must describe exactly what Spin 3 gives spin-sdk 5.x
//! guests, or guests fail to link (or worse, link to different types). This compares each hosted
//! interface, function by function and type by type, with the WIT that ships inside spin-sdk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use wit_parser::{Handle, Resolve, Type, TypeDefKind, TypeId, TypeOwner};

/// Renders a type structurally (names of records, variants and enums included, since guests
/// see those), so two resolves can be compared.
fn render(resolve: &Resolve, ty: &Type) -> String {
    match ty {
        Type::Id(id) => render_id(resolve, *id),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn render_id(resolve: &Resolve, id: TypeId) -> String {
    let def = &resolve.types[id];
    let name = def.name.clone().unwrap_or_default();
    let body = match &def.kind {
        TypeDefKind::Record(r) => {
            let fields: Vec<_> = r
                .fields
                .iter()
                .map(|f| format!("{}: {}", f.name, render(resolve, &f.ty)))
                .collect();
            format!("record {{{}}}", fields.join(", "))
        }
        TypeDefKind::Variant(v) => {
            let cases: Vec<_> = v
                .cases
                .iter()
                .map(|c| {
                    format!(
                        "{}({})",
                        c.name,
                        c.ty.as_ref().map_or(String::new(), |t| render(resolve, t))
                    )
                })
                .collect();
            format!("variant {{{}}}", cases.join(", "))
        }
        TypeDefKind::Enum(e) => format!(
            "enum {{{}}}",
            e.cases
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        TypeDefKind::List(t) => format!("list<{}>", render(resolve, t)),
        TypeDefKind::Option(t) => format!("option<{}>", render(resolve, t)),
        TypeDefKind::Result(r) => format!(
            "result<{}, {}>",
            r.ok.as_ref().map_or("_".into(), |t| render(resolve, t)),
            r.err.as_ref().map_or("_".into(), |t| render(resolve, t))
        ),
        TypeDefKind::Type(t) => render(resolve, t),
        TypeDefKind::Resource => "resource".into(),
        TypeDefKind::Handle(Handle::Own(r)) => format!(
            "own<{}>",
            resolve.types[*r].name.clone().unwrap_or_default()
        ),
        TypeDefKind::Handle(Handle::Borrow(r)) => format!(
            "borrow<{}>",
            resolve.types[*r].name.clone().unwrap_or_default()
        ),
        other => format!("{other:?}"),
    };
    format!("{name}={body}")
}

/// interface name -> function name -> rendered signature, for package `fermyon:spin@2.0.0`.
fn signatures(dir: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut resolve = Resolve::default();
    let (package, _) = resolve
        .push_dir(dir)
        .unwrap_or_else(|e| panic!("parsing {}: {e:#}", dir.display()));
    let package = if resolve.packages[package].name.to_string() == "fermyon:spin@2.0.0" {
        package
    } else {
        resolve
            .packages
            .iter()
            .find(|(_, p)| p.name.to_string() == "fermyon:spin@2.0.0")
            .map(|(id, _)| id)
            .expect("fermyon:spin@2.0.0 in the resolve")
    };
    let mut out = BTreeMap::new();
    for (name, iface) in &resolve.packages[package].interfaces {
        let iface = &resolve.interfaces[*iface];
        let mut functions = BTreeMap::new();
        for (fname, f) in &iface.functions {
            let params: Vec<_> = f
                .params
                .iter()
                .map(|(n, t)| format!("{n}: {}", render(&resolve, t)))
                .collect();
            let result = f
                .result
                .as_ref()
                .map_or("()".into(), |t| render(&resolve, t));
            functions.insert(
                fname.clone(),
                format!("({}) -> {result}", params.join(", ")),
            );
        }
        for (tname, id) in &iface.types {
            assert!(matches!(resolve.types[*id].owner, TypeOwner::Interface(_)));
            functions.insert(format!("type {tname}"), render_id(&resolve, *id));
        }
        out.insert(name.clone(), functions);
    }
    out
}

/// spin-sdk's WIT folder, wherever cargo unpacked the crate.
fn spin_sdk_wit() -> PathBuf {
    let output = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata is JSON");
    let manifest = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["name"] == "spin-sdk")
        .and_then(|p| p["manifest_path"].as_str())
        .expect("spin-sdk is a dependency of the workspace");
    Path::new(manifest).parent().expect("crate dir").join("wit")
}

#[test]
fn hosted_interfaces_match_spin_sdk() {
    let ours = signatures(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../wit/fermyon-spin"));
    let theirs = signatures(&spin_sdk_wit());
    assert!(
        ours.len() >= 3,
        "variables, rdbms-types and mysql are hosted: {:?}",
        ours.keys()
    );
    for (interface, functions) in &ours {
        let spin = theirs
            .get(interface)
            .unwrap_or_else(|| panic!("spin-sdk has no interface `{interface}`"));
        assert_eq!(
            functions, spin,
            "interface `{interface}` differs from spin-sdk's"
        );
    }
}
