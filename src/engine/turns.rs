//! Turns for the decode passes that index files without timestamps.
//!
//! A daemon runs only a few passes at once ([`crate::engine::video::passes_at_once`]): each
//! uses every core and holds a decoder's pictures per frame thread. The others wait for a turn,
//! holding no thread. Who goes next is not simply who came first: an opening goes on after the
//! requests that started it gave up at their deadline (a labelling tool listing a folder of
//! camera files asks for each one's info and moves on), so the queue fills with openings nobody
//! waits for any more. A click on one of them must not wait behind all the others: an opening
//! somebody waits for now goes first, and first come, first served within each kind.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::engine::video::Progress;

/// Which waiting opening takes the next free turn: among `waiting` (each its place in the queue,
/// and whether a request waits for it now), the first that somebody waits for, else the first.
pub fn next_turn(waiting: &[(u64, bool)]) -> Option<u64> {
    waiting.iter().min_by_key(|&&(place, waited_for)| (!waited_for, place)).map(|&(place, _)| place)
}

/// The turns: `free` of them, and the openings waiting for one.
pub struct Turns {
    state: Mutex<State>,
    /// Wakes the openings waiting on the runtime ([`Turns::take`]) when a turn is freed or a
    /// wait given up.
    changed: tokio::sync::Notify,
    /// The same for a pass waiting on its own blocking thread ([`Turn::let_pass`]), which must
    /// not depend on the runtime: the daemon may be stopping it.
    changed_for_threads: Condvar,
}

struct State {
    free: usize,
    waiting: Vec<(u64, Arc<Progress>)>,
    next_place: u64,
}

/// How often a waiting opening looks again whether it goes next, besides when a turn is freed or
/// a wait is given up (which is when it can change).
const LOOK_AGAIN: Duration = Duration::from_millis(100);

impl Turns {
    pub fn new(at_once: usize) -> Arc<Turns> {
        Arc::new(Turns {
            state: Mutex::new(State { free: at_once.max(1), waiting: Vec::new(), next_place: 0 }),
            changed: tokio::sync::Notify::new(),
            changed_for_threads: Condvar::new(),
        })
    }

    /// Tell every waiting opening to look again.
    fn look_again(&self) {
        self.changed.notify_waiters();
        self.changed_for_threads.notify_all();
    }

    /// The turn, if one is free and the opening at `place` goes next; it leaves the queue then.
    fn turn_for(
        self: &Arc<Turns>,
        state: &mut MutexGuard<State>,
        place: u64,
        progress: &Arc<Progress>,
    ) -> Option<Turn> {
        let waiting: Vec<(u64, bool)> = state.waiting.iter().map(|(p, o)| (*p, o.waited_for())).collect();
        if state.free == 0 || next_turn(&waiting) != Some(place) {
            return None;
        }
        state.free -= 1;
        state.waiting.retain(|(p, _)| *p != place);
        Some(Turn { turns: self.clone(), place, progress: progress.clone(), checked: 0 })
    }

    /// Whether every turn is taken (an opening asking now waits).
    pub fn all_taken(&self) -> bool {
        self.state.lock().free == 0
    }

    /// Whether an opening somebody waits for is waiting for a turn.
    pub fn wanted_urgently(&self) -> bool {
        self.state.lock().waiting.iter().any(|(_, progress)| progress.waited_for())
    }

    /// Wait for a turn for the opening `progress` reports on; `None` if the opening is stopped
    /// meanwhile (the daemon is stopping). Dropping the future leaves the queue.
    pub async fn take(self: &Arc<Turns>, progress: &Arc<Progress>) -> Option<Turn> {
        let place = {
            let mut state = self.state.lock();
            let place = state.next_place;
            state.next_place += 1;
            place
        };
        self.take_at(place, progress).await
    }

    /// [`Turns::take`] at `place` in the queue.
    async fn take_at(self: &Arc<Turns>, place: u64, progress: &Arc<Progress>) -> Option<Turn> {
        self.state.lock().waiting.push((place, progress.clone()));
        let mut queued = Queued { turns: self, place: Some(place) };
        loop {
            if progress.stopped() {
                return None;
            }
            // Created before the look, so a turn freed meanwhile wakes it.
            let notified = self.changed.notified();
            if let Some(turn) = self.turn_for(&mut self.state.lock(), place, progress) {
                queued.place = None;
                return Some(turn);
            }
            let _ = tokio::time::timeout(LOOK_AGAIN, notified).await;
        }
    }

    /// [`Turns::take_at`] on a blocking thread (a pass taking its turn back keeps its place).
    fn take_back(self: &Arc<Turns>, place: u64, progress: &Arc<Progress>) -> Option<Turn> {
        let mut state = self.state.lock();
        state.waiting.push((place, progress.clone()));
        loop {
            if progress.stopped() {
                state.waiting.retain(|(p, _)| *p != place);
                drop(state);
                self.look_again();
                return None;
            }
            if let Some(turn) = self.turn_for(&mut state, place, progress) {
                return Some(turn);
            }
            self.changed_for_threads.wait_for(&mut state, LOOK_AGAIN);
        }
    }
}

/// An opening's place in the queue, given up if its wait is dropped.
struct Queued<'a> {
    turns: &'a Turns,
    place: Option<u64>,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if let Some(place) = self.place {
            self.turns.state.lock().waiting.retain(|(p, _)| *p != place);
            self.turns.look_again();
        }
    }
}

/// A turn, given back when dropped.
pub struct Turn {
    turns: Arc<Turns>,
    place: u64,
    progress: Arc<Progress>,
    /// Packets since the queue was last looked at ([`Turn::let_pass`]).
    checked: u32,
}

/// How many packets a pass decodes between two looks at the queue.
const LOOK_EVERY: u32 = 16;

impl Turn {
    /// Called by a decode pass between packets, on its blocking thread: while nobody waits for
    /// this opening (its requests gave up) and an opening somebody waits for waits for a turn,
    /// give the turn to it, and take it back (before the openings queued after this one) when it
    /// comes again. A click on a file of a folder being indexed then waits for no other pass.
    /// `None` if the opening is stopped meanwhile.
    pub fn let_pass(self) -> Option<Turn> {
        let mut this = self;
        this.checked += 1;
        if this.checked < LOOK_EVERY {
            return Some(this);
        }
        this.checked = 0;
        if this.progress.waited_for() || !this.turns.wanted_urgently() {
            return Some(this);
        }
        let (turns, place, progress) = (this.turns.clone(), this.place, this.progress.clone());
        tracing::debug!("a decode pass nobody waits for lets another go first");
        // Paused before the turn is given: whoever sees the other pass run sees this one paused.
        progress.set_paused(true);
        drop(this);
        let turn = turns.take_back(place, &progress);
        progress.set_paused(false);
        turn
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.turns.state.lock().free += 1;
        self.turns.look_again();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::schedule::Class;

    #[test]
    fn an_opening_somebody_waits_for_goes_first_else_first_come_first_served() {
        assert_eq!(next_turn(&[]), None);
        assert_eq!(next_turn(&[(3, false), (1, false), (2, false)]), Some(1));
        assert_eq!(next_turn(&[(1, false), (2, false), (4, true), (3, true)]), Some(3));
        assert_eq!(next_turn(&[(1, true), (2, true)]), Some(1));
    }

    #[tokio::test]
    async fn turns_are_taken_in_that_order_and_given_back() {
        let turns = Turns::new(1);
        let first = turns.take(&Arc::new(Progress::default())).await.unwrap();
        assert!(turns.all_taken());
        let (nobody, somebody) = (Arc::new(Progress::default()), Arc::new(Progress::default()));
        let _waits = somebody.waited_on(Class::Interactive);
        let order = Arc::new(Mutex::new(Vec::new()));
        let wait = |name: &'static str, progress: Arc<Progress>| {
            let (turns, order) = (turns.clone(), order.clone());
            tokio::spawn(async move {
                let _turn = turns.take(&progress).await;
                order.lock().push(name);
            })
        };
        let a = wait("nobody waits", nobody);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let b = wait("somebody waits", somebody.clone());
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(first);
        let (_, _) = (a.await, b.await);
        assert_eq!(*order.lock(), ["somebody waits", "nobody waits"]);
        assert!(!turns.all_taken());
        // A wait given up leaves the queue.
        let held = turns.take(&Arc::new(Progress::default())).await.unwrap();
        let gone = tokio::time::timeout(Duration::from_millis(20), turns.take(&Arc::new(Progress::default()))).await;
        assert!(gone.is_err());
        assert!(turns.state.lock().waiting.is_empty());
        // An opening stopped while it waits leaves the queue without a turn.
        let stopped = Arc::new(Progress::default());
        stopped.stop();
        assert!(turns.take(&stopped).await.is_none());
        assert!(turns.state.lock().waiting.is_empty());
        drop(held);
    }

    /// A pass nobody waits for gives its turn to an opening somebody waits for, on its own
    /// thread and without the runtime, and takes it back after; stopped while paused, it ends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pass_nobody_waits_for_lets_a_waited_for_opening_go_and_takes_its_turn_back() {
        let turns = Turns::new(1);
        let (pass, urgent) = (Arc::new(Progress::default()), Arc::new(Progress::default()));
        let turn = turns.take(&pass).await.unwrap();
        let _waits = urgent.waited_on(Class::Interactive);
        let taken = tokio::spawn({
            let (turns, urgent) = (turns.clone(), urgent.clone());
            async move { turns.take(&urgent).await }
        });
        while !turns.wanted_urgently() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let paused = std::thread::spawn({
            let pass = pass.clone();
            move || {
                let mut turn = Some(turn);
                for _ in 0..LOOK_EVERY {
                    turn = turn.and_then(Turn::let_pass);
                }
                (turn.is_some(), pass.paused())
            }
        });
        let urgent_turn = taken.await.unwrap().unwrap();
        assert!(pass.paused());
        drop(urgent_turn);
        assert_eq!(tokio::task::spawn_blocking(move || paused.join().unwrap()).await.unwrap(), (true, false));
        assert!(!turns.all_taken(), "the turn taken back was given back");

        // Stopped while it waits to take its turn back: no turn, out of the queue.
        let held = turns.take(&Arc::new(Progress::default())).await.unwrap();
        let waiting = std::thread::spawn({
            let (turns, pass) = (turns.clone(), pass.clone());
            move || turns.take_back(7, &pass).is_none()
        });
        while turns.state.lock().waiting.is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        pass.stop();
        assert!(tokio::task::spawn_blocking(move || waiting.join().unwrap()).await.unwrap());
        assert!(turns.state.lock().waiting.is_empty());
        drop(held);
    }
}
