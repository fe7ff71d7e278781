//! Pin requests of the IPFS Pinning Service API (ipfs/pinning-services-api-spec): each request has a unique id, a
//! state (queued, pinning, pinned, failed) and what the client sent (CID, name, origins, meta), kept in a sled
//! database of its own (`DATA_DIR/pinning`) so requests survive a restart.
//!
//! A request is worked on by [`process`]: fetch the DAG (from the origins, the cluster, Kubo peers), then pin it in
//! the store like an add, which the allocation loop publishes to the catalog: from then on it is a catalog file like
//! any other, replicated and repaired. Listing walks an index ordered by creation time, newest first, counting
//! matches as it goes: memory does not grow with the number of requests.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cid::Cid;
use serde::{Deserialize, Serialize};

use crate::{InstanceError, Node};

/// Where a request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PinState {
    /// Accepted, waiting for a worker.
    Queued,
    /// Its DAG is being fetched.
    Pinning,
    /// Its whole DAG is stored and pinned (and listed in the catalog).
    Pinned,
    /// It could not be pinned; `info.reason` says why.
    Failed,
}

impl std::str::FromStr for PinState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "queued" => Ok(Self::Queued),
            "pinning" => Ok(Self::Pinning),
            "pinned" => Ok(Self::Pinned),
            "failed" => Ok(Self::Failed),
            other => Err(format!("status {other:?} is not one of queued, pinning, pinned, failed")),
        }
    }
}

/// One pin request as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinRequest {
    /// Unique, never reused.
    pub requestid: String,
    /// The CID to pin, as the client wrote it.
    pub cid: String,
    /// An optional name.
    pub name: Option<String>,
    /// Multiaddrs the client says have the data.
    pub origins: Vec<String>,
    /// The client's own key/value pairs.
    pub meta: BTreeMap<String, String>,
    /// Where it stands.
    pub status: PinState,
    /// When it was made, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Extra information, e.g. why it failed.
    pub info: BTreeMap<String, String>,
}

/// How `name` filters match.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TextMatch {
    /// The whole name, case-sensitive (the default).
    #[default]
    Exact,
    /// The whole name, ignoring case.
    Iexact,
    /// A part of the name, case-sensitive.
    Partial,
    /// A part of the name, ignoring case.
    Ipartial,
}

impl std::str::FromStr for TextMatch {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "exact" => Ok(Self::Exact),
            "iexact" => Ok(Self::Iexact),
            "partial" => Ok(Self::Partial),
            "ipartial" => Ok(Self::Ipartial),
            other => Err(format!("match {other:?} is not one of exact, iexact, partial, ipartial")),
        }
    }
}

/// The filters of `GET /pins`.
#[derive(Clone, Debug, Default)]
pub struct PinFilter {
    /// Only these CIDs (empty: any).
    pub cids: Vec<String>,
    /// Only names matching this.
    pub name: Option<String>,
    /// How `name` matches.
    pub text_match: TextMatch,
    /// Only these states (empty: any).
    pub status: Vec<PinState>,
    /// Only requests created before this (ms since the epoch, exclusive).
    pub before_ms: Option<u64>,
    /// Only requests created after this (ms since the epoch, exclusive).
    pub after_ms: Option<u64>,
    /// Only requests whose meta holds all of these pairs.
    pub meta: BTreeMap<String, String>,
    /// At most this many results.
    pub limit: usize,
}

impl PinFilter {
    fn matches(&self, r: &PinRequest) -> bool {
        (self.cids.is_empty() || self.cids.contains(&r.cid))
            && (self.status.is_empty() || self.status.contains(&r.status))
            && self.meta.iter().all(|(k, v)| r.meta.get(k) == Some(v))
            && self.name.as_ref().is_none_or(|want| {
                let have = r.name.as_deref().unwrap_or_default();
                match self.text_match {
                    TextMatch::Exact => have == want,
                    TextMatch::Iexact => have.to_lowercase() == want.to_lowercase(),
                    TextMatch::Partial => have.contains(want.as_str()),
                    TextMatch::Ipartial => have.to_lowercase().contains(&want.to_lowercase()),
                }
            })
    }
}

/// Why the request database failed.
#[derive(Debug, thiserror::Error)]
pub enum PinningError {
    /// sled failed.
    #[error("the pin request database failed: {0}")]
    Db(#[from] sled::Error),
    /// A stored record could not be read.
    #[error("a stored pin request is corrupt: {0}")]
    Corrupt(#[from] serde_json::Error),
}

/// The request database's page cache (sled's default is 1 GiB).
const CACHE_BYTES: u64 = 4 * 1024 * 1024;

/// The pin requests of one node. Cheap to share (`Arc`); all methods are short blocking sled calls.
#[derive(Debug)]
pub struct Pinning {
    /// requestid -> JSON record.
    requests: sled::Tree,
    /// created_ms (8 bytes, big-endian) + requestid -> nothing: the listing order.
    by_created: sled::Tree,
    /// The newest `created_ms` handed out (see [`Pinning::add`]).
    last_created: std::sync::Mutex<u64>,
    _db: sled::Db,
}

impl Pinning {
    /// Opens (or creates) the request database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, PinningError> {
        // sled caches up to 1 GiB by default: a listing that walks every request (to count the matches) would keep
        // them all in memory. A small cache keeps the node's memory the same whatever the number of pins.
        let db = sled::Config::new().path(dir).cache_capacity(CACHE_BYTES).open()?;
        let by_created = db.open_tree("by-created")?;
        let last = by_created.last()?.map_or(0, |(k, _)| u64::from_be_bytes(k[..8].try_into().unwrap_or_default()));
        Ok(Self { requests: db.open_tree("requests")?, by_created, last_created: std::sync::Mutex::new(last), _db: db })
    }

    /// Records a new request, queued, with a fresh id.
    pub fn add(
        &self,
        cid: String,
        name: Option<String>,
        origins: Vec<String>,
        meta: BTreeMap<String, String>,
    ) -> Result<PinRequest, PinningError> {
        // Strictly increasing on this node: clients page with `before` = the last result's `created`, which would
        // skip a request sharing that millisecond.
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let created_ms = {
            let mut last = self.last_created.lock().expect("not poisoned");
            *last = now.max(*last + 1);
            *last
        };
        let request = PinRequest {
            requestid: new_id(created_ms),
            cid,
            name,
            origins,
            meta,
            status: PinState::Queued,
            created_ms,
            info: BTreeMap::new(),
        };
        self.put(&request)?;
        self.by_created.insert(order_key(&request), &[])?;
        Ok(request)
    }

    fn put(&self, r: &PinRequest) -> Result<(), PinningError> {
        self.requests.insert(r.requestid.as_bytes(), serde_json::to_vec(r)?)?;
        Ok(())
    }

    /// The request with this id.
    pub fn get(&self, id: &str) -> Result<Option<PinRequest>, PinningError> {
        Ok(self.requests.get(id.as_bytes())?.map(|v| serde_json::from_slice(&v)).transpose()?)
    }

    /// Moves a request to `status`, with `info` (`None` if it no longer exists).
    pub fn set_status(
        &self,
        id: &str,
        status: PinState,
        info: BTreeMap<String, String>,
    ) -> Result<Option<PinRequest>, PinningError> {
        let Some(mut r) = self.get(id)? else { return Ok(None) };
        r.status = status;
        r.info = info;
        self.put(&r)?;
        Ok(Some(r))
    }

    /// Forgets a request; returns it.
    pub fn remove(&self, id: &str) -> Result<Option<PinRequest>, PinningError> {
        let Some(r) = self.get(id)? else { return Ok(None) };
        self.by_created.remove(order_key(&r))?;
        self.requests.remove(id.as_bytes())?;
        Ok(Some(r))
    }

    /// Whether another request (not `except`) asks for `cid`.
    pub fn others_want(&self, cid: &str, except: &str) -> Result<bool, PinningError> {
        for item in self.requests.iter() {
            let (_, v) = item?;
            let r: PinRequest = serde_json::from_slice(&v)?;
            if r.cid == cid && r.requestid != except {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The requests that are not finished (queued or pinning), to resume after a restart.
    pub fn unfinished(&self) -> Result<Vec<String>, PinningError> {
        let mut out = Vec::new();
        for item in self.requests.iter() {
            let (_, v) = item?;
            let r: PinRequest = serde_json::from_slice(&v)?;
            if matches!(r.status, PinState::Queued | PinState::Pinning) {
                out.push(r.requestid);
            }
        }
        Ok(out)
    }

    /// The requests that match `filter`, newest first, at most `filter.limit` of them, and how many match in all.
    /// Pages go backwards in time: the next page is `before` the `created` of the last result.
    pub fn list(&self, filter: &PinFilter) -> Result<(u64, Vec<PinRequest>), PinningError> {
        use std::ops::Bound;
        let upper = filter.before_ms.map_or(Bound::Unbounded, |b| Bound::Excluded(b.to_be_bytes().to_vec()));
        // Keys start with the 8-byte time, so "after a" (exclusive) is "from a + 1".
        let lower = filter.after_ms.map_or(Bound::Unbounded, |a| Bound::Included((a + 1).to_be_bytes().to_vec()));
        let mut count = 0;
        let mut results = Vec::new();
        for item in self.by_created.range::<Vec<u8>, _>((lower, upper)).rev() {
            let (key, _) = item?;
            let id = std::str::from_utf8(&key[8..]).unwrap_or_default();
            let Some(r) = self.get(id)? else { continue };
            if filter.matches(&r) {
                count += 1;
                if results.len() < filter.limit {
                    results.push(r);
                }
            }
        }
        Ok((count, results))
    }
}

fn order_key(r: &PinRequest) -> Vec<u8> {
    let mut key = r.created_ms.to_be_bytes().to_vec();
    key.extend_from_slice(r.requestid.as_bytes());
    key
}

/// A request id: its creation time and 64 random bits, hex; unique without coordination between nodes.
fn new_id(created_ms: u64) -> String {
    use rand_core::RngCore;
    let mut random = [0u8; 8];
    rand_core::OsRng.fill_bytes(&mut random);
    let mut id = format!("{created_ms:012x}");
    for b in random {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// Works on one request: fetch its DAG (dialling its origins first), pin it, and record the outcome. A request
/// deleted meanwhile is left alone.
pub async fn process(node: Arc<Node>, pinning: Arc<Pinning>, id: String, timeout: Duration) {
    let blocking = |f: Box<dyn FnOnce() -> Result<Option<PinRequest>, PinningError> + Send>| async move {
        tokio::task::spawn_blocking(f).await.ok().and_then(Result::ok).flatten()
    };
    let p = pinning.clone();
    let i = id.clone();
    let Some(request) = blocking(Box::new(move || p.set_status(&i, PinState::Pinning, BTreeMap::new()))).await else {
        return;
    };
    let outcome = pin(&node, &request, timeout).await;
    let (status, info) = match outcome {
        Ok(()) => (PinState::Pinned, BTreeMap::new()),
        Err(e) => {
            tracing::info!(requestid = %id, cid = %request.cid, error = %e, "pin request failed");
            (PinState::Failed, BTreeMap::from([("reason".to_string(), e.to_string())]))
        }
    };
    let p = pinning.clone();
    let still_there = blocking(Box::new(move || p.get(&id))).await.is_some();
    if still_there {
        let p = pinning.clone();
        let id = request.requestid.clone();
        blocking(Box::new(move || p.set_status(&id, status, info))).await;
    }
}

async fn pin(node: &Arc<Node>, request: &PinRequest, timeout: Duration) -> Result<(), InstanceError> {
    let cid = Cid::try_from(request.cid.as_str())
        .map_err(|e| InstanceError::BadUpload(format!("{:?} is not a CID: {e}", request.cid)))?;
    for origin in &request.origins {
        let Ok(addr) = origin.parse::<xnode_p2p::Multiaddr>() else { continue };
        let peer = addr.iter().find_map(|p| match p {
            xnode_p2p::multiaddr::Protocol::P2p(peer) => Some(peer),
            _ => None,
        });
        if let Some(peer) = peer {
            if let Err(e) = node.net().dial(peer, vec![addr.clone()]).await {
                tracing::debug!(%origin, error = %e, "could not dial a pin request's origin");
            }
        }
    }
    node.fetch(cid, timeout).await?;
    let repo = node.repo().clone();
    let name = request.name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| request.cid.clone());
    tokio::task::spawn_blocking(move || repo.pin_complete(&cid, &name)).await.expect("pinning does not panic")?;
    node.provide(cid).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(limit: usize) -> PinFilter {
        PinFilter { limit, ..PinFilter::default() }
    }

    #[test]
    fn requests_are_listed_newest_first_with_filters_and_pages() {
        let tmp = tempfile::tempdir().unwrap();
        let p = Pinning::open(tmp.path()).unwrap();
        let mut ids = Vec::new();
        for i in 0..25 {
            let meta = BTreeMap::from([("batch".to_string(), (i % 2).to_string())]);
            let r = p.add(format!("cid{}", i % 5), Some(format!("File-{i}")), vec![], meta).unwrap();
            ids.push(r);
        }
        let unique: std::collections::HashSet<_> = ids.iter().map(|r| &r.requestid).collect();
        assert_eq!(unique.len(), 25, "request ids are unique");

        let (count, first) = p.list(&filter(10)).unwrap();
        assert_eq!(count, 25);
        assert_eq!(first[0].requestid, ids[24].requestid, "newest first");
        // Paging: the next page is before the last result's time.
        let mut seen = first.iter().map(|r| r.requestid.clone()).collect::<Vec<_>>();
        let mut before = first.last().unwrap().created_ms;
        loop {
            let (_, page) = p.list(&PinFilter { before_ms: Some(before), ..filter(10) }).unwrap();
            if page.is_empty() {
                break;
            }
            before = page.last().unwrap().created_ms;
            seen.extend(page.into_iter().map(|r| r.requestid));
        }
        let mut expected: Vec<_> = ids.iter().rev().map(|r| r.requestid.clone()).collect();
        assert_eq!(seen, expected);

        let by_cid = p.list(&PinFilter { cids: vec!["cid1".into(), "cid2".into()], ..filter(100) }).unwrap();
        assert_eq!(by_cid.0, 10);
        let by_meta =
            p.list(&PinFilter { meta: BTreeMap::from([("batch".into(), "1".into())]), ..filter(100) }).unwrap();
        assert_eq!(by_meta.0, 12);
        let exact = p.list(&PinFilter { name: Some("File-1".into()), ..filter(100) }).unwrap();
        assert_eq!(exact.0, 1);
        let ipartial =
            p.list(&PinFilter { name: Some("file-1".into()), text_match: TextMatch::Ipartial, ..filter(100) }).unwrap();
        assert_eq!(ipartial.0, 11, "File-1 and File-10..19");
        let after = p.list(&PinFilter { after_ms: Some(ids[19].created_ms), ..filter(100) }).unwrap();
        assert_eq!(after.0, 5);

        p.set_status(&ids[3].requestid, PinState::Pinned, BTreeMap::new()).unwrap();
        let pinned = p.list(&PinFilter { status: vec![PinState::Pinned], ..filter(100) }).unwrap();
        assert_eq!((pinned.0, pinned.1[0].requestid.as_str()), (1, ids[3].requestid.as_str()));
        assert_eq!(p.unfinished().unwrap().len(), 24);

        assert!(p.others_want("cid3", &ids[3].requestid).unwrap(), "cid3 is also asked for by request 8");
        p.remove(&ids[3].requestid).unwrap();
        assert!(p.get(&ids[3].requestid).unwrap().is_none());
        assert_eq!(p.list(&filter(100)).unwrap().0, 24);
        expected.retain(|id| *id != ids[3].requestid);
        drop(p);
        let reopened = Pinning::open(tmp.path()).unwrap();
        assert_eq!(
            reopened.list(&filter(100)).unwrap().1.iter().map(|r| r.requestid.clone()).collect::<Vec<_>>(),
            expected
        );
    }

    #[test]
    fn ten_thousand_requests_page_exactly() {
        let tmp = tempfile::tempdir().unwrap();
        let p = Pinning::open(tmp.path()).unwrap();
        let n = 10_000;
        for i in 0..n {
            p.add(format!("cid{i}"), None, vec![], BTreeMap::new()).unwrap();
        }
        let mut seen = std::collections::HashSet::new();
        let mut before = None;
        loop {
            let (count, page) = p.list(&PinFilter { before_ms: before, ..filter(1000) }).unwrap();
            assert_eq!(count as usize, n - seen.len());
            let Some(last) = page.last() else { break };
            before = Some(last.created_ms);
            for r in page {
                assert!(seen.insert(r.requestid), "a request on two pages");
            }
        }
        assert_eq!(seen.len(), n);
    }
}
