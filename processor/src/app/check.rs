//! `txflow config check`: a configuration checked as the stages check it at start, with
//! nothing contacted: what would end a stage on its first second ends the check instead.

use std::path::Path;

use super::run::{gateway_certificate, starting_rules};
use super::{AppError, Config};

/// What a check found, one line per part of the configuration, for the operator.
pub fn check(path: Option<&Path>, env: Vec<(String, String)>) -> Result<Vec<String>, AppError> {
    let overrides = env
        .iter()
        .filter(|(var, _)| var.starts_with(super::ENV_PREFIX) && var.contains("__"))
        .count();
    let config = Config::load(path, env)?;
    let origin = match path {
        Some(path) => path.display().to_string(),
        None => "the defaults".to_owned(),
    };
    let mut found = vec![format!(
        "{origin}{}: every section valid, its secret files read",
        match overrides {
            0 => String::new(),
            n => format!(" with {n} TXFLOW_* override(s)"),
        }
    )];
    let rules = starting_rules(&config)?;
    found.push(match &config.router.rules_file {
        Some(path) => format!(
            "router: {} rule(s) from {}",
            rules.rules().len(),
            path.display()
        ),
        None => "router: no rules file; every event goes to the default target".to_owned(),
    });
    gateway_certificate(&config.gateway)?;
    found.push(match config.gateway.certificate_files() {
        Some(files) => format!(
            "gateway: HTTPS with {} and {}",
            files.cert.display(),
            files.key.display()
        ),
        None => "gateway: plain HTTP (TLS at an ingress, or none)".to_owned(),
    });
    found.push(match config.schemas.registry()? {
        Some(_) => format!(
            "schemas: registry {} (not contacted by the check)",
            config.schemas.registry_url
        ),
        None => "schemas: the built-in schemas/ and their ids".to_owned(),
    });
    found.push(format!(
        "notifier: {} endpoint(s), signing secrets read",
        config.notifier.endpoints.len()
    ));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// A directory of its own for one test's files, removed after.
    struct Dir(PathBuf);

    impl Dir {
        fn new(test: &str) -> Dir {
            let dir =
                std::env::temp_dir().join(format!("txflow-check-{test}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Dir(dir)
        }

        fn file(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn failure(path: &Path, env: &[(&str, &str)]) -> String {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match check(Some(path), env) {
            Ok(found) => panic!("checked as valid: {found:?}"),
            Err(e) => crate::domain::failure::chain(&e),
        }
    }

    #[test]
    fn a_valid_file_is_reported_part_by_part() {
        let dir = Dir::new("valid");
        let rules = dir.file(
            "rules.yaml",
            "rules:\n  - name: big\n    pattern: {amount_minor: [{numeric: ['>', 100]}]}\n    targets: [{topic: txflow.ledger}]\n",
        );
        let config = dir.file(
            "txflow.toml",
            &format!("[router]\nrules_file = {:?}\n", rules.display().to_string()),
        );
        let env = vec![(
            "TXFLOW_LEDGER__BATCH_MAX_RECORDS".to_owned(),
            "200".to_owned(),
        )];
        let found = check(Some(&config), env).unwrap();
        assert!(
            found[0].contains("with 1 TXFLOW_* override(s)"),
            "{found:?}"
        );
        assert!(
            found.iter().any(|l| l.starts_with("router: 1 rule(s)")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|l| l.starts_with("gateway: plain HTTP")),
            "{found:?}"
        );
    }

    #[test]
    fn what_would_stop_a_stage_at_start_fails_the_check_and_says_where() {
        let dir = Dir::new("invalid");
        let unknown = dir.file("unknown.toml", "[ledger]\nmax_recrods = 10\n");
        assert!(failure(&unknown, &[]).contains("max_recrods"));

        let typed = dir.file("typed.toml", "[ledger]\nbatch_max_records = \"many\"\n");
        assert!(failure(&typed, &[]).contains("batch_max_records"));

        let rules = dir.file("rules.yaml", "rules:\n  - name: x\n    pattern: {amount_minor: [{numeric: ['>>', 1]}]}\n    targets: [{topic: t}]\n");
        let bad_rules = dir.file(
            "rules.toml",
            &format!("[router]\nrules_file = {:?}\n", rules.display().to_string()),
        );
        assert!(failure(&bad_rules, &[]).contains("rules.yaml"));

        let missing = dir.0.join("nowhere.pem");
        let tls = dir.file(
            "tls.toml",
            &format!(
                "[gateway]\ntls_cert_file = {:?}\ntls_key_file = {:?}\n",
                missing.display().to_string(),
                missing.display().to_string()
            ),
        );
        assert!(failure(&tls, &[]).contains("nowhere.pem"));

        let fine = dir.file("fine.toml", "");
        assert!(failure(&fine, &[("TXFLOW_LEDGER__BATCH_MAX_RECORDS", "0")])
            .contains("batch_max_records"));
    }
}
