//! The CLI's side of the HTTP API: every command but `run` (and `--offline` work) talks to a running node through
//! this.

use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// A running node's API, with the admin token if one is known.
pub(crate) struct Api {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
    /// `?timeout=` for reads of blocks the node may have to fetch.
    timeout: Option<f64>,
}

#[derive(Deserialize)]
struct Uploaded {
    cid: String,
    entries: Vec<UploadedEntry>,
}

#[derive(Deserialize)]
struct UploadedEntry {
    path: String,
    cid: String,
}

#[derive(Deserialize)]
struct Listing {
    name: String,
    cid: String,
    kind: String,
    target: Option<String>,
}

/// What `add` should do with each path.
pub(crate) struct AddRequest<'a> {
    pub(crate) recursive: bool,
    pub(crate) cid_version: Option<u8>,
    pub(crate) profile: Option<String>,
    pub(crate) hidden: bool,
    pub(crate) chunker: Option<String>,
    pub(crate) on_added: &'a mut dyn FnMut(&str, &str),
}

impl Api {
    pub(crate) fn new(base: String, token: Option<String>) -> Self {
        let agent = ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(3)).build();
        Self { base, token, agent, timeout: None }
    }

    /// Reads wait at most this many seconds for blocks from other nodes.
    pub(crate) fn with_timeout(mut self, timeout: Option<f64>) -> Self {
        self.timeout = timeout;
        self
    }

    fn read_query(&self) -> String {
        self.timeout.map(|t| format!("?timeout={t}")).unwrap_or_default()
    }

    /// Errors from the node carry a JSON `{"error": "..."}`; show that rather than the status line.
    fn explain(&self, e: ureq::Error) -> anyhow::Error {
        match e {
            ureq::Error::Status(code, response) => {
                let body = response.into_string().unwrap_or_default();
                let message = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(String::from))
                    .unwrap_or(body);
                anyhow::anyhow!("{message} (HTTP {code})")
            }
            ureq::Error::Transport(t) => anyhow::anyhow!(
                "no node answers at {} ({t}); start one with `xnode run`, point --api or XNODE_API at one, or use \
                 --offline to work on the local data dir",
                self.base
            ),
        }
    }

    /// As [`Client::explain`], for an upload: a node that refuses a streamed body while it is still being sent
    /// answers and closes the connection, and the sender sees its write fail, not the answer.
    fn explain_upload(&self, e: ureq::Error) -> anyhow::Error {
        match e {
            ureq::Error::Transport(t) if t.kind() == ureq::ErrorKind::Io => anyhow::anyhow!(
                "the node at {} closed the connection before it had read the whole upload ({t}): it refused it, for \
                 example over its XNODE_MAX_UPLOAD or an archive of more than {} entries (add the subdirectories \
                 separately), or it stopped; its log says which",
                self.base,
                xnode_instance::MAX_TAR_ENTRIES
            ),
            e => self.explain(e),
        }
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let mut req = self.agent.request(method, &format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        req
    }

    /// Checks the admin token before an upload: a server refusing a streamed body can only cut the connection.
    pub(crate) fn check_token(&self) -> Result<()> {
        self.request("GET", "/api/v1/auth").call().map_err(|e| self.explain(e))?;
        Ok(())
    }

    pub(crate) fn add(&self, path: &Path, req: &mut AddRequest<'_>) -> Result<String> {
        let meta = fs::metadata(path).with_context(|| format!("{}: no such file or directory", path.display()))?;
        let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
        let mut query = Vec::new();
        if let Some(v) = req.cid_version {
            query.push(format!("cid-version={v}"));
        }
        if let Some(p) = &req.profile {
            query.push(format!("profile={p}"));
        }
        if req.hidden {
            query.push("hidden=true".into());
        }
        if let Some(c) = &req.chunker {
            query.push(format!("chunker={c}"));
        }
        let response = if meta.is_dir() {
            if !req.recursive {
                bail!("{} is a directory; use -r to add directories", path.display());
            }
            // Stream a tar of the tree: nothing is buffered, whatever its size.
            let (reader, mut writer) = io::pipe()?;
            let dir = path.to_path_buf();
            let dir_name = name.clone();
            let producer = std::thread::spawn(move || -> io::Result<()> {
                let mut tar = tar::Builder::new(&mut writer);
                tar.follow_symlinks(false);
                tar.append_dir_all(&dir_name, &dir)?;
                tar.finish()
            });
            let q = if query.is_empty() { String::new() } else { format!("?{}", query.join("&")) };
            let sent = self
                .request("POST", &format!("/api/v1/files{q}"))
                .set("Content-Type", "application/x-tar")
                .send(reader);
            let produced = producer.join().expect("tar thread panicked");
            let response = sent.map_err(|e| self.explain_upload(e))?;
            produced.with_context(|| format!("reading {}", path.display()))?;
            response
        } else {
            let file = fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
            query.push(format!("name={}", urlencode(&name)));
            self.request("POST", &format!("/api/v1/files?{}", query.join("&")))
                .set("Content-Type", "application/octet-stream")
                .send(file)
                .map_err(|e| self.explain_upload(e))?
        };
        let uploaded: Uploaded = response.into_json().context("reading the node's answer")?;
        if uploaded.entries.is_empty() {
            (req.on_added)(&uploaded.cid, &name);
        }
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        for e in &uploaded.entries {
            let shown = parent.map_or(e.path.clone(), |_| e.path.clone());
            (req.on_added)(&e.cid, &shown);
        }
        Ok(uploaded.cid)
    }

    /// `dag export`: the DAG under `cid` as a CARv1, streamed to `out`.
    pub(crate) fn dag_export(&self, cid: &str, out: &mut dyn Write) -> Result<()> {
        let response = self
            .request("GET", &format!("/api/v1/dag/export/{cid}{}", self.read_query()))
            .call()
            .map_err(|e| self.explain(e))?;
        io::copy(&mut response.into_reader(), out).with_context(|| {
            format!(
                "the CAR of {cid} ended early: a block of it is missing or corrupted and no member sent a good copy                  in time (the node's log names the block)"
            )
        })?;
        Ok(())
    }

    /// `dag import`: a CAR file streamed to the node; its answer (blocks, bytes, roots pinned).
    pub(crate) fn dag_import(&self, path: &Path, name: Option<&str>) -> Result<serde_json::Value> {
        let file = fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        let query = name.map(|n| format!("?name={}", urlencode(n))).unwrap_or_default();
        let response = self
            .request("POST", &format!("/api/v1/dag/import{query}"))
            .set("Content-Type", "application/vnd.ipld.car")
            .send(file)
            .map_err(|e| self.explain(e))?;
        response.into_json().context("reading the node's answer")
    }

    pub(crate) fn cat(&self, cid: &str, offset: u64, length: Option<u64>, out: &mut dyn Write) -> Result<()> {
        let mut req = self.request("GET", &format!("/api/v1/files/{cid}{}", self.read_query()));
        if offset > 0 || length.is_some() {
            let end = length.map(|l| (offset + l).saturating_sub(1).to_string()).unwrap_or_default();
            if length == Some(0) {
                return Ok(());
            }
            req = req.set("Range", &format!("bytes={offset}-{end}"));
        }
        let response = match req.call() {
            Ok(r) => r,
            Err(ureq::Error::Status(416, _)) => return Ok(()),
            Err(e) => return Err(self.explain(e).context(format!("cannot read {cid}"))),
        };
        let expected = response.header("Content-Length").and_then(|v| v.parse::<u64>().ok());
        let mut reader = response.into_reader();
        let mut copied = 0u64;
        let mut buf = vec![0; 256 << 10];
        // A download the node could not finish is cut short of its Content-Length: that is a failure (exit 1) naming
        // the file, never a quietly short output.
        let short = |copied: u64| {
            let of = expected.map(|e| format!(" of {e}")).unwrap_or_default();
            anyhow::anyhow!(
                "reading {cid} failed after {copied}{of} bytes: a block of it is missing or corrupted and no member                  sent a good copy in time (the node's log names the block); retry, or raise --timeout"
            )
        };
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(anyhow::Error::new(e).context(short(copied))),
            };
            out.write_all(&buf[..n]).context("writing the output")?;
            copied += n as u64;
        }
        if expected.is_some_and(|e| copied < e) {
            bail!(short(copied));
        }
        Ok(())
    }

    pub(crate) fn get(&self, cid: &str, dest: &Path) -> Result<()> {
        let stat: serde_json::Value = self
            .request("GET", &format!("/api/v1/stat/{cid}{}", self.read_query()))
            .call()
            .map_err(|e| self.explain(e))?
            .into_json()?;
        match stat["kind"].as_str() {
            Some("file") => {
                // create_new: never through a symlink or over anything already there (O_EXCL).
                let file = fs::OpenOptions::new().write(true).create_new(true).open(dest);
                let mut file = io::BufWriter::new(file.with_context(|| format!("creating {}", dest.display()))?);
                self.cat(cid, 0, None, &mut file)?;
                file.flush()?;
            }
            Some("directory") => {
                fs::create_dir(dest).with_context(|| format!("creating {}", dest.display()))?;
                let entries: Vec<Listing> = self
                    .request("GET", &format!("/api/v1/ls/{cid}"))
                    .call()
                    .map_err(|e| self.explain(e))?
                    .into_json()?;
                let mut names = std::collections::HashSet::new();
                for e in entries {
                    if e.name.is_empty() || e.name.contains(['/', '\0']) || e.name == "." || e.name == ".." {
                        bail!("{cid} has an entry with an unsafe name {:?}", e.name);
                    }
                    // A second entry of one name could write through the symlink the first one made.
                    if !names.insert(e.name.clone()) {
                        bail!("{cid} lists {:?} twice; refusing to write it", e.name);
                    }
                    let target = dest.join(&e.name);
                    if e.kind == "symlink" {
                        std::os::unix::fs::symlink(e.target.unwrap_or_default(), &target)?;
                    } else {
                        self.get(&e.cid, &target)?;
                    }
                }
            }
            Some("symlink") => std::os::unix::fs::symlink(stat["target"].as_str().unwrap_or_default(), dest)?,
            _ => bail!("unexpected answer for {cid}: {stat}"),
        }
        Ok(())
    }

    /// `GET path` as JSON.
    fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str, what: &str) -> Result<T> {
        self.request("GET", path)
            .call()
            .map_err(|e| self.explain(e))?
            .into_json()
            .with_context(|| format!("reading {what}"))
    }

    /// The cluster's files (`GET /api/v1/files`).
    pub(crate) fn files(&self) -> Result<serde_json::Value> {
        self.get_json("/api/v1/files", "the file list")
    }

    /// A directory's entries, or a file's own line (`GET /api/v1/ls/{cid}`, `GET /api/v1/stat/{cid}`).
    pub(crate) fn ls_cid(&self, cid: &str) -> Result<serde_json::Value> {
        let stat: serde_json::Value =
            self.get_json(&format!("/api/v1/stat/{cid}{}", self.read_query()), "the CID's kind")?;
        if stat["kind"] == "directory" {
            return self.get_json(&format!("/api/v1/ls/{cid}{}", self.read_query()), "the directory listing");
        }
        let mut entry = stat.clone();
        entry["name"] = cid.into();
        entry["cid"] = cid.into();
        Ok(serde_json::Value::Array(vec![entry]))
    }

    /// The node's own summary (`GET /api/v1/status`).
    pub(crate) fn status(&self) -> Result<serde_json::Value> {
        self.get_json("/api/v1/status", "the node's status")
    }

    /// The members as the node sees them.
    pub(crate) fn members(&self) -> Result<Vec<xnode_gossip::Member>> {
        self.get_json("/api/v1/members", "the member list")
    }

    /// The node's store figures (`GET /api/v1/storage`).
    pub(crate) fn storage(&self) -> Result<serde_json::Value> {
        self.get_json("/api/v1/storage", "the storage figures")
    }

    /// Which members hold how many of a file's blocks.
    pub(crate) fn holders(&self, cid: &str) -> Result<serde_json::Value> {
        self.get_json(&format!("/api/v1/files/{cid}/holders"), "the holders")
    }

    /// An admin action on a member by name (`/api/v1/members/{name}/{action}`), forwarded by the node if needed.
    pub(crate) fn member_action(
        &self,
        method: &str,
        member: &str,
        action: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let req = self.request(method, &format!("/api/v1/members/{}/{action}", urlencode(member)));
        let sent = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        sent.map_err(|e| self.explain(e))?.into_json().context("reading the node's answer")
    }

    /// Blocks held and wanted (`GET /api/v1/blocks`).
    pub(crate) fn blocks(&self, limit: usize) -> Result<serde_json::Value> {
        self.request("GET", &format!("/api/v1/blocks?limit={limit}"))
            .call()
            .map_err(|e| self.explain(e))?
            .into_json()
            .context("reading the block lists")
    }

    pub(crate) fn rm(&self, cid: &str) -> Result<serde_json::Value> {
        let mut body = String::new();
        self.request("DELETE", &format!("/api/v1/files/{cid}"))
            .call()
            .map_err(|e| self.explain(e))?
            .into_reader()
            .read_to_string(&mut body)?;
        Ok(serde_json::from_str(&body)?)
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
