//! Registry credentials: from the environment, else the standard Docker config (`docker login`,
//! `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`, credential helpers included), else
//! none. The secret itself is never logged, audited or put in an error; only where it came from.

use oci_client::secrets::RegistryAuth;

pub const USERNAME_ENV: &str = "THEMIS_REGISTRY_USERNAME";
pub const PASSWORD_ENV: &str = "THEMIS_REGISTRY_PASSWORD";
/// A file whose first line is the password (a mounted secret), instead of PASSWORD_ENV.
pub const PASSWORD_FILE_ENV: &str = "THEMIS_REGISTRY_PASSWORD_FILE";

/// Credentials for one registry, and a description of their source for messages.
pub struct Credentials {
    pub auth: RegistryAuth,
    pub source: String,
}

/// The credentials for `registry` (`host[:port]`). An unreadable password file is an error:
/// falling back to anonymous would hide a broken secret mount.
pub fn for_registry(registry: &str) -> Result<Credentials, String> {
    if let Ok(user) = std::env::var(USERNAME_ENV) {
        let password = match (
            std::env::var(PASSWORD_ENV),
            std::env::var(PASSWORD_FILE_ENV),
        ) {
            (Ok(p), _) => p,
            (Err(_), Ok(file)) => std::fs::read_to_string(&file)
                .map_err(|e| format!("{PASSWORD_FILE_ENV}={file}: cannot read: {e}"))?
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
            _ => {
                return Err(format!(
                    "{USERNAME_ENV} is set but neither {PASSWORD_ENV} nor {PASSWORD_FILE_ENV} is"
                ));
            }
        };
        return Ok(Credentials {
            auth: RegistryAuth::Basic(user, password),
            source: format!("{USERNAME_ENV}/{PASSWORD_ENV}"),
        });
    }
    match docker_credential::get_credential(registry) {
        Ok(docker_credential::DockerCredential::UsernamePassword(user, password)) => {
            Ok(Credentials {
                auth: RegistryAuth::Basic(user, password),
                source: "the Docker config".into(),
            })
        }
        Ok(docker_credential::DockerCredential::IdentityToken(token)) => Ok(Credentials {
            auth: RegistryAuth::Bearer(token),
            source: "the Docker config (identity token)".into(),
        }),
        Err(_) => Ok(Credentials {
            auth: RegistryAuth::Anonymous,
            source: "none (anonymous)".into(),
        }),
    }
}
