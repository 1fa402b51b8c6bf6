use super::*;

const HEAD: &str = "spin_manifest_version = 2\n[application]\nname = \"demo\"\n";

fn app(body: &str) -> Result<App> {
    App::from_toml(&format!("{HEAD}{body}"), Path::new("/srv/app"))
}

/// The error message, with its causes, for a manifest that must be refused.
fn refused(body: &str) -> String {
    format!("{:#}", app(body).expect_err("manifest should be refused"))
}

const ONE_COMPONENT: &str = r#"
[[trigger.http]]
route = "/..."
component = "web"

[component.web]
source = "target/web.wasm"
"#;

#[test]
fn full_manifest_is_read() {
    let app = app(r#"
[application.tool.lint]
level = "strict"

[variables]
db_url = { default = "mysql://localhost/auth", description = "database" }
jwt_secret = { required = true, secret = true }

[[trigger.http]]
route = "/login"
component = "login"
executor = { type = "spin" }

[[trigger.http]]
route = "/users/:id"
component = "login"

[[trigger.http]]
route = { private = true }
component = "validate"

[component.login]
source = "target/wasm32-wasip2/release/login.wasm"
description = "Logs users in"
allowed_outbound_hosts = ["mysql://127.0.0.1", "tcp://{{ db_url }}:3306"]
environment = { RUST_LOG = "info" }
dependencies_inherit_configuration = false
files = []
[component.login.variables]
db_url = "{{ db_url }}"
secret = "prefix-{{jwt_secret}}"
static = "v1"
[component.login.build]
command = "cargo build --release"
workdir = "functions/login"
watch = ["src/**/*.rs"]
[component.login.tool.other]
x = 1

[component.validate]
source = "/abs/validate.wasm"
[component.validate.build]
command = ["npm install", "npm run build"]
"#)
    .unwrap();

    assert_eq!(app.name, "demo");
    assert_eq!(app.dir, Path::new("/srv/app"));
    assert_eq!(
        app.variables["db_url"],
        Variable {
            default: Some("mysql://localhost/auth".into()),
            required: false,
            secret: false
        }
    );
    assert_eq!(
        app.variables["jwt_secret"],
        Variable {
            default: None,
            required: true,
            secret: true
        }
    );
    assert_eq!(
        app.http_triggers,
        vec![
            HttpTrigger {
                route: Route::Path("/login".into()),
                component: "login".into()
            },
            HttpTrigger {
                route: Route::Path("/users/:id".into()),
                component: "login".into()
            },
            HttpTrigger {
                route: Route::Private,
                component: "validate".into()
            },
        ]
    );
    let login = &app.components["login"];
    assert_eq!(login.id, "login");
    assert_eq!(
        login.source,
        Path::new("/srv/app/target/wasm32-wasip2/release/login.wasm")
    );
    assert_eq!(
        login.allowed_outbound_hosts,
        ["mysql://127.0.0.1", "tcp://{{ db_url }}:3306"]
    );
    assert_eq!(login.variables["secret"], "prefix-{{jwt_secret}}");
    assert_eq!(login.environment["RUST_LOG"], "info");
    assert_eq!(
        login.build,
        Some(Build {
            command: vec!["cargo build --release".into()],
            workdir: Some(PathBuf::from("/srv/app/functions/login")),
            watch: vec!["src/**/*.rs".into()],
        })
    );
    let validate = &app.components["validate"];
    assert_eq!(validate.source, Path::new("/abs/validate.wasm"));
    assert_eq!(
        validate.build.as_ref().unwrap().command,
        ["npm install", "npm run build"]
    );
    assert!(app.unused_components().is_empty());
}

#[test]
fn load_reads_a_file_and_resolves_paths_against_its_directory() {
    let dir = std::env::temp_dir().join(format!("runner-manifest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("spin.toml");
    std::fs::write(&path, format!("{HEAD}{ONE_COMPONENT}")).unwrap();
    let app = load(&path).unwrap();
    assert_eq!(app.dir, dir);
    assert_eq!(app.components["web"].source, dir.join("target/web.wasm"));

    std::fs::write(
        &path,
        format!("{HEAD}{ONE_COMPONENT}sqlite_databases = [\"default\"]\n"),
    )
    .unwrap();
    assert!(format!("{:#}", load(&path).unwrap_err()).contains("sqlite_databases"));
    let err = format!("{}", load(&path).unwrap_err());
    assert!(err.contains(&path.display().to_string()), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(load(&path).is_err());
}

#[test]
fn key_value_store_labels_are_read() {
    let app = App::from_toml(
        &format!("{HEAD}{ONE_COMPONENT}key_value_stores = [\"default\", \"cache\"]\n"),
        Path::new("/app"),
    )
    .unwrap();
    assert_eq!(app.components["web"].key_value_stores, ["default", "cache"]);
    let none = App::from_toml(&format!("{HEAD}{ONE_COMPONENT}"), Path::new("/app")).unwrap();
    assert!(none.components["web"].key_value_stores.is_empty());
}

#[test]
fn relative_app_dir_becomes_absolute() {
    let app = App::from_toml(&format!("{HEAD}{ONE_COMPONENT}"), Path::new("sub")).unwrap();
    assert!(app.dir.is_absolute());
    assert!(app.components["web"].source.is_absolute());
}

#[test]
fn executor_spin_and_http_are_accepted() {
    for ty in ["spin", "http"] {
        app(&format!(
            "[[trigger.http]]\nroute = \"/\"\ncomponent = \"web\"\nexecutor = {{ type = \"{ty}\" }}\n[component.web]\nsource = \"w.wasm\"\n"
        ))
        .unwrap();
    }
}

#[test]
fn inline_components_get_spin_ids() {
    let app = app(r#"
[[trigger.http]]
route = "/a"
component = { source = "a.wasm" }

[[trigger.http]]
id = "named"
route = "/b"
component = { source = "b.wasm", allowed_outbound_hosts = ["https://example.com"] }
"#)
    .unwrap();
    assert_eq!(app.http_triggers[0].component, "http-trigger1-component");
    assert_eq!(app.http_triggers[1].component, "named-component");
    assert_eq!(
        app.components["named-component"].source,
        Path::new("/srv/app/b.wasm")
    );
}

#[test]
fn unused_components_are_reported_not_refused() {
    let app = app(&format!(
        "{ONE_COMPONENT}\n[component.spare]\nsource = \"s.wasm\"\n"
    ))
    .unwrap();
    assert_eq!(app.unused_components(), ["spare"]);
}

#[test]
fn secret_defaults_are_hidden_in_debug() {
    let app = app(&format!(
        "[variables]\nkey = {{ default = \"hunter2\", secret = true }}\nopen = {{ default = \"visible\" }}\n{ONE_COMPONENT}"
    ))
    .unwrap();
    let debug = format!("{app:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(
        debug.contains("***") && debug.contains("visible"),
        "{debug}"
    );
}

// ---- refusals -------------------------------------------------------------------------------

#[test]
fn version_1_and_bad_versions_are_refused() {
    let v1 = App::from_toml(
        "spin_manifest_version = \"1\"\nname = \"x\"\ntrigger = { type = \"http\", base = \"/\" }\n",
        Path::new("/"),
    )
    .unwrap_err()
    .to_string();
    assert!(v1.contains("version 1 is not supported"), "{v1}");
    let old = App::from_toml("spin_version = \"1\"\n", Path::new("/"))
        .unwrap_err()
        .to_string();
    assert!(old.contains("version 1"), "{old}");
    let three = App::from_toml("spin_manifest_version = 3\n", Path::new("/"))
        .unwrap_err()
        .to_string();
    assert!(
        three.contains("unsupported spin_manifest_version 3"),
        "{three}"
    );
    let string_two = App::from_toml("spin_manifest_version = \"2\"\n", Path::new("/")).unwrap_err();
    assert!(string_two.to_string().contains("unsupported"));
    let missing = App::from_toml("[application]\nname = \"x\"\n", Path::new("/")).unwrap_err();
    assert!(missing
        .to_string()
        .contains("missing `spin_manifest_version = 2`"));
    assert!(App::from_toml("not toml [", Path::new("/")).is_err());
}

#[test]
fn unknown_keys_are_refused_everywhere() {
    assert!(
        refused(&format!("colour = \"red\"\n{ONE_COMPONENT}")).contains("unknown field `colour`")
    );
    let app_level = App::from_toml(
        &format!(
            "spin_manifest_version = 2\n[application]\nname = \"d\"\nbase = \"/\"\n{ONE_COMPONENT}"
        ),
        Path::new("/"),
    )
    .unwrap_err();
    assert!(format!("{app_level:#}").contains("unknown field `base`"));
    let comp = refused(&format!("{ONE_COMPONENT}colour = \"red\"\n"));
    assert!(
        comp.contains("[component.web]") && comp.contains("unknown field `colour`"),
        "{comp}"
    );
    let trig = refused("[[trigger.http]]\nroute = \"/\"\ncomponent = \"web\"\nmethod = \"GET\"\n[component.web]\nsource = \"w.wasm\"\n");
    assert!(trig.contains("unknown field `method`"), "{trig}");
    let var = refused(&format!(
        "[variables]\nx = {{ default = \"1\", type = \"int\" }}\n{ONE_COMPONENT}"
    ));
    assert!(
        var.contains("`x`") && var.contains("unknown field `type`"),
        "{var}"
    );
    let build = refused(&format!(
        "{ONE_COMPONENT}[component.web.build]\ncommand = \"make\"\nshell = \"bash\"\n"
    ));
    assert!(build.contains("unknown field `shell`"), "{build}");
}

#[test]
fn application_trigger_settings_are_refused() {
    let err = refused(&format!(
        "[application.trigger.http]\nbase = \"/api\"\n{ONE_COMPONENT}"
    ));
    assert!(
        err.contains("[application.trigger.http]") && err.contains("base"),
        "{err}"
    );
}

#[test]
fn variables_need_exactly_one_of_default_and_required() {
    let both = refused(&format!(
        "[variables]\nx = {{ default = \"1\", required = true }}\n{ONE_COMPONENT}"
    ));
    assert!(
        both.contains("`x` must be `required` OR have a `default`"),
        "{both}"
    );
    let neither = refused(&format!(
        "[variables]\nx = {{ secret = true }}\n{ONE_COMPONENT}"
    ));
    assert!(
        neither.contains("`x` must be `required` OR have a `default`"),
        "{neither}"
    );
    let not_required = refused(&format!(
        "[variables]\nx = {{ required = false }}\n{ONE_COMPONENT}"
    ));
    assert!(
        not_required.contains("must be `required` OR"),
        "{not_required}"
    );
}

#[test]
fn variable_names_follow_spin_rules() {
    for bad in ["DB_URL", "db-url", "1st", "a__b", "trailing_"] {
        let err = refused(&format!(
            "[variables]\n\"{bad}\" = {{ default = \"1\" }}\n{ONE_COMPONENT}"
        ));
        assert!(
            err.contains("invalid application variable name") && err.contains(bad),
            "{err}"
        );
    }
    let err = refused(&format!(
        "{ONE_COMPONENT}[component.web.variables]\nDbUrl = \"x\"\n"
    ));
    assert!(
        err.contains("component `web`") && err.contains("DbUrl"),
        "{err}"
    );
}

#[test]
fn component_ids_must_be_kebab_case() {
    let err = refused("[[trigger.http]]\nroute = \"/\"\ncomponent = \"my_comp\"\n[component.my_comp]\nsource = \"w.wasm\"\n");
    assert!(err.contains("my_comp") && err.contains("not '_'"), "{err}");
}

#[test]
fn triggers_must_reference_existing_components() {
    let err = refused("[[trigger.http]]\nroute = \"/\"\ncomponent = \"ghost\"\n[component.web]\nsource = \"w.wasm\"\n");
    assert!(
        err.contains("`ghost`") && err.contains("no [component.ghost]"),
        "{err}"
    );
    let none = refused("[[trigger.http]]\nroute = \"/\"\n[component.web]\nsource = \"w.wasm\"\n");
    assert!(none.contains("has no `component`"), "{none}");
}

#[test]
fn apps_without_triggers_are_refused() {
    assert!(refused("[component.web]\nsource = \"w.wasm\"\n").contains("no triggers"));
    assert!(refused("[trigger]\nhttp = []\n").contains("no triggers"));
    assert!(
        refused("[trigger.http]\nroute = \"/\"\ncomponent = \"w\"\n").contains("[[trigger.http]]")
    );
}

#[test]
fn other_trigger_types_are_refused_by_name() {
    for kind in ["redis", "cron", "command"] {
        let err = refused(&format!(
            "{ONE_COMPONENT}\n[[trigger.{kind}]]\ncomponent = \"web\"\n"
        ));
        assert!(err.contains(&format!("trigger type `{kind}`")), "{err}");
    }
}

#[test]
fn wagi_and_unknown_executors_are_refused() {
    let trig = |executor: &str| {
        refused(&format!(
            "[[trigger.http]]\nroute = \"/\"\ncomponent = \"web\"\nexecutor = {executor}\n[component.web]\nsource = \"w.wasm\"\n"
        ))
    };
    let wagi = trig("{ type = \"wagi\" }");
    assert!(
        wagi.contains("`wagi`") && wagi.contains("component `web`"),
        "{wagi}"
    );
    assert!(trig("{ type = \"cgi\" }").contains("unknown HTTP executor type `cgi`"));
    assert!(trig("{ type = \"spin\", argv = \"x\" }").contains("unknown field `argv`"));
    assert!(trig("\"spin\"").contains("must be a table"));
}

#[test]
fn bad_routes_are_refused() {
    let trig = |route: &str| {
        refused(&format!(
            "[[trigger.http]]\nroute = {route}\ncomponent = \"web\"\n[component.web]\nsource = \"w.wasm\"\n"
        ))
    };
    assert!(trig("{ private = false }").contains("{ private = false }"));
    assert!(trig("{ public = true }").contains("unknown field `public`"));
    assert!(trig("42").contains("invalid `route`"));
    let missing =
        refused("[[trigger.http]]\ncomponent = \"web\"\n[component.web]\nsource = \"w.wasm\"\n");
    assert!(missing.contains("missing field `route`"), "{missing}");
}

#[test]
fn static_responses_and_components_lists_are_refused() {
    let sr = refused("[[trigger.http]]\nroute = \"/\"\nstatic_response = { body = \"hi\" }\n");
    assert!(sr.contains("`static_response` is not supported"), "{sr}");
    let cs = refused(&format!(
        "{ONE_COMPONENT}\n[[trigger.http]]\nroute = \"/x\"\ncomponent = \"web\"\ncomponents = {{ mw = \"web\" }}\n"
    ));
    assert!(cs.contains("`components` is not supported"), "{cs}");
}

#[test]
fn remote_and_registry_sources_are_refused() {
    let url = refused(
        "[[trigger.http]]\nroute = \"/\"\ncomponent = \"web\"\n[component.web]\nsource = { url = \"https://x/w.wasm\", digest = \"sha256:00\" }\n",
    );
    assert!(
        url.contains("component `web`") && url.contains("url, digest"),
        "{url}"
    );
    let reg = refused(
        "[[trigger.http]]\nroute = \"/\"\ncomponent = \"web\"\n[component.web]\nsource = { registry = \"r\", package = \"a:b\", version = \"1.0.0\" }\n",
    );
    assert!(reg.contains("registry source"), "{reg}");
    let missing =
        refused("[[trigger.http]]\nroute = \"/\"\ncomponent = \"web\"\n[component.web]\n");
    assert!(missing.contains("missing field `source`"), "{missing}");
}

#[test]
fn unsupported_component_fields_are_refused_by_name() {
    let cases = [
        ("files", "[\"assets/*\"]"),
        ("exclude_files", "[\"secret/*\"]"),
        ("allowed_http_hosts", "[\"example.com\"]"),
        ("sqlite_databases", "[\"default\"]"),
        ("ai_models", "[\"llama2-chat\"]"),
        ("dependencies", "{ \"a:b/c\" = \"1.0.0\" }"),
        ("dependencies_inherit_configuration", "true"),
        ("targets", "[\"spin-up:3.3\"]"),
        ("profile", "{ debug = { source = \"d.wasm\" } }"),
    ];
    for (field, value) in cases {
        let err = refused(&format!("{ONE_COMPONENT}{field} = {value}\n"));
        assert!(
            err.contains("component `web`") && err.contains(&format!("`{field}`")),
            "{field}: {err}"
        );
    }
    // Empty values ask for nothing and are accepted.
    app(&format!(
        "{ONE_COMPONENT}files = []\nsqlite_databases = []\ndependencies = {{}}\n"
    ))
    .unwrap();
}

#[test]
fn templates_must_parse_and_name_declared_application_variables() {
    let vars = "[variables]\nhost = { default = \"db\" }\n";
    let unknown = refused(&format!(
        "{vars}{ONE_COMPONENT}[component.web.variables]\nurl = \"{{{{ hots }}}}\"\n"
    ));
    assert!(
        unknown.contains("component `web`") && unknown.contains("\"hots\""),
        "{unknown}"
    );
    let unclosed = refused(&format!(
        "{vars}{ONE_COMPONENT}[component.web.variables]\nurl = \"{{{{ host\"\n"
    ));
    assert!(unclosed.contains("unmatched '{{'"), "{unclosed}");
    let host = refused(&format!(
        "{vars}{ONE_COMPONENT}allowed_outbound_hosts = [\"tcp://{{{{ port }}}}\"]\n"
    ));
    assert!(
        host.contains("allowed_outbound_hosts") && host.contains("\"port\""),
        "{host}"
    );
    // Component variables are not visible to other templates: only application variables are.
    let comp_var = refused(&format!(
        "{vars}{ONE_COMPONENT}allowed_outbound_hosts = [\"tcp://{{{{ url }}}}\"]\n[component.web.variables]\nurl = \"x\"\n"
    ));
    assert!(
        comp_var.contains("unknown application variable \"url\""),
        "{comp_var}"
    );
}
