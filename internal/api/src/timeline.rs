//! The dashboard's event timeline: joins, deaths, leaves, restarts, resizes, repairs started and finished, uploads
//! and removals, as this node sees them.
//!
//! One task looks at the node's views every second and records what changed between two looks ([`changes`], pure
//! and tested without a node); it owns nothing but a short ring of events. Names, not peer ids.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use xnode_gossip::MemberState;
use xnode_instance::Node;

/// How many events the timeline keeps.
const KEPT: usize = 200;

/// How often the task looks.
const EVERY: Duration = Duration::from_secs(1);

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Joined,
    Restarted,
    Died,
    Left,
    Resized,
    RepairStarted,
    RepairFinished,
    Uploaded,
    Removed,
}

impl Kind {
    /// The CSS class and `data-kind` of the event.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Joined => "joined",
            Kind::Restarted => "restarted",
            Kind::Died => "died",
            Kind::Left => "left",
            Kind::Resized => "resized",
            Kind::RepairStarted => "repair-started",
            Kind::RepairFinished => "repair-finished",
            Kind::Uploaded => "uploaded",
            Kind::Removed => "removed",
        }
    }
}

/// One event of the timeline.
#[derive(Clone, Debug)]
pub(crate) struct Event {
    /// When it was seen, milliseconds since the Unix epoch.
    pub(crate) at_ms: u64,
    pub(crate) kind: Kind,
    /// What a person reads.
    pub(crate) text: String,
}

/// A member as the timeline compares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MemberLook {
    pub(crate) state: MemberState,
    pub(crate) generation: u64,
    pub(crate) capacity: u64,
}

/// A catalog file as the timeline compares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FileLook {
    pub(crate) name: String,
    pub(crate) size: u64,
    pub(crate) added_by: String,
    /// Blocks below the replication factor or missing, as the last health sweep counted them (None: not swept yet).
    pub(crate) short: Option<u64>,
}

/// What the node saw at one look.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Look {
    pub(crate) members: BTreeMap<String, MemberLook>,
    pub(crate) files: BTreeMap<String, FileLook>,
}

/// The events between two looks, in a stable order (members first, then files).
pub(crate) fn changes(before: &Look, after: &Look) -> Vec<(Kind, String)> {
    let mut out = Vec::new();
    for (name, now) in &after.members {
        match before.members.get(name) {
            None if now.state == MemberState::Alive => out.push((Kind::Joined, format!("{name} joined"))),
            None => {}
            Some(was) => {
                if was.state != now.state {
                    out.push(match now.state {
                        MemberState::Alive => (Kind::Joined, format!("{name} is back")),
                        MemberState::Dead => (Kind::Died, format!("{name} died (stopped heartbeating)")),
                        MemberState::Left => (Kind::Left, format!("{name} left the cluster")),
                    });
                } else if now.state == MemberState::Alive && was.generation != now.generation {
                    out.push((Kind::Restarted, format!("{name} restarted")));
                }
                if now.state == MemberState::Alive && was.capacity != now.capacity && was.generation == now.generation {
                    out.push((
                        Kind::Resized,
                        format!(
                            "{name} resized from {} to {}",
                            crate::ui::human(was.capacity),
                            crate::ui::human(now.capacity)
                        ),
                    ));
                }
            }
        }
    }
    let gone: BTreeSet<&String> = before.members.keys().filter(|n| !after.members.contains_key(*n)).collect();
    for name in gone {
        out.push((Kind::Left, format!("{name} forgotten")));
    }
    for (root, now) in &after.files {
        match before.files.get(root) {
            None => out.push((
                Kind::Uploaded,
                format!("{} added {} ({})", now.added_by, now.name, crate::ui::human(now.size)),
            )),
            Some(was) => match (was.short, now.short) {
                (Some(0), Some(n)) if n > 0 => out.push((
                    Kind::RepairStarted,
                    format!("repair of {} started: {n} blocks below the replication factor", now.name),
                )),
                (Some(n), Some(0)) if n > 0 => {
                    out.push((Kind::RepairFinished, format!("repair of {} finished: every block at RF", now.name)))
                }
                _ => {}
            },
        }
    }
    for (root, was) in &before.files {
        if !after.files.contains_key(root) {
            out.push((Kind::Removed, format!("{} removed", was.name)));
        }
    }
    out
}

/// The ring of recent events.
#[derive(Debug, Default)]
pub(crate) struct Timeline {
    events: Mutex<VecDeque<Event>>,
}

impl Timeline {
    /// Starts looking at `node` every second until `stop`.
    pub(crate) fn start(node: Arc<Node>, stop: CancellationToken) -> Arc<Timeline> {
        let timeline = Arc::new(Timeline::default());
        tokio::spawn(watch(node, timeline.clone(), stop));
        timeline
    }

    /// The events kept, oldest first.
    pub(crate) fn events(&self) -> Vec<Event> {
        self.events.lock().expect("not poisoned").iter().cloned().collect()
    }

    fn record(&self, kind: Kind, text: String) {
        let at_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let mut events = self.events.lock().expect("not poisoned");
        if events.len() == KEPT {
            events.pop_front();
        }
        events.push_back(Event { at_ms, kind, text });
    }
}

fn look(node: &Node) -> Look {
    let members = node
        .members()
        .into_iter()
        .map(|m| (m.name, MemberLook { state: m.state, generation: m.generation, capacity: m.meta.capacity }))
        .collect();
    let health: BTreeMap<String, u64> =
        node.files_health().iter().map(|h| (h.root.clone(), h.under_replicated + h.missing)).collect();
    let files = node
        .catalog_files()
        .into_iter()
        .map(|f| {
            let root = f.root.to_string();
            let short = health.get(&root).copied();
            (root, FileLook { name: f.name, size: f.size, added_by: f.added_by, short })
        })
        .collect();
    Look { members, files }
}

/// What a look is made of, compared by identity: the membership view and the health report are replaced (new
/// `Arc`s) when they change, and the catalog counts its changes. While these stay the same, a second costs nothing.
type Sources = (Arc<Vec<xnode_gossip::Member>>, Arc<Vec<xnode_instance::FileHealth>>, u64);

fn sources(node: &Node) -> Sources {
    (node.view(), node.files_health(), *node.catalog_changes().borrow())
}

fn same(a: &Sources, b: &Sources) -> bool {
    Arc::ptr_eq(&a.0, &b.0) && Arc::ptr_eq(&a.1, &b.1) && a.2 == b.2
}

async fn watch(node: Arc<Node>, timeline: Arc<Timeline>, stop: CancellationToken) {
    let mut before: Option<Look> = None;
    let mut seen = None;
    // New health wakes the task at once: a repair can start and end within a second, between two looks.
    let mut health = node.health_changes();
    loop {
        let now_sources = sources(&node);
        if seen.as_ref().is_some_and(|s| same(s, &now_sources)) {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(EVERY) => {}
                Ok(()) = health.changed() => {}
            }
            continue;
        }
        seen = Some(now_sources);
        let now = look(&node);
        match &before {
            // The first look is the starting point: what was there before this node started is not news.
            None => timeline.record(Kind::Joined, format!("{} started; watching the cluster", node.name())),
            Some(before) => {
                for (kind, text) in changes(before, &now) {
                    timeline.record(kind, text);
                }
            }
        }
        before = Some(now);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
            Ok(()) = health.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(state: MemberState, generation: u64, capacity: u64) -> MemberLook {
        MemberLook { state, generation, capacity }
    }

    fn file(name: &str, short: Option<u64>) -> FileLook {
        FileLook { name: name.into(), size: 1 << 20, added_by: "a".into(), short }
    }

    fn kinds(events: &[(Kind, String)]) -> Vec<Kind> {
        events.iter().map(|(k, _)| *k).collect()
    }

    #[test]
    fn membership_changes_are_named_events() {
        let mut before = Look::default();
        before.members.insert("a".into(), member(MemberState::Alive, 1, 10 << 20));
        before.members.insert("b".into(), member(MemberState::Alive, 1, 10 << 20));
        before.members.insert("c".into(), member(MemberState::Alive, 1, 10 << 20));
        let mut after = before.clone();
        after.members.insert("b".into(), member(MemberState::Dead, 1, 10 << 20));
        after.members.insert("c".into(), member(MemberState::Left, 1, 10 << 20));
        after.members.insert("d".into(), member(MemberState::Alive, 5, 10 << 20));
        after.members.insert("a".into(), member(MemberState::Alive, 1, 2 << 20));
        let events = changes(&before, &after);
        assert_eq!(kinds(&events), vec![Kind::Resized, Kind::Died, Kind::Left, Kind::Joined]);
        assert_eq!(events[0].1, "a resized from 10.0 MiB to 2.0 MiB");
        assert!(events[1].1.starts_with("b died"), "{}", events[1].1);
        assert_eq!(events[3].1, "d joined");
        // A restart is not a resize, even if the capacity it reports changed with it.
        let mut restarted = after.clone();
        restarted.members.insert("a".into(), member(MemberState::Alive, 2, 4 << 20));
        assert_eq!(kinds(&changes(&after, &restarted)), vec![Kind::Restarted]);
        assert!(changes(&after, &after).is_empty(), "nothing changed, nothing said");
    }

    #[test]
    fn files_report_uploads_removals_and_repairs() {
        let mut before = Look::default();
        before.files.insert("r1".into(), file("one.bin", Some(0)));
        before.files.insert("r2".into(), file("two.bin", Some(3)));
        let mut after = before.clone();
        after.files.insert("r1".into(), file("one.bin", Some(4)));
        after.files.insert("r2".into(), file("two.bin", Some(0)));
        after.files.insert("r3".into(), file("three.bin", None));
        let events = changes(&before, &after);
        assert_eq!(kinds(&events), vec![Kind::RepairStarted, Kind::RepairFinished, Kind::Uploaded]);
        assert_eq!(events[0].1, "repair of one.bin started: 4 blocks below the replication factor");
        assert_eq!(events[2].1, "a added three.bin (1.0 MiB)");
        let mut removed = after.clone();
        removed.files.remove("r3");
        assert_eq!(changes(&after, &removed), vec![(Kind::Removed, "three.bin removed".to_string())]);
    }
}
