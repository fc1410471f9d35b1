//! Worker threads kept between calls, for the parallel loops of the engine and the products.
//!
//! A thread started per call costs more than a small sequence's whole share of the work: the
//! spawn itself, and on a virtual machine waking the idle CPU it lands on (tens of
//! microseconds each). The workers here start on first use and live for the process. After a
//! job a worker spins for [`SPIN`] before it sleeps, so the next call, or the next parallel
//! phase of the same call, finds it awake; while it sleeps it costs nothing.
//!
//! One caller at a time uses the workers. A second caller that arrives meanwhile (another user
//! thread, or a job that itself runs something in parallel) starts scoped threads of its own
//! instead, so nothing ever waits for the workers.
//!
//! When the system refuses a thread, nothing panics: jobs that do not wait for each other run
//! one after another on the calling thread ([`run`], [`map`]); jobs that do are not started at
//! all ([`map_together`] says so), and the engine runs that loop on one thread instead.

use std::any::Any;
use std::cell::UnsafeCell;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, TryLockError};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crate::cpu::{Backend, active_backend, with_backend};

/// How long an idle worker keeps checking for a new job before it sleeps.
const SPIN: Duration = Duration::from_micros(200);

/// The threads a call asking for `requested` uses: at most the machine's available
/// parallelism (threads beyond it only wait for each other, at barriers that spin, and each
/// would be a worker kept for the life of the process), or [`UNKNOWN_PARALLELISM`] where the
/// system does not say; at least 1.
pub(crate) fn usable_threads(requested: usize) -> usize {
    static AVAILABLE: OnceLock<usize> = OnceLock::new();
    let available = *AVAILABLE.get_or_init(|| {
        std::thread::available_parallelism().map_or(UNKNOWN_PARALLELISM, usize::from)
    });
    requested.clamp(1, available)
}

/// The most threads a call uses where the system does not say how many can run at once.
const UNKNOWN_PARALLELISM: usize = 64;

/// Runs `job(0)`, …, `job(jobs − 1)`, at the same time where it can: `job(0)` on the calling
/// thread, the others on workers. When the system refuses a thread, the jobs run one after
/// another on the calling thread instead, so they must not wait for each other (see
/// [`map_together`] for jobs that do). Returns once every job has returned. Each job runs
/// under the caller's kernel backend. A panic in any job is raised again here, after all have
/// finished.
pub(crate) fn run(jobs: usize, job: &(dyn Fn(usize) + Sync)) {
    if launch(jobs, job).is_err() {
        (0..jobs).for_each(job);
    }
}

/// Runs `worker` on every job through [`run`] (so the jobs must not wait for each other);
/// returns the results in the jobs' order.
pub(crate) fn map<J: Send, R: Send>(
    jobs: impl IntoIterator<Item = J>,
    worker: impl Fn(J) -> R + Sync,
) -> Vec<R> {
    let all = |jobs: usize, job: &(dyn Fn(usize) + Sync)| {
        run(jobs, job);
        Ok(())
    };
    collect(jobs, worker, all).unwrap_or_default()
}

/// Like [`map`] for jobs that wait for each other (at a barrier, say), which therefore need a
/// thread each: `None`, and no job run, when the system refuses a thread.
pub(crate) fn map_together<J: Send, R: Send>(
    jobs: impl IntoIterator<Item = J>,
    worker: impl Fn(J) -> R + Sync,
) -> Option<Vec<R>> {
    collect(jobs, worker, launch)
}

/// `worker` on every job through `runner`; the results in the jobs' order, or `None` when
/// `runner` ran no job.
fn collect<J: Send, R: Send>(
    jobs: impl IntoIterator<Item = J>,
    worker: impl Fn(J) -> R + Sync,
    runner: impl FnOnce(usize, &(dyn Fn(usize) + Sync)) -> Result<(), NoThreads>,
) -> Option<Vec<R>> {
    let jobs: Vec<Mutex<Option<J>>> = jobs.into_iter().map(|j| Mutex::new(Some(j))).collect();
    let results: Vec<Mutex<Option<R>>> = jobs.iter().map(|_| Mutex::new(None)).collect();
    runner(jobs.len(), &|k| {
        if let Some(j) = lock(&jobs[k]).take() {
            let r = worker(j);
            *lock(&results[k]) = Some(r);
        }
    })
    .ok()?;
    let results = results.into_iter().map(|r| {
        r.into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .expect("every job ran")
    });
    Some(results.collect())
}

/// Why jobs could not run side by side: the system refused to start a thread.
#[derive(Debug)]
pub(crate) struct NoThreads;

/// Runs the jobs at the same time, on the workers or, while another caller holds them, on
/// threads of this call; `Err` when a thread cannot be started, and then no job has run.
fn launch(jobs: usize, job: &(dyn Fn(usize) + Sync)) -> Result<(), NoThreads> {
    if jobs <= 1 {
        (0..jobs).for_each(job);
        return Ok(());
    }
    let backend = active_backend();
    let workers = match POOL.get_or_init(Pool::default).dispatch.try_lock() {
        Ok(workers) => Some(workers),
        // A job panicked during an earlier call; the workers themselves are sound.
        Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    };
    match workers {
        Some(mut workers) => dispatch(&mut workers, backend, jobs, job),
        None => scoped(backend, jobs, job),
    }
}

/// [`launch`] on threads started for this call. They wait at a gate until all have started,
/// so that a refused thread leaves every job unrun.
fn scoped(backend: Backend, jobs: usize, job: &(dyn Fn(usize) + Sync)) -> Result<(), NoThreads> {
    const WAIT: u8 = 0;
    const GO: u8 = 1;
    const GIVE_UP: u8 = 2;
    let gate = AtomicU8::new(WAIT);
    let gate = &gate;
    std::thread::scope(|scope| {
        for k in 1..jobs {
            let started = spawn_allowed()
                .and_then(|()| {
                    std::thread::Builder::new().spawn_scoped(scope, move || {
                        spin_until(
                            || gate.load(Ordering::Acquire) != WAIT,
                            64,
                            std::thread::yield_now,
                        );
                        if gate.load(Ordering::Acquire) == GO {
                            under(backend, || job(k));
                        }
                    })
                })
                .is_ok();
            if !started {
                gate.store(GIVE_UP, Ordering::Release);
                return Err(NoThreads);
            }
        }
        gate.store(GO, Ordering::Release);
        job(0);
        Ok(())
    })
}

/// `f` under `backend`, which the caller already runs on, so it is available.
fn under(backend: Backend, f: impl FnOnce()) {
    with_backend(backend, f).unwrap_or_default()
}

#[cfg(test)]
thread_local! {
    /// Tests: thread starts requested from this thread fail, as when the system refuses them.
    static REFUSE_THREADS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread may start a thread (always, outside the tests of refused threads).
fn spawn_allowed() -> std::io::Result<()> {
    #[cfg(test)]
    if REFUSE_THREADS.with(|r| r.get()) {
        return Err(std::io::Error::other("thread start refused (test)"));
    }
    Ok(())
}

/// `m` locked; a panic of another holder does not matter to the plain data kept here.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

static POOL: OnceLock<Pool> = OnceLock::new();

#[derive(Default)]
struct Pool {
    /// The workers, held by the one caller dispatching to them.
    dispatch: Mutex<Vec<Arc<Worker>>>,
}

/// What one worker is handed: a job index of a call's jobs.
#[derive(Clone, Copy)]
struct Task {
    /// The caller's jobs, their lifetime erased: see [`dispatch`].
    job: *const (dyn Fn(usize) + Sync),
    index: usize,
    backend: Backend,
    call: *const Call,
}

/// The state of one call that its workers report to.
struct Call {
    /// Workers still running a job of this call.
    running: AtomicUsize,
    /// The first panic a worker's job raised.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

struct Worker {
    /// Tasks posted so far; the worker runs the task of each new count.
    posted: AtomicUsize,
    task: UnsafeCell<Option<Task>>,
    thread: OnceLock<Thread>,
}

// SAFETY: `task` is written only by the dispatching caller (who holds the pool's lock) before it
// publishes the write with a release increment of `posted`, and read only by the worker after
// it has seen that increment with an acquire load; the caller does not write it again before
// the worker has reported the task finished (`Call::running`). The raw pointers in a `Task`
// point to data the caller keeps alive, and `Sync`, until then.
unsafe impl Sync for Worker {}
// SAFETY: as above; nothing in a `Worker` is tied to the thread that created it.
unsafe impl Send for Worker {}

impl Worker {
    fn start() -> Result<Arc<Worker>, NoThreads> {
        let w = Arc::new(Worker {
            posted: AtomicUsize::new(0),
            task: UnsafeCell::new(None),
            thread: OnceLock::new(),
        });
        let mine = Arc::clone(&w);
        let handle = spawn_allowed()
            .and_then(|()| {
                std::thread::Builder::new()
                    .name("fused-rnn worker".into())
                    .spawn(move || mine.serve())
            })
            .map_err(|_| NoThreads)?;
        let _ = w.thread.set(handle.thread().clone());
        Ok(w)
    }

    /// The worker's loop: wait for the next posted task, run it, report it.
    fn serve(&self) {
        let mut seen = 0;
        loop {
            let mut idle_since = Instant::now();
            spin_until(
                || self.posted.load(Ordering::Acquire) != seen,
                64,
                || {
                    if idle_since.elapsed() > SPIN {
                        // The `unpark` that follows every post wakes this, or keeps it awake.
                        std::thread::park();
                        idle_since = Instant::now();
                    }
                },
            );
            seen = self.posted.load(Ordering::Acquire);
            // SAFETY: see `impl Sync for Worker`: the task of count `seen` is complete and the
            // caller waits for this worker's report before touching it or what it points to.
            let task = unsafe { (*self.task.get()).expect("a posted task") };
            // SAFETY: the caller keeps its jobs and its `Call` alive until it has seen every
            // worker's report below.
            let (job, call) = unsafe { (&*task.job, &*task.call) };
            let result = catch_unwind(AssertUnwindSafe(|| under(task.backend, || job(task.index))));
            if let Err(p) = result {
                lock(&call.panic).get_or_insert(p);
            }
            // The last use of the task: after this the caller may return.
            call.running.fetch_sub(1, Ordering::Release);
        }
    }
}

/// Spins until `done()`, calling `idle` instead of spinning at every `every`-th check.
pub(crate) fn spin_until(done: impl Fn() -> bool, every: u32, mut idle: impl FnMut()) {
    let mut spins = 0u32;
    while !done() {
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(every) {
            idle();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Hands jobs `1..jobs` to workers (started as needed, before any job runs), runs job 0 here,
/// and waits for all.
fn dispatch(
    workers: &mut Vec<Arc<Worker>>,
    backend: Backend,
    jobs: usize,
    job: &(dyn Fn(usize) + Sync),
) -> Result<(), NoThreads> {
    while workers.len() < jobs - 1 {
        workers.push(Worker::start()?);
    }
    let call = Call {
        running: AtomicUsize::new(jobs - 1),
        panic: Mutex::new(None),
    };
    // Waits for the workers even when job 0 panics, so that no worker outlives the borrow.
    struct Join<'a>(&'a Call);
    impl Drop for Join<'_> {
        fn drop(&mut self) {
            spin_until(
                || self.0.running.load(Ordering::Acquire) == 0,
                64,
                std::thread::yield_now,
            );
        }
    }
    let join = Join(&call);
    // SAFETY: the erased lifetime outlives every use: `join` waits, on every way out of this
    // function, until each worker has reported that it is done with the task.
    let erased: *const (dyn Fn(usize) + Sync) = unsafe {
        std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(job)
    };
    for (k, w) in workers.iter().take(jobs - 1).enumerate() {
        let task = Task {
            job: erased,
            index: k + 1,
            backend,
            call: &call,
        };
        // SAFETY: the worker finished its previous task (every call waits for all of its
        // workers), so it is not reading `task`; the release increment publishes the write.
        unsafe { *w.task.get() = Some(task) };
        w.posted.fetch_add(1, Ordering::Release);
        if let Some(t) = w.thread.get() {
            t.unpark();
        }
    }
    job(0);
    drop(join);
    if let Some(p) = lock(&call.panic).take() {
        resume_unwind(p);
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn every_job_runs_once_and_results_keep_their_order() {
        for jobs in [0, 1, 2, 3, 7] {
            let hits: Vec<AtomicUsize> = (0..jobs).map(|_| AtomicUsize::new(0)).collect();
            run(jobs, &|k| {
                hits[k].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            let squares = map(0..jobs, |k| k * k);
            assert_eq!(squares, (0..jobs).map(|k| k * k).collect::<Vec<_>>());
        }
    }

    #[test]
    fn concurrent_and_nested_callers_all_finish() {
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..50 {
                        let sums = map(0..3, |k| map(0..2, |j| k + j).iter().sum::<usize>());
                        assert_eq!(sums, vec![1, 3, 5]);
                    }
                });
            }
        });
    }

    #[test]
    fn a_panicking_job_panics_the_caller_after_all_jobs_ended() {
        let done = AtomicUsize::new(0);
        let caught = catch_unwind(AssertUnwindSafe(|| {
            run(3, &|k| {
                if k == 2 {
                    panic!("job 2");
                }
                std::thread::sleep(Duration::from_millis(20));
                done.fetch_add(1, Ordering::Relaxed);
            })
        }));
        assert!(caught.is_err());
        assert_eq!(done.load(Ordering::Relaxed), 2);
        // The workers serve later calls.
        assert_eq!(map(0..3, |k| k + 1), vec![1, 2, 3]);
    }

    /// Runs `f` with thread starts from this thread refused.
    fn refusing<R>(f: impl FnOnce() -> R) -> R {
        REFUSE_THREADS.with(|r| r.set(true));
        let out = catch_unwind(AssertUnwindSafe(f));
        REFUSE_THREADS.with(|r| r.set(false));
        out.unwrap_or_else(|p| resume_unwind(p))
    }

    /// Runs `f` while the workers are taken, so that every parallel call in it must start
    /// threads, with those starts refused.
    pub(crate) fn refusing_threads<R>(f: impl FnOnce() -> R) -> R {
        let _taken = lock(&POOL.get_or_init(Pool::default).dispatch);
        refusing(f)
    }

    /// More jobs than the pool has workers, so a call must start threads.
    const MANY: usize = 64;

    fn refused_threads_leave_jobs_to_the_caller(refuse: fn(&mut dyn FnMut())) {
        let caller = std::thread::current().id();
        let mut ran_on = Vec::new();
        refuse(&mut || ran_on = map(0..MANY, |_| std::thread::current().id()));
        assert_eq!(ran_on, vec![caller; MANY]);
        let ran = AtomicUsize::new(0);
        let mut together = Some(Vec::new());
        refuse(&mut || {
            together = map_together(0..MANY, |k| {
                ran.fetch_add(1, Ordering::Relaxed);
                k
            })
        });
        assert!(together.is_none());
        assert_eq!(ran.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn refused_worker_threads_run_nothing_or_everything_here() {
        refused_threads_leave_jobs_to_the_caller(|f| refusing(f));
    }

    #[test]
    fn refused_threads_of_a_second_caller_run_nothing_or_everything_here() {
        refused_threads_leave_jobs_to_the_caller(|f| refusing_threads(f));
    }

    #[test]
    fn jobs_run_under_the_callers_backend() {
        let backend = crate::cpu::Backend::Scalar;
        let seen = with_backend(backend, || map(0..3, |_| active_backend())).unwrap();
        assert!(seen.iter().all(|&b| b == backend));
    }
}
