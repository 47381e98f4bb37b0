//! Token mode: static bearer tokens, compared in constant time.

use super::role::Role;
use super::{AuthFailure, Principal};
use crate::config::ApiToken;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use subtle::ConstantTimeEq;

pub struct TokenAuth {
    tokens: Vec<Known>,
}

struct Known {
    /// SHA-256 of the token: comparing digests keeps the time independent of the length.
    digest: [u8; 32],
    subject: String,
    role: Role,
    name: String,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl TokenAuth {
    pub fn new(tokens: &[ApiToken]) -> Self {
        Self {
            tokens: tokens
                .iter()
                .map(|t| {
                    let digest = digest(&t.token);
                    Known {
                        subject: subject_of(&digest),
                        digest,
                        role: t.role,
                        name: t.name.clone(),
                    }
                })
                .collect(),
        }
    }

    pub fn authenticate(&self, bearer: Option<&str>) -> Result<Principal, AuthFailure> {
        let bearer = bearer.ok_or(AuthFailure::Missing)?;
        let presented = digest(bearer);
        let mut matched = None;
        for known in &self.tokens {
            if bool::from(known.digest.ct_eq(&presented)) {
                matched = Some(known);
            }
        }
        Ok(matched.ok_or(AuthFailure::Invalid)?.principal())
    }

    /// The principal of a session's subject as the settings say now: `None` when its token
    /// has been removed (the session is over); its role and name follow the settings.
    pub fn principal_of(&self, subject: &str) -> Option<Principal> {
        self.tokens
            .iter()
            .find(|t| t.subject == subject)
            .map(Known::principal)
    }
}

impl Known {
    fn principal(&self) -> Principal {
        Principal {
            subject: self.subject.clone(),
            name: Some(self.name.clone()),
            email: None,
            mode: "token",
            role: self.role,
        }
    }
}

fn subject_of(digest: &[u8; 32]) -> String {
    format!("token:{}", hex::encode(&digest[..6]))
}

/// The generated token file in the data directory.
pub fn token_file(data_dir: &Path) -> PathBuf {
    data_dir.join("api-token")
}

/// Reads the generated token, or creates one (file mode 0600) on first start.
/// Returns the token and whether it was just created.
pub fn load_or_create(data_dir: &Path) -> std::io::Result<(String, bool)> {
    load_or_create_secret(&token_file(data_dir), "duka_")
}

/// Reads a generated secret from `path`, or creates one there (file mode 0600, its directory
/// too) made of `prefix` and 32 random bytes in hex. Returns it and whether it was created.
///
/// A symbolic link is never followed (someone who can write the directory could point it at
/// a file of their choosing), and an existing file that other users may read or write is
/// refused, naming it, rather than used.
pub fn load_or_create_secret(path: &Path, prefix: &str) -> std::io::Result<(String, bool)> {
    match open_private(path, false) {
        Ok(mut file) => {
            check_private(path, &file)?;
            let mut text = String::new();
            std::io::Read::read_to_string(&mut file, &mut text)?;
            if !text.trim().is_empty() {
                return Ok((text.trim().to_string(), false));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(refused(path, e)),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("{prefix}{}", hex::encode(bytes));
    let mut file = open_private(path, true).map_err(|e| refused(path, e))?;
    // `mode` applies only to a file created here; an existing (empty) one is fixed too.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(secret.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    Ok((secret, true))
}

fn refused(path: &Path, e: std::io::Error) -> std::io::Error {
    // ELOOP: the last component is a symbolic link, which O_NOFOLLOW refuses.
    #[cfg(unix)]
    if e.raw_os_error() == Some(libc::ELOOP) {
        return std::io::Error::other(format!(
            "{} is a symbolic link; refusing to follow it (replace it with the file itself)",
            path.display()
        ));
    }
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Opens `path` without following a symbolic link; `write` also creates it (mode 0600).
fn open_private(path: &Path, write: bool) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    if write {
        options.read(true).write(true).create(true).truncate(true);
    } else {
        options.read(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    options.open(path)
}

/// Refuses a secret file that is not a regular file or that others may read or write.
fn check_private(path: &Path, file: &std::fs::File) -> std::io::Result<()> {
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(std::io::Error::other(format!(
                "{} may be read or changed by other users (mode {mode:o}); \
                 run chmod 600 on it (or remove it to generate a new one)",
                path.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exact_tokens_pass() {
        let entry = |token: &str, role| ApiToken {
            token: token.into(),
            role,
            name: format!("{token} holder"),
        };
        let auth = TokenAuth::new(&[
            entry("acc-token-1", Role::Admin),
            entry("second-token", Role::Viewer),
        ]);
        let first = auth.authenticate(Some("acc-token-1")).unwrap();
        assert_eq!((first.mode, first.role), ("token", Role::Admin));
        let second = auth.authenticate(Some("second-token")).unwrap();
        assert_eq!(second.role, Role::Viewer);
        assert_eq!(second.name.as_deref(), Some("second-token holder"));
        assert_eq!(auth.principal_of(&second.subject), Some(second));
        assert_eq!(auth.principal_of("token:000000000000"), None);
        assert_ne!(
            auth.authenticate(Some("acc-token-1")).unwrap().subject,
            auth.authenticate(Some("second-token")).unwrap().subject
        );
        for bad in ["acc-token-", "acc-token-1x", "", "ACC-TOKEN-1"] {
            assert_eq!(auth.authenticate(Some(bad)), Err(AuthFailure::Invalid));
        }
        assert_eq!(auth.authenticate(None), Err(AuthFailure::Missing));
    }

    #[test]
    fn generated_token_is_kept_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (first, created) = load_or_create(dir.path()).unwrap();
        assert!(created && first.len() > 40);
        let (again, created) = load_or_create(dir.path()).unwrap();
        assert_eq!((again.as_str(), created), (first.as_str(), false));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let file = token_file(dir.path());
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = load_or_create(dir.path()).unwrap_err().to_string();
            assert!(err.contains("api-token") && err.contains("chmod"), "{err}");
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
            let other = tempfile::tempdir().unwrap();
            std::os::unix::fs::symlink(&file, token_file(other.path())).unwrap();
            let err = load_or_create(other.path()).unwrap_err().to_string();
            assert!(err.contains("symbolic link"), "{err}");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(token_file(dir.path()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
