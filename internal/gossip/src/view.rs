//! The membership rules, without I/O: from what gossip knows about every node incarnation to one [`Member`]
//! per name, the events between two views, and the duplicate-name check.
//!
//! Gossip knows *incarnations*: a name, a generation (start time) and an address. People and the rest of the
//! node think in *names*. Folding incarnations into names is where restart, leave and duplicates are decided:
//! - a node that announced `left` is [`MemberState::Left`] whether or not it still heartbeats;
//! - of several incarnations of one name, the newest live one wins, so a restarted node replaces its old self
//!   at once and the old incarnation never shows as a dead ghost;
//! - an incarnation that a live older one has flagged as an impostor (see [`Conflict`]) never wins.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::meta::{MemberMeta, CONFLICT_KEY, STATE_KEY, STATE_LEFT};

/// Whether a member is usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MemberState {
    /// Heartbeats arrive as expected.
    Alive,
    /// Heartbeats stopped without a goodbye: crashed, killed or cut off.
    Dead,
    /// The node announced that it leaves (graceful shutdown). Never reported as dead.
    Left,
}

/// One member of the cluster as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The node's unique name (`XNODE_NAME`).
    pub name: String,
    /// Alive, dead or left.
    pub state: MemberState,
    /// What the node last said about itself.
    pub meta: MemberMeta,
    /// The incarnation: the node's start time in milliseconds since the Unix epoch. A restart raises it.
    pub generation: u64,
    /// Where the node gossips.
    pub gossip_addr: SocketAddr,
    /// Whether this member is the local node.
    pub is_self: bool,
}

/// A change in the membership view, as seen by this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipEvent {
    /// A name became alive: a new node, or one that was dead or left and came back.
    Joined(Member),
    /// A new incarnation of a name replaced the previous one (the node restarted).
    Restarted(Member),
    /// A member's metadata changed.
    Updated(Member),
    /// A member announced that it leaves.
    Left(Member),
    /// A member stopped heartbeating without leaving.
    Dead(Member),
    /// A dead or left member was forgotten after the grace period.
    Removed {
        /// The name that is gone.
        name: String,
    },
    /// Two live nodes use one name. On the newer node this comes with [`crate::GossipError::DuplicateName`]
    /// and the node withdraws; on the older node it is a warning and nothing else changes.
    NameConflict {
        /// The contested name (ours).
        name: String,
        /// Gossip address of the other node.
        other_addr: SocketAddr,
        /// Whether this node is the newer one, the one that gives way.
        we_withdraw: bool,
    },
}

/// What gossip knows about one incarnation.
#[derive(Debug, Clone)]
pub(crate) struct Incarnation {
    pub(crate) name: String,
    pub(crate) generation: u64,
    pub(crate) addr: SocketAddr,
    /// The failure detector's verdict (always true for ourselves).
    pub(crate) live: bool,
    pub(crate) kv: BTreeMap<String, String>,
}

impl Incarnation {
    fn has_left(&self) -> bool {
        self.kv.get(STATE_KEY).map(String::as_str) == Some(STATE_LEFT)
    }

    /// The generation this incarnation flagged as an impostor of its name, if any.
    fn flagged(&self) -> Option<u64> {
        self.kv.get(CONFLICT_KEY).and_then(|v| v.parse().ok())
    }

    fn state(&self) -> MemberState {
        if self.has_left() {
            MemberState::Left
        } else if self.live {
            MemberState::Alive
        } else {
            MemberState::Dead
        }
    }
}

/// The outcome of the duplicate-name check for the local node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Conflict {
    /// A newer live incarnation uses our name: we keep it, and flag the newcomer so that it learns, from a
    /// value that only a live node could have written after it started, that it is a duplicate.
    FlagNewer { generation: u64, addr: SocketAddr },
    /// An older incarnation of our name flagged *us*: it is alive, we are the duplicate and must withdraw.
    WeAreDuplicate { addr: SocketAddr },
}

/// Folds incarnations into one member per name (sorted by name), from the point of view of `self_name` at
/// `self_generation`.
pub(crate) fn members(incarnations: &[Incarnation], self_name: &str, self_generation: u64) -> Vec<Member> {
    let mut by_name: BTreeMap<&str, Vec<&Incarnation>> = BTreeMap::new();
    // A name outside the documented set never becomes a member (it could not be shown or addressed safely).
    for inc in incarnations.iter().filter(|i| crate::valid_name(&i.name) || i.name == self_name) {
        by_name.entry(&inc.name).or_default().push(inc);
    }
    by_name
        .into_iter()
        .filter_map(|(name, incs)| {
            let chosen = if name == self_name {
                // We are the authority on our own name.
                incs.iter().find(|i| i.generation == self_generation).copied()
            } else {
                pick(&incs)
            }?;
            Some(Member {
                name: name.to_string(),
                state: chosen.state(),
                meta: MemberMeta::from_key_values(&chosen.kv),
                generation: chosen.generation,
                gossip_addr: chosen.addr,
                is_self: name == self_name,
            })
        })
        .collect()
}

/// Picks the incarnation that stands for a name: the newest live one that has not left and that no live older
/// incarnation flagged as an impostor; failing that, the newest one.
fn pick<'a>(incs: &[&'a Incarnation]) -> Option<&'a Incarnation> {
    let flagged: Vec<u64> = incs.iter().filter(|i| i.live && !i.has_left()).filter_map(|i| i.flagged()).collect();
    let eligible = |i: &&&Incarnation| !flagged.contains(&i.generation);
    incs.iter()
        .filter(eligible)
        .filter(|i| i.live && !i.has_left())
        .max_by_key(|i| i.generation)
        .or_else(|| incs.iter().filter(eligible).max_by_key(|i| i.generation))
        .or_else(|| incs.iter().max_by_key(|i| i.generation))
        .copied()
}

/// The duplicate-name check for the local incarnation.
///
/// A restarted node must not be mistaken for a duplicate: its old incarnation may still look alive for a few
/// seconds after a `kill -9`, and stale heartbeats can keep arriving. So liveness alone decides nothing here.
/// Only a node that is really running can *react* to a newer incarnation of its name, so the older node writes
/// the newcomer's generation into its own state, and the newcomer treats that value (which could not exist
/// before it started) as proof that the older node is alive.
pub(crate) fn check_conflict(incarnations: &[Incarnation], self_name: &str, self_generation: u64) -> Option<Conflict> {
    let others = incarnations.iter().filter(|i| i.name == self_name && i.generation != self_generation);
    let mut flag_newer = None;
    for other in others {
        if other.generation < self_generation && other.flagged() == Some(self_generation) {
            return Some(Conflict::WeAreDuplicate { addr: other.addr });
        }
        if other.generation > self_generation && other.live && !other.has_left() {
            flag_newer = Some(Conflict::FlagNewer { generation: other.generation, addr: other.addr });
        }
    }
    flag_newer
}

/// The events that turn view `before` into view `after`. Members first seen dead or left raise nothing: a new
/// node learning old news is no alarm.
pub(crate) fn diff(before: &[Member], after: &[Member]) -> Vec<MembershipEvent> {
    let old: HashMap<&str, &Member> = before.iter().map(|m| (m.name.as_str(), m)).collect();
    let mut events = Vec::new();
    for m in after {
        let by_state = |m: &Member| match m.state {
            MemberState::Alive => MembershipEvent::Joined(m.clone()),
            MemberState::Dead => MembershipEvent::Dead(m.clone()),
            MemberState::Left => MembershipEvent::Left(m.clone()),
        };
        match old.get(m.name.as_str()) {
            None if m.state == MemberState::Alive => events.push(MembershipEvent::Joined(m.clone())),
            None => {}
            Some(prev) if prev.generation != m.generation => {
                if m.state == MemberState::Alive {
                    events.push(MembershipEvent::Restarted(m.clone()));
                } else if prev.state != m.state {
                    events.push(by_state(m));
                }
            }
            Some(prev) if prev.state != m.state => events.push(by_state(m)),
            Some(prev) if prev.meta != m.meta => events.push(MembershipEvent::Updated(m.clone())),
            Some(_) => {}
        }
    }
    let names: std::collections::HashSet<&str> = after.iter().map(|m| m.name.as_str()).collect();
    for m in before {
        if !names.contains(m.name.as_str()) {
            events.push(MembershipEvent::Removed { name: m.name.clone() });
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::STATE_ALIVE;

    fn inc(name: &str, generation: u64, live: bool) -> Incarnation {
        let mut kv = BTreeMap::new();
        kv.insert(STATE_KEY.to_string(), STATE_ALIVE.to_string());
        Incarnation {
            name: name.into(),
            generation,
            addr: SocketAddr::from(([127, 0, 0, 1], 1000 + generation as u16)),
            live,
            kv,
        }
    }

    fn with(mut i: Incarnation, k: &str, v: &str) -> Incarnation {
        i.kv.insert(k.into(), v.into());
        i
    }

    #[test]
    fn names_outside_the_character_set_never_become_members() {
        let hostile = ["x/../../../api/v1/shutdown?", "<img src=x>", "", "..", "a b", &"n".repeat(64)];
        let mut incs = vec![inc("me", 1, true), inc("ok-2.b_c", 2, true)];
        incs.extend(hostile.iter().enumerate().map(|(i, n)| inc(n, 10 + i as u64, true)));
        let names: Vec<String> = members(&incs, "me", 1).into_iter().map(|m| m.name).collect();
        assert_eq!(names, ["me", "ok-2.b_c"]);
    }

    #[test]
    fn left_wins_over_dead() {
        let view = members(&[inc("me", 1, true), with(inc("b", 2, false), STATE_KEY, STATE_LEFT)], "me", 1);
        assert_eq!(view[0].name, "b");
        assert_eq!(view[0].state, MemberState::Left);
        assert_eq!(view[1].state, MemberState::Alive);
        assert!(view[1].is_self);
    }

    #[test]
    fn restart_replaces_the_old_incarnation_even_while_it_still_looks_alive() {
        for old_live in [true, false] {
            let view = members(&[inc("me", 1, true), inc("b", 2, old_live), inc("b", 5, true)], "me", 1);
            assert_eq!(view.len(), 2);
            assert_eq!(view[0].generation, 5);
            assert_eq!(view[0].state, MemberState::Alive);
        }
    }

    #[test]
    fn a_dead_restart_does_not_hide_a_live_older_incarnation() {
        let view = members(&[inc("me", 1, true), inc("b", 2, true), inc("b", 5, false)], "me", 1);
        assert_eq!((view[0].generation, view[0].state), (2, MemberState::Alive));
    }

    #[test]
    fn a_flagged_impostor_never_stands_for_the_name() {
        let old = with(inc("b", 2, true), CONFLICT_KEY, "5");
        let view = members(&[inc("me", 1, true), old, inc("b", 5, true)], "me", 1);
        assert_eq!(view[0].generation, 2);
    }

    #[test]
    fn conflict_older_node_flags_a_live_newer_one() {
        let incs = [inc("me", 1, true), inc("me", 5, true)];
        assert!(matches!(check_conflict(&incs, "me", 1), Some(Conflict::FlagNewer { generation: 5, .. })));
        // The newer one sees nothing until the flag arrives: a merely live-looking old self is a restart.
        assert_eq!(check_conflict(&incs, "me", 5), None);
    }

    #[test]
    fn conflict_newer_node_withdraws_when_flagged() {
        let incs = [with(inc("me", 1, true), CONFLICT_KEY, "5"), inc("me", 5, true)];
        assert!(matches!(check_conflict(&incs, "me", 5), Some(Conflict::WeAreDuplicate { .. })));
        // A flag naming another generation (an earlier duplicate) says nothing about us.
        let incs = [with(inc("me", 1, true), CONFLICT_KEY, "3"), inc("me", 5, true)];
        assert_eq!(check_conflict(&incs, "me", 5), None);
    }

    #[test]
    fn conflict_ignores_dead_or_left_newer_incarnations() {
        let left = with(inc("me", 5, true), STATE_KEY, STATE_LEFT);
        assert_eq!(check_conflict(&[inc("me", 1, true), left], "me", 1), None);
        assert_eq!(check_conflict(&[inc("me", 1, true), inc("me", 5, false)], "me", 1), None);
    }

    #[test]
    fn diff_reports_each_transition_once() {
        let m = |state, generation| {
            let mut x = members(&[inc("a", generation, true)], "zz", 0).remove(0);
            x.state = state;
            x
        };
        use MemberState::*;
        assert!(matches!(diff(&[], &[m(Alive, 1)])[..], [MembershipEvent::Joined(_)]));
        assert!(diff(&[], &[m(Dead, 1)]).is_empty());
        assert!(matches!(diff(&[m(Alive, 1)], &[m(Dead, 1)])[..], [MembershipEvent::Dead(_)]));
        assert!(matches!(diff(&[m(Alive, 1)], &[m(Left, 1)])[..], [MembershipEvent::Left(_)]));
        assert!(matches!(diff(&[m(Dead, 1)], &[m(Alive, 1)])[..], [MembershipEvent::Joined(_)]));
        assert!(matches!(diff(&[m(Alive, 1)], &[m(Alive, 2)])[..], [MembershipEvent::Restarted(_)]));
        assert!(matches!(diff(&[m(Dead, 1)], &[])[..], [MembershipEvent::Removed { .. }]));
        assert!(diff(&[m(Alive, 1)], &[m(Alive, 1)]).is_empty());
        let mut changed = m(Alive, 1);
        changed.meta.used = 7;
        assert!(matches!(diff(&[m(Alive, 1)], &[changed])[..], [MembershipEvent::Updated(_)]));
    }
}
