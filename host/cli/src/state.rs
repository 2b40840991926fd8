//! `themis state export`: the host's journal — its audit, every record as written — as one JSONL
//! file that `themis audit verify` accepts, checked before it is handed out: the chain holds, and
//! every incident the store holds (whichever store: JSON, SQLite, PostgreSQL) is in it. Reads
//! without the state directory's lock, so it works next to a running host: a record being
//! written (a line without its newline) is left for the next export.

use crate::fail;
use std::collections::BTreeSet;
use std::io::{BufRead, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use themis_agent::audit::verify::{Options, verify_with};

pub async fn export(
    state_dir: &Path,
    audit: &Path,
    out: Option<&Path>,
    keys: &[PathBuf],
) -> ExitCode {
    let mut options = Options::default();
    for k in keys {
        match themis_core::trust::keys::PublicKey::read(k) {
            Ok(k) => options.keys.push(k),
            Err(e) => return fail(2, e),
        }
    }
    // Written beside its destination (so the last step is a rename), or in a private temporary
    // folder when it goes to standard output.
    let folder = match out
        .and_then(Path::parent)
        .filter(|p| !p.as_os_str().is_empty())
    {
        Some(p) => tempfile::Builder::new()
            .prefix(".themis-export")
            .tempdir_in(p),
        None => tempfile::Builder::new().prefix("themis-export").tempdir(),
    };
    let folder = match folder {
        Ok(f) => f,
        Err(e) => return fail(2, format!("cannot make a temporary folder: {e}")),
    };
    let copy = folder.path().join("journal.jsonl");
    let incidents = match complete_lines(audit, &copy) {
        Ok(i) => i,
        Err(e) => return fail(2, format!("{}: cannot read: {e}", audit.display())),
    };
    let intact = match verify_with(&copy, &options) {
        Ok(Ok(intact)) => intact,
        Ok(Err(broken)) => {
            return fail(
                1,
                format!(
                    "{}: {broken}; nothing exported (`themis audit verify {}` says more)",
                    audit.display(),
                    audit.display()
                ),
            );
        }
        Err(e) => return fail(2, format!("{}: {e}", copy.display())),
    };

    let store = match themis_agent::store::open_read_only(state_dir).await {
        Ok(s) => s,
        Err(e) => return fail(2, e),
    };
    let (held, problems) = match store.scan().await {
        Ok(scan) => scan,
        Err(e) => return fail(2, e),
    };
    let missing: Vec<&str> = held
        .iter()
        .map(|i| i.id.as_str())
        .filter(|id| !incidents.contains(*id))
        .collect();
    if !missing.is_empty() || !problems.is_empty() {
        let mut why = Vec::new();
        if !missing.is_empty() {
            why.push(format!(
                "the store holds {} incident(s) the journal has no record of ({}): this is not the audit of that state — pass the right --audit",
                missing.len(),
                missing.join(", ")
            ));
        }
        why.extend(problems.iter().map(|p| p.to_string()));
        return fail(1, format!("nothing exported: {}", why.join("; ")));
    }

    let done = match out {
        Some(path) => std::fs::rename(&copy, path).map_err(|e| format!("{}: {e}", path.display())),
        None => std::fs::File::open(&copy)
            .and_then(|mut f| std::io::copy(&mut f, &mut std::io::stdout().lock()))
            .and_then(|_| std::io::stdout().flush())
            .map_err(|e| format!("standard output: {e}")),
    };
    if let Err(e) = done {
        return fail(2, e);
    }
    let said = format!(
        "exported {} records (chain intact, last hash {}{}), covering all {} incident(s) of the store",
        intact.records,
        intact.last_hash,
        if intact.signatures_checked {
            format!(", {} checkpoint(s) signed", intact.checkpoints)
        } else {
            String::new()
        },
        held.len()
    );
    // The journal may be on standard output: the summary goes beside it, not into it.
    if out.is_some() {
        outln!("{said}");
    } else {
        eprintln!("{said}");
    }
    ExitCode::SUCCESS
}

/// Copy `audit`'s complete lines (each as written, byte for byte) to `to` — its sealed
/// segments' first, in order — private to its owner, and name the incidents they mention.
fn complete_lines(audit: &Path, to: &Path) -> std::io::Result<BTreeSet<String>> {
    #[derive(serde::Deserialize)]
    struct Mentions {
        #[serde(default)]
        incident: Option<String>,
    }
    let files = themis_agent::audit::segments::open_all(audit)?;
    if files.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such audit log",
        ));
    }
    let mut writer = std::io::BufWriter::new(
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(to)?,
    );
    let mut incidents = BTreeSet::new();
    let mut line = Vec::new();
    for (_, file) in files {
        let mut reader = std::io::BufReader::new(file);
        loop {
            line.clear();
            // The writer bounds every record, so a longer line is not one of its records:
            // verify names it, without this reading a whole file into memory first.
            let limit = 2 * themis_agent::audit::MAX_RECORD_BYTES as u64;
            let n = (&mut reader).take(limit).read_until(b'\n', &mut line)?;
            if n == 0 || line.last() != Some(&b'\n') {
                if n as u64 == limit {
                    writer.write_all(&line)?;
                    writer.write_all(b"\n")?;
                }
                break;
            }
            if let Ok(Mentions { incident: Some(id) }) = serde_json::from_slice(&line) {
                incidents.insert(id);
            }
            writer.write_all(&line)?;
        }
    }
    writer.flush()?;
    writer.get_ref().sync_all()?;
    Ok(incidents)
}
