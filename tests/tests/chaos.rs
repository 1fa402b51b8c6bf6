//! The chaos suite: uploads N short videos (some of them not videos at all) through the app
//! while SIGKILLing and restarting converters, the notifier and the app server, and crashing and
//! restarting RabbitMQ, the MongoDB server (FerretDB, or the PostgreSQL under it) and MariaDB, at
//! points drawn from a seed. Then every accepted upload must end `done` or `failed` with a
//! reason, with exactly one MP3 per done job and exactly one email per job, and the store must
//! hold no orphan chunk, file or job once the sweeper has run.
//!
//! Its own test binary, and one test, on purpose: it crashes the shared dev services, so nothing
//! else may run meanwhile (cargo runs test binaries one after another).
//!
//! `CHAOS_JOBS` (default 10 per runtime) and `CHAOS_SEED` (default: from the clock, printed)
//! choose the run; `scripts/chaos` runs the long form. The table it prints is the README's.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use mongo_wire::bson::{doc, oid::ObjectId, Bson, Document};
use mongo_wire::FindOptions;
use mp3_model::{JOBS_COLLECTION, MP3S_DB, VIDEOS_DB};
use system_tests::system::{free_port, make_video, JWT_SECRET, PASSWORD};
use system_tests::{
    admin, available_runtimes, release_bin, root, service_env, unique, App, AppConfig, Runtime,
    TestDb,
};

type Mongo = mongo_wire::Client<std::net::TcpStream>;

/// How long a file or chunks without an owner live before the sweeper takes them.
const ORPHAN_AGE_SECS: u64 = 20;
/// Between sweeps; the orphan step runs on one sweep in 12.
const SWEEP_SECS: u64 = 1;
/// How long the faults go on after the last upload started.
const FAULT_TAIL: Duration = Duration::from_secs(10);

#[test]
fn chaos() {
    let jobs: usize = std::env::var("CHAOS_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    // Whatever happens, the services are up again afterwards for the suites that follow.
    let _restore = RestoreServices;
    let mut reports = Vec::new();
    // CHAOS_RUNTIME=spin-runner|spin runs one.
    let only = std::env::var("CHAOS_RUNTIME").ok();
    for runtime in available_runtimes()
        .into_iter()
        .filter(|r| only.as_deref().is_none_or(|o| o == r.name()))
    {
        println!(
            "chaos on {}: CHAOS_SEED={seed} CHAOS_JOBS={jobs}",
            runtime.name()
        );
        reports.push(run(runtime, seed, jobs));
    }
    assert!(
        !reports.is_empty(),
        "no runtime matches CHAOS_RUNTIME={only:?}"
    );
    println!("\n{}", Report::table(&reports));
    for report in &reports {
        assert!(
            report.is_clean(),
            "chaos on {} (CHAOS_SEED={seed}): {report:#?}",
            report.runtime
        );
    }
}

/// SplitMix64: a few lines, and the same schedule for the same seed everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from + 1))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillConverter,
    KillNotifier,
    KillApp,
    CrashRabbitmq,
    CrashMongodb,
    CrashMariadb,
}

impl Fault {
    const ALL: [Fault; 6] = [
        Fault::KillConverter,
        Fault::KillNotifier,
        Fault::KillApp,
        Fault::CrashRabbitmq,
        Fault::CrashMongodb,
        Fault::CrashMariadb,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::KillConverter => "converter killed",
            Fault::KillNotifier => "notifier killed",
            Fault::KillApp => "app killed",
            Fault::CrashRabbitmq => "rabbitmq crashed",
            Fault::CrashMongodb => "mongodb crashed",
            Fault::CrashMariadb => "mariadb crashed",
        }
    }
}

/// A worker binary, its stderr in a log file (printed when the run fails).
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn start(name: &str, env: &[(&str, String)], dir: &Path) -> Self {
        let log = dir.join(format!("{name}-{}.log", unique()));
        let file = std::fs::File::create(&log).expect("a log file");
        let child = Command::new(release_bin(name))
            .envs(env.iter().map(|(k, v)| (*k, v)))
            .env("METRICS_ADDR", format!("127.0.0.1:{}", free_port()))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self { child, log }
    }

    /// Panics with its log if it exited by itself (only the faults may end a worker).
    fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            panic!("a worker exited by itself ({status}):\n{log}");
        }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The moving parts a fault can hit.
struct Cluster {
    runtime: Runtime,
    listen: String,
    app_env: Vec<(&'static str, String)>,
    app: Mutex<Option<App>>,
    converter_env: Vec<(&'static str, String)>,
    notifier_env: Vec<(&'static str, String)>,
    converters: Mutex<Vec<Process>>,
    notifier: Mutex<Option<Process>>,
    /// The logs of notifiers killed so far.
    killed_notifiers: Mutex<Vec<PathBuf>>,
    dir: PathBuf,
}

impl Cluster {
    fn start_app(&self) {
        let mut config = AppConfig::app(self.runtime).listen(&self.listen);
        for (name, value) in &self.app_env {
            config = config.env(name, value.clone());
        }
        *self.app.lock().unwrap() = Some(config.start());
    }

    fn start_converter(&self) {
        let process = Process::start("converter", &self.converter_env, &self.dir);
        self.converters.lock().unwrap().push(process);
    }

    fn start_notifier(&self) {
        let process = Process::start("notifier", &self.notifier_env, &self.dir);
        *self.notifier.lock().unwrap() = Some(process);
    }

    fn inflict(&self, fault: Fault, rng: &mut Rng) {
        let pause = rng.millis(200, 2000);
        match fault {
            Fault::KillConverter => {
                let victim = {
                    let mut converters = self.converters.lock().unwrap();
                    let index = rng.below(converters.len() as u64) as usize;
                    converters.remove(index)
                };
                victim.kill();
                std::thread::sleep(pause);
                self.start_converter();
            }
            Fault::KillNotifier => {
                if let Some(victim) = self.notifier.lock().unwrap().take() {
                    self.killed_notifiers
                        .lock()
                        .unwrap()
                        .push(victim.log.clone());
                    victim.kill();
                }
                std::thread::sleep(pause);
                self.start_notifier();
            }
            Fault::KillApp => {
                if let Some(app) = self.app.lock().unwrap().take() {
                    app.crash();
                }
                std::thread::sleep(pause);
                self.start_app();
            }
            Fault::CrashRabbitmq => dev_services_crash("rabbitmq", pause),
            Fault::CrashMariadb => dev_services_crash("mariadb", pause),
            Fault::CrashMongodb => {
                // The server the clients talk to, or the storage under it.
                let which = if rng.below(2) == 0 && postgres_backend() {
                    "postgres"
                } else {
                    "ferretdb"
                };
                dev_services_crash(which, pause);
            }
        }
    }

    fn base(&self) -> String {
        format!("http://{}", self.listen)
    }
}

fn postgres_backend() -> bool {
    std::env::var("FERRETDB_BACKEND").map_or(true, |b| b == "postgresql")
}

struct RestoreServices;

impl Drop for RestoreServices {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/dev-services"))
            .arg("start")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `scripts/dev-services crash <service>`, a pause, then `start` (which restarts what is down;
/// tried again once, as an operator would, before the run is called failed).
fn dev_services_crash(service: &str, pause: Duration) {
    let script = root().join("scripts/dev-services");
    let run = |args: &[&str]| {
        let out = Command::new(&script)
            .args(args)
            .output()
            .expect("running scripts/dev-services");
        assert!(
            out.status.success(),
            "scripts/dev-services {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["crash", service]);
    std::thread::sleep(pause);
    let started = Command::new(&script)
        .arg("start")
        .output()
        .is_ok_and(|out| out.status.success());
    if !started {
        std::thread::sleep(Duration::from_secs(2));
        run(&["start"]);
    }
}

/// What one upload got, after a client's retries.
#[derive(Debug, Clone)]
struct Upload {
    poison: bool,
    /// The status of each try (0: no answer).
    tries: Vec<u16>,
    job_id: Option<String>,
}

#[derive(Debug, Default)]
struct Report {
    runtime: &'static str,
    seed: u64,
    uploads: usize,
    /// Tries answered with an error or not at all, by status (0: no answer), and retried.
    refused: std::collections::BTreeMap<u16, usize>,
    accepted: usize,
    /// Jobs the client never heard of (the app died after storing the job): must end the same.
    unseen: usize,
    done: usize,
    failed: usize,
    /// Real videos that failed anyway (allowed, with a reason; shown).
    failed_clean: usize,
    faults: Vec<(Fault, usize)>,
    lost: Vec<String>,
    duplicated: Vec<String>,
    /// Jobs emailed again because a notifier was killed between sending and recording.
    resent: Vec<String>,
    orphaned: Vec<String>,
    seconds: f64,
}

impl Report {
    fn is_clean(&self) -> bool {
        self.lost.is_empty() && self.duplicated.is_empty() && self.orphaned.is_empty()
    }

    fn table(reports: &[Report]) -> String {
        let mut out = String::from(
            "| runtime | seed | uploads | tries refused (status: count; 0 = no answer) | accepted | unseen | done | failed (of them videos) | faults | lost | duplicated | resent after a kill mid-send | orphaned | time |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for r in reports {
            let faults: Vec<String> = r
                .faults
                .iter()
                .map(|(f, n)| format!("{} {n}", f.name()))
                .collect();
            let refused: Vec<String> = r
                .refused
                .iter()
                .map(|(status, n)| format!("{status}: {n}"))
                .collect();
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} ({}) | {} | {} | {} | {} | {} | {:.0} s |\n",
                r.runtime,
                r.seed,
                r.uploads,
                refused.join(", "),
                r.accepted,
                r.unseen,
                r.done,
                r.failed,
                r.failed_clean,
                faults.join(", "),
                r.lost.len(),
                r.duplicated.len(),
                r.resent.len(),
                r.orphaned.len(),
                r.seconds
            ));
        }
        out
    }
}

fn run(runtime: Runtime, seed: u64, jobs: usize) -> Report {
    let started = Instant::now();
    let run_start_secs = (now_ms() / 1000) as u32;
    let mut rng = Rng(seed ^ runtime.name().len() as u64);
    let dir = std::env::temp_dir().join(format!("mp3-chaos-{}", unique()));
    std::fs::create_dir_all(&dir).unwrap();

    // Fixtures: a 2 s clip, and a file that starts like it (the gateway checks the first
    // bytes) and is garbage after that: only ffmpeg can tell.
    let clip = dir.join("clip.mp4");
    make_video(&clip, 2, "320x240");
    let poison = dir.join("poison.mp4");
    let mut bytes = std::fs::read(&clip).unwrap();
    bytes.truncate(32);
    bytes.extend((0..60_000u32).map(|i| (i * 7919 % 251) as u8));
    std::fs::write(&poison, bytes).unwrap();

    let vhost = system_tests::services::Vhost::new();
    let db = TestDb::migrated();
    let email = format!("chaos-{}@example.com", unique());
    let (ok, output) = admin(
        &db.url(),
        &["user", "add", &email],
        &format!("{PASSWORD}\n"),
    );
    assert!(ok, "mp3-admin user add: {output}");
    let worker_env = vec![
        ("AMQP_URL", vhost.amqp_url()),
        ("MONGODB_URL", service_env("MONGODB_URL")),
        ("RETRY_BASE_DELAY_MS", "500".to_owned()),
        ("JOB_TIMEOUT_SECS", "30".to_owned()),
    ];
    let mut converter_env = worker_env.clone();
    converter_env.extend([
        ("CONCURRENCY", "2".to_owned()),
        ("MAX_ATTEMPTS", "5".to_owned()),
        ("WARM_FFMPEG", "1".to_owned()),
        ("SWEEP_INTERVAL_SECS", SWEEP_SECS.to_string()),
        ("STUCK_AFTER_SECS", "30".to_owned()),
        ("MAX_REPUBLISH", "3".to_owned()),
        ("ORPHAN_AGE_SECS", ORPHAN_AGE_SECS.to_string()),
    ]);
    let listen = format!("127.0.0.1:{}", free_port());
    let mut notifier_env = worker_env.clone();
    notifier_env.extend([
        ("MAX_ATTEMPTS", "8".to_owned()),
        ("SMTP_HOST", service_env("SMTP_HOST")),
        ("SMTP_PORT", service_env("SMTP_PORT")),
        ("SMTP_TLS", "none".to_owned()),
        ("DOWNLOAD_BASE_URL", format!("http://{listen}")),
    ]);
    let cluster = Arc::new(Cluster {
        runtime,
        listen,
        app_env: vec![
            ("SPIN_VARIABLE_AMQP_URL", vhost.amqp_url()),
            ("SPIN_VARIABLE_DB_URL", db.url()),
            ("SPIN_VARIABLE_DB_HOST", db.host_port()),
            ("SPIN_VARIABLE_JWT_SECRET", JWT_SECRET.to_owned()),
        ],
        app: Mutex::new(None),
        converter_env,
        notifier_env,
        converters: Mutex::new(Vec::new()),
        notifier: Mutex::new(None),
        killed_notifiers: Mutex::new(Vec::new()),
        dir: dir.clone(),
    });
    cluster.start_app();
    cluster.start_converter();
    cluster.start_converter();
    cluster.start_notifier();
    let token = login(&cluster.base(), &email);

    // The schedule: uploads spread over the window, every fault kind once, then more at random.
    let spacing = Duration::from_millis(700);
    let window = spacing * jobs as u32;
    let mut faults: Vec<(Duration, Fault)> = Fault::ALL
        .iter()
        .map(|&f| (rng.millis(0, (window + FAULT_TAIL).as_millis() as u64), f))
        .collect();
    for _ in 0..jobs / 8 {
        let fault = Fault::ALL[rng.below(Fault::ALL.len() as u64) as usize];
        faults.push((
            rng.millis(0, (window + FAULT_TAIL).as_millis() as u64),
            fault,
        ));
    }
    faults.sort_by_key(|(at, _)| *at);
    let poisons: Vec<bool> = (0..jobs).map(|_| rng.below(6) == 0).collect();

    let clock = Instant::now();
    let fault_thread = {
        let (cluster, faults) = (cluster.clone(), faults.clone());
        let mut rng = Rng(rng.next());
        std::thread::spawn(move || {
            for (at, fault) in faults {
                if let Some(wait) = at.checked_sub(clock.elapsed()) {
                    std::thread::sleep(wait);
                }
                println!(
                    "  {:>5.1} s  {}",
                    clock.elapsed().as_secs_f64(),
                    fault.name()
                );
                cluster.inflict(fault, &mut rng);
            }
        })
    };
    let next = Arc::new(AtomicUsize::new(0));
    let uploads = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (next, uploads, token, base) =
                (next.clone(), uploads.clone(), token.clone(), cluster.base());
            let (clip, poison, poisons) = (clip.clone(), poison.clone(), poisons.clone());
            std::thread::spawn(move || loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= poisons.len() {
                    return;
                }
                if let Some(wait) = (spacing * n as u32).checked_sub(clock.elapsed()) {
                    std::thread::sleep(wait);
                }
                let file = if poisons[n] { &poison } else { &clip };
                let upload = upload(&base, &token, file, poisons[n]);
                uploads.lock().unwrap().push(upload);
            })
        })
        .collect();
    for client in clients {
        client.join().expect("an upload client");
    }
    fault_thread.join().expect("the fault thread");
    let uploads = std::mem::take(&mut *uploads.lock().unwrap());

    // Let the system settle: every job of this user final and its owner emailed, then the
    // sweeper past the orphan age.
    let mut mongo = mongo_wire::connect(&service_env("MONGODB_URL")).expect("MongoDB");
    let settle = Instant::now() + Duration::from_secs(240);
    let jobs_of_user = |mongo: &mut Mongo| -> Vec<Document> {
        let cursor = mongo.find(
            VIDEOS_DB,
            JOBS_COLLECTION,
            doc! { "owner": &email },
            FindOptions::default(),
        );
        cursor
            .and_then(|c| c.collect::<mongo_wire::Result<Vec<_>>>())
            .unwrap_or_default()
    };
    loop {
        for process in cluster.converters.lock().unwrap().iter_mut() {
            process.assert_alive();
        }
        if let Some(process) = cluster.notifier.lock().unwrap().as_mut() {
            process.assert_alive();
        }
        let all = jobs_of_user(&mut mongo);
        // The notifier's record of each email (the job's `notified_at` may lag on FerretDB).
        let markers: Vec<Bson> = all
            .iter()
            .filter_map(|job| job.get_str("_id").ok())
            .map(|id| Bson::String(format!("{id}/sent")))
            .collect();
        let sent = count(
            &mut mongo,
            VIDEOS_DB,
            mp3_model::NOTIFY_CLAIMS_COLLECTION,
            doc! { "_id": { "$in": markers } },
        );
        let settled = sent == all.len() as u64
            && all
                .iter()
                .all(|job| matches!(job.get_str("status"), Ok("done" | "failed")));
        let accepted_known = uploads
            .iter()
            .filter_map(|u| u.job_id.as_deref())
            .all(|id| all.iter().any(|job| job.get_str("_id") == Ok(id)));
        if (settled && accepted_known) || Instant::now() > settle {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let orphan_deadline = Instant::now()
        .max(clock + window + FAULT_TAIL + Duration::from_secs(ORPHAN_AGE_SECS + 13 * SWEEP_SECS));
    let mut orphaned = Vec::new();
    while Instant::now() < orphan_deadline + Duration::from_secs(30) {
        let jobs = jobs_of_user(&mut mongo);
        orphaned = orphans(&mut mongo, run_start_secs, &jobs);
        if orphaned.is_empty() && Instant::now() >= orphan_deadline {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }

    // The verdict.
    let all = jobs_of_user(&mut mongo);
    let emails = emails_by_job(&email);
    let mut report = Report {
        runtime: runtime.name(),
        seed,
        uploads: uploads.len(),
        accepted: uploads.iter().filter(|u| u.job_id.is_some()).count(),
        refused: uploads
            .iter()
            .flat_map(|u| u.tries.iter().filter(|&&s| s != 202))
            .fold(Default::default(), |mut counts, &status| {
                *counts.entry(status).or_default() += 1;
                counts
            }),
        faults: Fault::ALL
            .iter()
            .map(|&f| (f, faults.iter().filter(|(_, g)| *g == f).count()))
            .collect(),
        orphaned,
        ..Report::default()
    };
    for upload in uploads.iter().filter(|u| u.job_id.is_some()) {
        let id = upload.job_id.as_deref().unwrap_or_default();
        if !all.iter().any(|job| job.get_str("_id") == Ok(id)) {
            report.lost.push(format!("job {id}: accepted, then gone"));
        }
    }
    for job in &all {
        let id = job.get_str("_id").unwrap_or_default().to_owned();
        let seen = uploads.iter().find(|u| u.job_id.as_deref() == Some(&id));
        if seen.is_none() {
            report.unseen += 1;
        }
        match job.get_str("status") {
            Ok("done") => {
                report.done += 1;
                let mp3s = count(
                    &mut mongo,
                    MP3S_DB,
                    "fs.files",
                    doc! { "metadata.job_id": &id },
                );
                let named = job
                    .get_str("mp3_fid")
                    .ok()
                    .and_then(|h| ObjectId::parse_str(h).ok())
                    .map(|fid| count(&mut mongo, MP3S_DB, "fs.files", doc! { "_id": fid }))
                    .unwrap_or(0);
                if mp3s > 1 {
                    report.duplicated.push(format!("job {id}: {mp3s} MP3s"));
                }
                if named != 1 {
                    report
                        .lost
                        .push(format!("job {id}: done, but its MP3 is not there"));
                }
            }
            Ok("failed") => {
                report.failed += 1;
                if seen.is_some_and(|u| !u.poison) {
                    report.failed_clean += 1;
                }
                if job.get_str("error").map_or(true, str::is_empty) {
                    report
                        .lost
                        .push(format!("job {id}: failed without a reason"));
                }
            }
            status => report.lost.push(format!("job {id}: still {status:?}")),
        }
        if seen.is_some_and(|u| u.poison) && job.get_str("status") == Ok("done") {
            report.lost.push(format!("job {id}: a non-video converted"));
        }
        let killed_mid_send = killed_mid_send(&cluster.killed_notifiers.lock().unwrap(), &id);
        match emails.iter().filter(|e| **e == id).count() {
            1 => {}
            0 => report.lost.push(format!("job {id}: no email")),
            // Killed between sending and recording: the next delivery cannot know the email
            // went out, and sends it again (at least once, by design; README).
            n if n <= 1 + killed_mid_send => report.resent.push(id.to_owned()),
            n => report.duplicated.push(format!("job {id}: {n} emails")),
        }
    }
    report.seconds = started.elapsed().as_secs_f64();

    if !report.is_clean() {
        for process in cluster.converters.lock().unwrap().iter() {
            print_log("converter", &process.log);
        }
        if let Some(process) = cluster.notifier.lock().unwrap().as_ref() {
            print_log("notifier", &process.log);
        }
        if let Some(app) = cluster.app.lock().unwrap().as_ref() {
            println!("---- app log ----\n{}", app.log());
        }
    }
    // Stop everything before the vhost and database go.
    cluster.converters.lock().unwrap().clear();
    cluster.notifier.lock().unwrap().take();
    cluster.app.lock().unwrap().take();
    cleanup(&mut mongo, &all);
    if report.is_clean() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("logs kept in {}", dir.display());
    }
    drop((vhost, db));
    report
}

fn print_log(name: &str, path: &Path) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(200).collect();
    println!("---- {name} log (last lines) ----");
    for line in tail.into_iter().rev() {
        println!("{line}");
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

fn login(base: &str, email: &str) -> String {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{email}:{PASSWORD}"));
    let reply = system_tests::http::send(
        "POST",
        &format!("{base}/login"),
        &[("Authorization", &format!("Basic {basic}"))],
        Some(b""),
    );
    assert_eq!(reply.status, 200, "login: {}", reply.body);
    reply.body
}

fn upload(base: &str, token: &str, file: &Path, poison: bool) -> Upload {
    // As a client would: an error answer (5xx) or none at all is tried again, a few times.
    let mut tries = Vec::new();
    for _ in 0..4 {
        let (status, job_id) = upload_once(base, token, file);
        tries.push(status);
        if job_id.is_some() || (400..500).contains(&status) {
            return Upload {
                poison,
                tries,
                job_id,
            };
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    Upload {
        poison,
        tries,
        job_id: None,
    }
}

/// One try with curl, slowed to about 40 KB/s so that a kill lands mid-upload: the status (0
/// without an answer) and the job id of a 202.
fn upload_once(base: &str, token: &str, file: &Path) -> (u16, Option<String>) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-m",
            "60",
            "--limit-rate",
            "40k",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
        ])
        .arg("-H")
        .arg(format!("Authorization: Bearer {token}"))
        .arg("-F")
        .arg(format!("file=@{}", file.display()))
        .arg(format!("{base}/upload"))
        .output()
        .expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    let status = code.trim().parse().unwrap_or(0);
    let job_id = (status == 202)
        .then(|| serde_json::from_str::<serde_json::Value>(body).ok())
        .flatten()
        .and_then(|json| json["job_id"].as_str().map(str::to_owned));
    (status, job_id)
}

fn count(mongo: &mut Mongo, db: &str, coll: &str, filter: Document) -> u64 {
    mongo
        .find(db, coll, filter, FindOptions::default())
        .map(|cursor| cursor.count() as u64)
        .unwrap_or(0)
}

/// Files and chunks made during the run that nothing owns, and final jobs whose video is still
/// stored.
fn orphans(mongo: &mut Mongo, since_secs: u32, jobs: &[Document]) -> Vec<String> {
    let young =
        |id: &ObjectId| u32::from_be_bytes(id.bytes()[..4].try_into().unwrap()) >= since_secs;
    let mut named = Vec::new();
    let all_jobs: Vec<Document> = mongo
        .find(VIDEOS_DB, JOBS_COLLECTION, doc! {}, FindOptions::default())
        .and_then(|c| c.collect())
        .unwrap_or_default();
    for job in &all_jobs {
        for field in ["video_fid", "mp3_fid", "converting_fid"] {
            if let Some(id) = job
                .get_str(field)
                .ok()
                .and_then(|h| ObjectId::parse_str(h).ok())
            {
                named.push(id);
            }
        }
    }
    let mut found = Vec::new();
    for db in [VIDEOS_DB, MP3S_DB] {
        let ids = |mongo: &mut Mongo, coll: &str, field: &str| {
            let options = FindOptions {
                projection: Some(doc! { field: 1 }),
                ..FindOptions::default()
            };
            let docs: Vec<Document> = mongo
                .find(db, coll, doc! {}, options)
                .and_then(|c| c.collect())
                .unwrap_or_default();
            docs.into_iter()
                .filter_map(|d| match d.get(field) {
                    Some(Bson::ObjectId(id)) => Some(*id),
                    _ => None,
                })
                .filter(young)
                .collect::<std::collections::HashSet<ObjectId>>()
        };
        let files = ids(mongo, "fs.files", "_id");
        let owners = ids(mongo, "fs.chunks", "files_id");
        for id in owners.difference(&files) {
            found.push(format!("{db}: chunks of {id} without a file"));
        }
        for id in files.iter().filter(|id| !named.contains(id)) {
            found.push(format!("{db}: file {id} no job names"));
        }
    }
    for job in jobs {
        let final_ = matches!(job.get_str("status"), Ok("done" | "failed"));
        if let Some(video) = job
            .get_str("video_fid")
            .ok()
            .and_then(|h| ObjectId::parse_str(h).ok())
        {
            if final_ && count(mongo, VIDEOS_DB, "fs.files", doc! { "_id": video }) > 0 {
                found.push(format!("video {video} of final job kept"));
            }
        }
        if !final_ {
            found.push(format!("job {:?} not final", job.get("_id")));
        }
    }
    found
}

/// The job id of every email in Mailpit to `address` (one entry per email).
fn emails_by_job(address: &str) -> Vec<String> {
    let base = service_env("MAILPIT_URL");
    let url = format!("{base}/api/v1/search?query=to:{address}&limit=1000");
    let reply = system_tests::http::get(&url);
    assert_eq!(reply.status, 200, "Mailpit: {}", reply.body);
    let found: serde_json::Value = serde_json::from_str(&reply.body).expect("Mailpit JSON");
    let mut ids = Vec::new();
    for message in found["messages"].as_array().cloned().unwrap_or_default() {
        let id = message["ID"].as_str().unwrap_or_default();
        let full = system_tests::http::get(&format!("{base}/api/v1/message/{id}"));
        let json: serde_json::Value = serde_json::from_str(&full.body).unwrap_or_default();
        let text = json["Text"].as_str().unwrap_or_default();
        if let Some(job) = text.lines().find_map(|l| l.trim().strip_prefix("Job: ")) {
            ids.push(job.trim().to_owned());
        }
    }
    ids
}

/// How many of the killed notifiers (their logs) died between sending the email of job `id`
/// and recording it: each may have left an email that the next delivery sent again.
fn killed_mid_send(logs: &[PathBuf], id: &str) -> usize {
    let job = format!("job_id={id}");
    logs.iter()
        .filter(|log| {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let of_job = |what: &str| {
                text.lines()
                    .filter(|l| l.contains(&job) && l.contains(what))
                    .count()
            };
            of_job("sending email") > of_job("email recorded")
        })
        .count()
}

/// Deletes this run's jobs and files from the shared store.
fn cleanup(mongo: &mut Mongo, jobs: &[Document]) {
    for job in jobs {
        for (db, field) in [(VIDEOS_DB, "video_fid"), (MP3S_DB, "mp3_fid")] {
            if let Some(id) = job
                .get_str(field)
                .ok()
                .and_then(|h| ObjectId::parse_str(h).ok())
            {
                let _ = mongo_wire::Bucket::new(db).delete(mongo, id);
            }
        }
        if let Ok(id) = job.get_str("_id") {
            let _ = mongo.delete_many(VIDEOS_DB, JOBS_COLLECTION, doc! { "_id": id });
            let claims = mp3_model::NOTIFY_CLAIMS_COLLECTION;
            let _ = mongo.delete_many(VIDEOS_DB, claims, doc! { "job_id": id });
        }
    }
}
