//! Configuration from Spin variables.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use mp3_auth::TokenConfig;

/// Where a component reads its Spin variables: `spin::SpinVariables` in the wasm
/// build, a map in tests.
pub trait Variables {
    /// The variable's value, or why it could not be read.
    fn variable(&self, name: &str) -> Result<String, String>;

    /// [`Variables::variable`], with the error naming the variable: `variable NAME: ERROR`.
    fn require(&self, name: &str) -> Result<String, String> {
        self.variable(name)
            .map_err(|e| format!("variable {name}: {e}"))
    }
}

/// Variables from a map (tests, native callers): an absent name is `undefined: NAME`.
impl<K: Borrow<str> + Eq + Hash> Variables for HashMap<K, String> {
    fn variable(&self, name: &str) -> Result<String, String> {
        self.get(name)
            .cloned()
            .ok_or_else(|| format!("undefined: {name}"))
    }
}

/// The JWT settings from `jwt_secret` (at least 32 bytes), `jwt_issuer` and `jwt_audience`.
/// `ttl` is the lifetime of issued tokens; `None` for a component that only verifies (verify
/// ignores it). The error, for the log line, names the variable or the invalid setting.
pub fn token_config(vars: &impl Variables, ttl: Option<Duration>) -> Result<TokenConfig, String> {
    TokenConfig::new(
        vars.require("jwt_secret")?,
        vars.require("jwt_issuer")?,
        vars.require("jwt_audience")?,
        ttl.unwrap_or(Duration::from_secs(1)),
    )
    .map_err(|e| e.to_string())
}

/// `token_check_seconds`: how long a cached token generation may be trusted (0 or more).
pub fn token_check_seconds(vars: &impl Variables) -> Result<i64, String> {
    let text = vars.require("token_check_seconds")?;
    text.trim()
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| {
            format!("variable token_check_seconds: not a whole number of seconds: {text:?}")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn vars() -> HashMap<&'static str, String> {
        HashMap::from([
            ("jwt_secret", SECRET.to_owned()),
            ("jwt_issuer", "mp3-auth".to_owned()),
            ("jwt_audience", "mp3".to_owned()),
        ])
    }

    #[test]
    fn reads_the_three_variables() {
        let config = token_config(&vars(), Some(Duration::from_secs(3600))).unwrap();
        assert_eq!(config.issuer(), "mp3-auth");
        assert_eq!(config.audience(), "mp3");
        assert_eq!(config.ttl(), Duration::from_secs(3600));
        assert_eq!(
            token_config(&vars(), None).unwrap().ttl(),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn require_names_the_variable() {
        assert_eq!(vars().require("jwt_issuer").unwrap(), "mp3-auth");
        assert_eq!(
            vars().require("db_url").unwrap_err(),
            "variable db_url: undefined: db_url"
        );
    }

    #[test]
    fn missing_variable_is_named() {
        for name in ["jwt_secret", "jwt_issuer", "jwt_audience"] {
            let mut vars = vars();
            vars.remove(name);
            assert_eq!(
                token_config(&vars, None).unwrap_err(),
                format!("variable {name}: undefined: {name}")
            );
        }
    }

    #[test]
    fn short_secret_is_refused() {
        let mut vars = vars();
        vars.insert("jwt_secret", "x".repeat(31));
        let err = token_config(&vars, None).unwrap_err();
        assert!(err.contains("jwt secret is 31 bytes long"), "{err}");
    }
}
