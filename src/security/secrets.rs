//! Named secrets of the configuration (`[[connectors.secrets]]`), read from the environment
//! or a file at each use: a rotated file takes effect without a restart, and no value is
//! ever stored in the warehouse, logged or returned by the API.

use crate::config::{Secret, SecretRef};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Default)]
pub(crate) struct Secrets(Vec<SecretRef>);

impl Secrets {
    pub(crate) fn new(configured: &[SecretRef]) -> Secrets {
        Secrets(configured.to_vec())
    }

    /// The value of the secret `name`. Errors name the secret and where it was looked for,
    /// never its value.
    pub(crate) fn resolve(&self, name: &str) -> Result<Secret> {
        let Some(r) = self.0.iter().find(|r| r.name == name) else {
            let known: Vec<&str> = self.0.iter().map(|r| r.name.as_str()).collect();
            return Err(Error::invalid(format!(
                "secret {name:?} is not declared in the server configuration ([[connectors.secrets]]: {})",
                if known.is_empty() {
                    "none declared".to_string()
                } else {
                    known.join(", ")
                }
            )));
        };
        let value = match (&r.env, &r.file) {
            (Some(var), _) => std::env::var(var).map_err(|_| {
                Error::invalid(format!(
                    "secret {name:?}: environment variable {var} is not set"
                ))
            })?,
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| {
                    Error::invalid(format!(
                        "secret {name:?}: cannot read {}: {}",
                        path.display(),
                        e.kind()
                    ))
                })?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
            (None, None) => {
                return Err(Error::invalid(format!(
                    "secret {name:?} names neither env nor file"
                )));
            }
        };
        if value.is_empty() {
            return Err(Error::invalid(format!("secret {name:?} is empty")));
        }
        Ok(Secret::new(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_comes_from_its_file_without_its_line_end_and_errors_never_show_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "s3cr3t\n").unwrap();
        let secrets = Secrets::new(&[
            SecretRef {
                name: "f".into(),
                env: None,
                file: Some(path.clone()),
            },
            SecretRef {
                name: "e".into(),
                env: Some("STRATA_TEST_SECRET_THAT_IS_NOT_SET".into()),
                file: None,
            },
        ]);
        assert_eq!(secrets.resolve("f").unwrap().expose(), "s3cr3t");
        let e = secrets.resolve("e").unwrap_err().to_string();
        assert!(e.contains("STRATA_TEST_SECRET_THAT_IS_NOT_SET"), "{e}");
        let e = secrets.resolve("nope").unwrap_err().to_string();
        assert!(e.contains("f, e"), "{e}");
        std::fs::write(&path, "rotated").unwrap();
        assert_eq!(secrets.resolve("f").unwrap().expose(), "rotated");
    }
}
