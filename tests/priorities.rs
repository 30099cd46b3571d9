//! CPU priorities reach the threads that decode. In a binary of its own: it reads the nice value
//! of every decoder thread of the process, and other tests' daemons name theirs alike.

mod common;

use common::daemon::Daemon;
use common::*;
use framesrv::engine::schedule::Class;
use framesrv::proto::v1 as pb;

/// Nice values of this process's threads named `name` (decoder threads, and the codec threads
/// they started, which inherit the name up to FFmpeg 6.0) or named by FFmpeg (6.1 and later
/// name their frame threads `av:h264:df0`; the test's daemon runs one decoder).
fn nice_of_decoder_threads(name: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        let open = stat.find('(').unwrap();
        let close = stat.rfind(')').unwrap();
        let thread = &stat[open + 1..close];
        if thread == name || thread.starts_with("av:") {
            // Field 19 (nice), the 17th after the name.
            out.push(stat[close + 2..].split(' ').nth(16).unwrap().parse().unwrap());
        }
    }
    out
}

/// The tests of this binary one at a time: each reads the nice values of every thread of the
/// process, and one runs decode passes on every core while the other waits for a fill at the
/// lowest priority to settle (starved by the passes, it looked finished when it was not).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Lowering a nice value again needs root (or CAP_SYS_NICE); without it the daemon runs without
/// CPU priorities and there is nothing to see.
fn may_lower_nice() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_runs_at_the_speculative_priority_on_its_codec_threads_too() {
    if !cfg!(target_os = "linux") || !may_lower_nice() {
        eprintln!("skipped: CPU priorities need Linux and root (or CAP_SYS_NICE)");
        return;
    }
    let _alone = ONE_AT_A_TIME.lock().await;
    let dir = scratch();
    std::fs::create_dir_all(dir.path().join("media")).unwrap();
    // Two codec threads whatever the machine, opened by the click at the interactive priority.
    let d = Daemon::start(dir, |c| c.decoder.threads = 2).await;
    long_video(&d.media);
    let mut c = d.client().await;
    // A cold click: the fill behind it (frames 0..199 of the GOP) runs on the same decoder.
    let click = pb::FrameRequest {
        video: "long.mp4".into(),
        target: Some(pb::frame_request::Target::Index(200)),
        output: None,
        clamp: false,
        keep_behind: Some(200),
    };
    c.request_frame(click).await.unwrap();
    // The fill moved every thread of the decoder (its own and its two codec threads, started at
    // nice 0 by the click) to nice 19, where they stay once it is done: nothing else runs.
    d.settle().await;
    assert!(d.store.stats().frames_decoded >= 400, "the click decoded 0..=200, the fill 0..200 again");
    assert_eq!(nice_of_decoder_threads("fsrv-dec-0"), [19, 19, 19], "the decoder thread and its two codec threads");
    d.stop().await;
}

/// Nice values of every thread of this process.
fn nice_of_all_threads() -> Vec<i32> {
    nice_by_thread().into_values().collect()
}

/// A decode pass over a file without timestamps (the index of a raw `.h264`) runs as bulk work,
/// on its codec threads too, and leaves the blocking thread it ran on as it found it. Three such
/// files opened at once take turns: never more passes run than `passes_at_once`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_decode_passes_run_at_the_bulk_priority_and_take_turns() {
    if !cfg!(target_os = "linux") || !may_lower_nice() {
        eprintln!("skipped: CPU priorities need Linux and root (or CAP_SYS_NICE)");
        return;
    }
    let _alone = ONE_AT_A_TIME.lock().await;
    const BULK: i32 = 14;
    const FILES: usize = 3;
    let dir = scratch();
    std::fs::create_dir_all(dir.path().join("media")).unwrap();
    let d = Daemon::start(dir, |c| c.state_dir = "none".into()).await;
    let long = long_video(&d.media);
    for k in 0..FILES {
        raw_h264(&long, &d.media.join(format!("long-{k}.h264")));
    }
    let opens: Vec<_> = (0..FILES)
        .map(|k| {
            let store = d.store.clone();
            tokio::spawn(async move {
                store.open(&format!("long-{k}.h264"), Class::Bulk).await.map(|v| v.index.frame_count())
            })
        })
        .collect();
    let mut most = 0;
    while opens.iter().any(|o| !o.is_finished()) {
        most = most.max(nice_of_all_threads().iter().filter(|&&n| n == BULK).count());
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    for o in opens {
        assert_eq!(o.await.unwrap().unwrap(), 900);
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    // A pass's own thread, and its codec threads where it has more than one.
    let per_pass = if threads > 1 { 1 + threads } else { 1 };
    let at_once = framesrv::engine::video::passes_at_once().min(FILES);
    assert!(most >= per_pass, "{most} threads at nice {BULK} during the passes, {per_pass} expected at least");
    assert!(most <= at_once * per_pass, "{most} threads at nice {BULK}: more than {at_once} passes at once");
    assert!(!nice_of_all_threads().contains(&BULK), "a thread stayed at the bulk priority after the passes");
}

/// Thread ids of this process and their nice values.
fn nice_by_thread() -> std::collections::HashMap<i32, i32> {
    let mut out = std::collections::HashMap::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        let close = stat.rfind(')').unwrap();
        let tid = task.file_name().to_str().unwrap().parse().unwrap();
        out.insert(tid, stat[close + 2..].split(' ').nth(16).unwrap().parse().unwrap());
    }
    out
}

/// A decode pass runs at the priority of the most urgent request waiting for it, on its codec
/// threads too: a click on a file being indexed waits for nothing but the pass, which at the
/// bulk priority streams of other files would starve. When the click gives up, the pass is
/// bulk work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decode_pass_runs_at_the_priority_of_the_most_urgent_request_waiting_for_it() {
    if !cfg!(target_os = "linux") || !may_lower_nice() {
        eprintln!("skipped: CPU priorities need Linux and root (or CAP_SYS_NICE)");
        return;
    }
    let _alone = ONE_AT_A_TIME.lock().await;
    const BULK: i32 = 14;
    let dir = scratch();
    std::fs::create_dir_all(dir.path().join("media")).unwrap();
    let d = Daemon::start(dir, |c| c.state_dir = "none".into()).await;
    raw_camera(&d.media.join("camera.h264"), "1280x720", 40, 250);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    let per_pass = if threads > 1 { 1 + threads } else { 1 };
    let at = |nice: i32| -> Vec<i32> {
        let mut t: Vec<i32> = nice_by_thread().into_iter().filter(|&(_, n)| n == nice).map(|(t, _)| t).collect();
        t.sort();
        t
    };
    // A hash job waits for the index: the pass is bulk work.
    let store = d.store.clone();
    let bulk = tokio::spawn(async move { store.open("camera.h264", Class::Bulk).await.map(|v| v.index.frame_count()) });
    until("the pass at the bulk priority", || at(BULK).len() >= per_pass).await;
    let pass = at(BULK);
    // A click waits as well: the pass, with its codec threads, runs at the click's priority.
    let store = d.store.clone();
    let click = tokio::spawn(async move { store.open("camera.h264", Class::Interactive).await.map(|_| ()) });
    until("the pass at the interactive priority", || at(BULK).is_empty()).await;
    let now = nice_by_thread();
    assert!(pass.iter().all(|t| now.get(t).is_none_or(|&n| n == 0)), "{pass:?} at {now:?}");
    // The click gives up: bulk work again, on the same threads.
    click.abort();
    until("the pass back at the bulk priority", || at(BULK) == pass).await;
    assert!(!bulk.is_finished(), "the pass ended before the test was over: it proves nothing");
    assert_eq!(bulk.await.unwrap().unwrap(), 40 * 30);
    assert!(!nice_by_thread().values().any(|&n| n == BULK), "a thread stayed at the bulk priority after the pass");
    d.stop().await;
}

/// Wait until `ok`, for 30 s at most.
async fn until(what: &str, ok: impl Fn() -> bool) {
    let started = std::time::Instant::now();
    while !ok() {
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "{what}: not within 30 s");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}
