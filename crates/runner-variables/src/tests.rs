use std::path::{Path, PathBuf};

use super::*;

const MANIFEST: &str = r#"
spin_manifest_version = 2
[application]
name = "demo"

[variables]
db_host = { default = "localhost" }
db_user = { default = "app" }
db_pass = { required = true, secret = true }
jwt_secret = { required = true, secret = true }
log_level = { default = "info" }

[[trigger.http]]
route = "/login"
component = "login"

[[trigger.http]]
route = "/static"
component = "plain"

[component.login]
source = "login.wasm"
allowed_outbound_hosts = ["mysql://{{ db_host }}:3306"]
[component.login.variables]
db_url = "mysql://{{ db_user }}:{{db_pass}}@{{ db_host }}/auth"
jwt_secret = "{{ jwt_secret }}"
level = "{{log_level}}"
api_version = "v1"

[component.plain]
source = "plain.wasm"
"#;

fn app() -> App {
    App::from_toml(MANIFEST, Path::new("/srv")).unwrap()
}

fn env(pairs: &[(&str, &str)]) -> Box<dyn Provider> {
    Box::new(EnvProvider::from_map(pairs.iter().map(|(k, v)| (*k, *v))))
}

fn statics(pairs: &[(&str, &str)]) -> Box<dyn Provider> {
    Box::new(StaticProvider::new(pairs.iter().map(|(k, v)| (*k, *v))))
}

const REQUIRED_ENV: &[(&str, &str)] = &[
    ("SPIN_VARIABLE_DB_PASS", "s3cret-pass"),
    ("SPIN_VARIABLE_JWT_SECRET", "s3cret-jwt"),
];

#[test]
fn env_provider_reads_upper_cased_prefixed_names() {
    assert_eq!(
        EnvProvider::env_var_name("jwt_secret"),
        "SPIN_VARIABLE_JWT_SECRET"
    );
    let provider = EnvProvider::from_map([("SPIN_VARIABLE_DB_URL", "x"), ("db_url", "wrong")]);
    assert_eq!(provider.get("db_url").unwrap().as_deref(), Some("x"));
    assert_eq!(provider.get("other").unwrap(), None);
    let empty = EnvProvider::from_map([("SPIN_VARIABLE_A", "")]);
    assert_eq!(
        empty.get("a").unwrap().as_deref(),
        Some(""),
        "an empty value is a value"
    );
}

#[test]
fn precedence_is_static_then_env_then_default() {
    let app = app();
    let mut env_vars = REQUIRED_ENV.to_vec();
    env_vars.push(("SPIN_VARIABLE_DB_HOST", "env-host"));
    env_vars.push(("SPIN_VARIABLE_LOG_LEVEL", "env-level"));
    let providers = vec![statics(&[("log_level", "static-level")]), env(&env_vars)];
    let resolved = Resolved::resolve(&app, &providers).unwrap();
    assert_eq!(resolved.get("login", "level").unwrap(), "static-level");
    assert_eq!(
        resolved.get("login", "db_url").unwrap(),
        "mysql://app:s3cret-pass@env-host/auth",
        "env beats default; default used when nothing else is set"
    );
    assert_eq!(resolved.get("login", "api_version").unwrap(), "v1");
    assert_eq!(resolved.get("login", "jwt_secret").unwrap(), "s3cret-jwt");
}

#[test]
fn missing_required_variables_are_all_reported_without_values() {
    let err =
        Resolved::resolve(&app(), &[env(&[("SPIN_VARIABLE_DB_PASS", "s3cret-pass")])]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "variable `jwt_secret` is required but not set \
         (set SPIN_VARIABLE_JWT_SECRET or pass --variable jwt_secret=…)"
    );
    let err = Resolved::resolve(&app(), &[]).unwrap_err().to_string();
    assert!(
        err.contains("`db_pass`") && err.contains("`jwt_secret`"),
        "{err}"
    );
}

#[test]
fn required_variables_are_checked_even_when_no_component_uses_them() {
    let text = MANIFEST.replace("[variables]", "[variables]\nunused = { required = true }");
    let app = App::from_toml(&text, Path::new("/srv")).unwrap();
    let err = Resolved::resolve(&app, &[env(REQUIRED_ENV)]).unwrap_err();
    assert!(err.to_string().contains("`unused`"), "{err}");
}

#[test]
fn provider_errors_stop_resolution() {
    struct Broken;
    impl Provider for Broken {
        fn get(&self, _: &str) -> anyhow::Result<Option<String>> {
            anyhow::bail!("vault unreachable")
        }
    }
    let err = Resolved::resolve(&app(), &[Box::new(Broken)]).unwrap_err();
    assert!(matches!(err, Error::Provider { .. }));
    assert!(err.to_string().contains("vault unreachable"), "{err}");
}

#[test]
fn get_mirrors_spin_errors() {
    let resolved = Resolved::resolve(&app(), &[env(REQUIRED_ENV)]).unwrap();
    // Spin does not lowercase: an upper-case key is an invalid name.
    assert_eq!(
        resolved.get("login", "DB_URL"),
        Err(VariableError::InvalidName(
            "\"DB_URL\": invalid character 'D'. Variable names may contain only lower-case letters, numbers, and underscores.".into()
        ))
    );
    assert!(matches!(
        resolved.get("login", "db-url"),
        Err(VariableError::InvalidName(_))
    ));
    assert!(matches!(
        resolved.get("login", ""),
        Err(VariableError::InvalidName(_))
    ));
    // An application variable is not visible unless the component maps it.
    assert_eq!(
        resolved.get("login", "db_host"),
        Err(VariableError::Undefined(
            "no variable for \"login\".\"db_host\"".into()
        ))
    );
    assert_eq!(
        resolved.get("plain", "db_url"),
        Err(VariableError::Undefined(
            "no variable for \"plain\".\"db_url\"".into()
        ))
    );
    assert!(matches!(
        resolved.get("ghost", "x"),
        Err(VariableError::Undefined(_))
    ));
}

#[test]
fn render_uses_application_variables() {
    let resolved = Resolved::resolve(
        &app(),
        &[env(&[
            ("SPIN_VARIABLE_DB_HOST", "db.internal"),
            REQUIRED_ENV[0],
            REQUIRED_ENV[1],
        ])],
    )
    .unwrap();
    assert_eq!(
        resolved
            .render("login", "mysql://{{ db_host }}:3306")
            .unwrap(),
        "mysql://db.internal:3306"
    );
    assert_eq!(
        resolved.render("login", "tcp://127.0.0.1:5672").unwrap(),
        "tcp://127.0.0.1:5672"
    );
    let unknown = resolved
        .render("login", "tcp://{{ db_url }}")
        .unwrap_err()
        .to_string();
    assert!(
        unknown.contains("login") && unknown.contains("\"db_url\""),
        "{unknown}"
    );
    assert!(resolved.render("login", "tcp://{{ db_host").is_err());
}

#[test]
fn secrets_never_appear_in_debug_or_errors() {
    let providers = vec![statics(&[("db_pass", "s3cret-pass")]), env(REQUIRED_ENV)];
    let resolved = Resolved::resolve(&app(), &providers).unwrap();
    let debug = format!(
        "{resolved:?} {providers:?}",
        providers = StaticProvider::new([("db_pass", "s3cret-pass")])
    );
    assert!(!debug.contains("s3cret"), "{debug}");
    assert!(debug.contains("***"), "{debug}");
    // Non-secret values stay readable, including component values built only from them.
    assert!(
        debug.contains("\"localhost\"") && debug.contains("\"v1\""),
        "{debug}"
    );
    let err = resolved.get("login", "nope").unwrap_err().to_string();
    assert!(!err.contains("s3cret"), "{err}");
}

#[test]
fn static_provider_parses_cli_arguments() {
    let dir = temp_dir("cli");
    let value_file = dir.join("cert.pem");
    std::fs::write(&value_file, "line1\nline2\n").unwrap();
    let json = dir.join("vars.json");
    std::fs::write(
        &json,
        r#"{ "sierra_madre": "no spoilers", "db_host": "from-json" }"#,
    )
    .unwrap();
    let toml_file = dir.join("vars.toml");
    std::fs::write(&toml_file, "eleven = \"herbs\"\n").unwrap();

    let provider = StaticProvider::from_cli_args(&[
        "db_host=a=b".to_owned(),
        format!("cert=@{}", value_file.display()),
        format!("@{}", json.display()),
        format!("@{}", toml_file.display()),
        "empty=".to_owned(),
    ])
    .unwrap();
    assert_eq!(
        provider.get("db_host").unwrap().as_deref(),
        Some("from-json"),
        "later wins"
    );
    assert_eq!(
        provider.get("cert").unwrap().as_deref(),
        Some("line1\nline2\n")
    );
    assert_eq!(
        provider.get("sierra_madre").unwrap().as_deref(),
        Some("no spoilers")
    );
    assert_eq!(provider.get("eleven").unwrap().as_deref(), Some("herbs"));
    assert_eq!(provider.get("empty").unwrap().as_deref(), Some(""));
    assert_eq!(
        provider.undeclared(&app()),
        ["cert", "eleven", "empty", "sierra_madre"]
    );

    for bad in ["novalue", "Upper=1", "x=@/does/not/exist"] {
        StaticProvider::from_cli_args(&[bad]).expect_err(bad);
    }
    let nested = dir.join("nested.json");
    std::fs::write(&nested, r#"{ "a": 1 }"#).unwrap();
    let err = StaticProvider::from_cli_args(&[format!("@{}", nested.display())]).unwrap_err();
    assert!(err.to_string().contains("must be a string"), "{err}");
    let txt = dir.join("vars.txt");
    std::fs::write(&txt, "a=b").unwrap();
    StaticProvider::from_cli_args(&[format!("@{}", txt.display())]).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn env_provider_falls_back_to_a_dotenv_file() {
    let dir = temp_dir("dotenv");
    let dotenv = dir.join(".env");
    std::fs::write(
        &dotenv,
        "# comment\nSPIN_VARIABLE_DB_PASS=from-file\nexport SPIN_VARIABLE_JWT_SECRET=\"quoted value\"\n",
    )
    .unwrap();
    let lookup_env = |key: &str| match key {
        "SPIN_VARIABLE_JWT_SECRET" => Ok("from-env".to_owned()),
        _ => Err(std::env::VarError::NotPresent),
    };
    let provider = EnvProvider::new(lookup_env, Some(dotenv.clone()));
    assert_eq!(
        provider.get("db_pass").unwrap().as_deref(),
        Some("from-file")
    );
    assert_eq!(
        provider.get("jwt_secret").unwrap().as_deref(),
        Some("from-env"),
        "env beats .env"
    );
    assert_eq!(provider.get("other").unwrap(), None);

    let missing = EnvProvider::new(lookup_env, Some(dir.join("absent.env")));
    assert_eq!(missing.get("db_pass").unwrap(), None, "no file is no error");

    let broken = dir.join("broken.env");
    std::fs::write(&broken, "SPIN_VARIABLE_X='unterminated hunter2\n").unwrap();
    let err = EnvProvider::new(lookup_env, Some(broken))
        .get("x")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("malformed dotenv file") && !err.contains("hunter2"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resolution_through_the_env_provider_matches_the_manifest_defaults() {
    let resolved = Resolved::resolve(&app(), &[env(REQUIRED_ENV)]).unwrap();
    assert_eq!(
        resolved.get("login", "db_url").unwrap(),
        "mysql://app:s3cret-pass@localhost/auth"
    );
    assert_eq!(resolved.get("login", "level").unwrap(), "info");
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("runner-variables-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
