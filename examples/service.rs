//! An HTTP service whose handlers call blocking SQLite queries through the pool.
//!
//! This is what the library is for: async request handlers calling blocking code, with the
//! request's context and a way to cancel the call. The service runs axum on tokio, bound to
//! 127.0.0.1, and shows five things:
//!
//! * **A real blocking query, once per request.** Each request runs an SQL query on an embedded
//!   SQLite file database (rusqlite, SQLite compiled in). The query runs on a worker of a
//!   [`WorkerPool`], not on a tokio thread. Each worker has its own connection: the program is
//!   made with [`WorkerPool::asyncify_with`], which opens one on a worker the first time that
//!   worker runs a query, keeps it on that thread, and closes it when the worker leaves.
//! * **Per-request settings with a typed key.** [`OverridesLayer`], applied with axum's
//!   `Router::layer`, takes the tenant from the `x-tenant` header and puts it under the typed
//!   key `TENANT`. On the worker the query reads it with `TENANT.get()` and uses it in
//!   `WHERE tenant = ?`. Nothing passes it along by hand.
//! * **Tracing across the thread hop.** Each call is made inside an
//!   `info_span!("request", tenant, route)`. The pool captures that span, so the worker's
//!   `info!(rows, ..)` event is logged under it. A small `Layer` counts how many worker events
//!   had a `request` span around them.
//! * **A timeout that actually stops the work.** `/report` runs a query that never ends, under
//!   `tokio::time::timeout(300 ms)`. The timeout drops the `JobHandle`, which makes
//!   [`is_cancelled`] turn true on the worker. SQLite's progress handler checks it every 1000
//!   VM steps and interrupts the query, so the worker is free again a moment later. Without that
//!   check, the worker would stay busy until the query ended (here, days).
//! * **Backpressure reaching tower.** `/export` runs on a pool of one thread with a bounded
//!   queue (`Builder::queue_capacity(2)`). Requests go through tower's `load_shed` over
//!   `program.service()`: once the queue is full, `poll_ready` is pending, and `load_shed` turns
//!   that into an immediate 503.
//!
//! Run it with `cargo run --release --example service`. By default it runs a bounded self-test
//! on loopback and exits 0 only if every check passed: 200 `/orders` requests from 32 client
//! tasks over raw HTTP/1.1, two runaway reports and a burst of exports, then a report.
//! `cargo run --release --example service -- --serve` serves on 127.0.0.1:3000 until Enter.
//! `cargo test -p asyncify-pool-service-example` runs the same self-test as a test.
//!
//! The example is a workspace package of its own (`examples/service/Cargo.toml`), so axum,
//! hyper and SQLite are compiled only for it. Its first build compiles 67 crates: 2 min 19 s on
//! the project's 2-core machine when lightly loaded, about 5 min when busy
//! (`cargo build --release --example service` with an empty target directory). SQLite's C build
//! alone (`libsqlite3-sys`) takes over a minute of that.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use asyncify_pool::settings::{Key, Overrides};
use asyncify_pool::tower::{OverridesLayer, ProgramService};
use asyncify_pool::{is_cancelled, worker_index, BoxProgram, Program, Stats, WorkerPool};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use rusqlite::{Connection, ErrorCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tower::load_shed::{error::Overloaded, LoadShed};
use tower::{Service, ServiceBuilder};
use tracing::level_filters::LevelFilter;
use tracing::{info_span, Event, Subscriber};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The tenant of the request. `OverridesLayer` sets it from the `x-tenant` header, and the
/// handler and the query on the worker both read it.
static TENANT: Key<String> = Key::new("tenant");

/// The tenants in the database and how many orders each has.
const TENANTS: [(&str, i64); 4] = [
    ("acme", 1200),
    ("globex", 750),
    ("initech", 320),
    ("umbrella", 45),
];

/// The amount of a tenant's `i`-th order, in cents (so that each tenant's total is known).
fn amount_cents(i: i64) -> i64 {
    (i * 37) % 1000 + 1
}

/// What `/orders` must answer for `tenant`: its order count and total.
fn expected(tenant: &str) -> (i64, i64) {
    let n = TENANTS
        .iter()
        .find(|(t, _)| *t == tenant)
        .map_or(0, |(_, n)| *n);
    (n, (0..n).map(amount_cents).sum())
}

const ORDERS_SQL: &str =
    "SELECT COUNT(*), COALESCE(SUM(amount_cents), 0) FROM orders WHERE tenant = ?1";

/// A report with a bug: for any tenant with orders, its recursive CTE counts to 10^12, which
/// SQLite would take days to finish.
const RUNAWAY_SQL: &str = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n \
     WHERE x < 1000000000000) SELECT COUNT(*) FROM n, \
     (SELECT 1 FROM orders WHERE tenant = ?1 LIMIT 1)";
const RUNAWAY_ROWS: f64 = 1e12;

/// How long `/report` may take before it answers 504.
const REPORT_TIMEOUT: Duration = Duration::from_millis(300);

/// The export pool's queue: at most this many exports wait while its one worker is busy.
const EXPORT_QUEUE: usize = 2;

/// A query for the pool. The tenant is not part of it: the worker reads it from the settings.
#[derive(Debug)]
enum Query {
    /// The tenant's order count and total.
    Orders,
    /// The runaway report. `ended` receives when it started and stopped, even after its caller
    /// gave up (a cancelled job's result is discarded, so this side channel carries it).
    Report { ended: oneshot::Sender<RunawayEnd> },
}

#[derive(Debug)]
enum Answer {
    Orders {
        tenant: String,
        orders: i64,
        total_cents: i64,
        worker: usize,
    },
    Report {
        rows: i64,
    },
}

#[derive(Debug)]
enum DbError {
    NoTenant,
    Sql(rusqlite::Error),
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        DbError::Sql(e)
    }
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbError::NoTenant => f.write_str("no tenant in force"),
            DbError::Sql(e) => write!(f, "sqlite: {e}"),
        }
    }
}

/// What the worker reports about a runaway query once it has stopped.
#[derive(Debug, Clone, Copy)]
struct RunawayEnd {
    worker: usize,
    started: Instant,
    stopped: Instant,
    interrupted: bool,
}

type QueryOutput = Result<Answer, DbError>;
/// The program's type-erased form, as the axum state holds it.
type QueryProgram = BoxProgram<Query, QueryOutput>;
/// The export route's tower stack: `load_shed` over the program as a service.
type ExportService = LoadShed<ProgramService<dyn Program<Query, Output = QueryOutput>>>;

// ---------------------------------------------------------------------------------------------
// The blocking side: one SQLite connection per worker thread.

/// Connections opened and closed, so that the self-test can check that each worker opened at
/// most one and that every one was closed by the pools' shutdown.
static CONNECTIONS_OPENED: AtomicUsize = AtomicUsize::new(0);
static CONNECTIONS_CLOSED: AtomicUsize = AtomicUsize::new(0);

/// A worker's connection: the program's per-worker state. A `rusqlite::Connection` is `Send`
/// but not `Sync`, so the workers cannot share one behind an `Arc`, and a mutex around one
/// connection would run the queries one at a time. A worker runs one query at a time, so its
/// own connection needs no lock.
struct Db(Connection);

impl Drop for Db {
    fn drop(&mut self) {
        CONNECTIONS_CLOSED.fetch_add(1, Relaxed);
    }
}

/// Opens a worker's connection to `db`: the program's `init`, run on the worker's first query.
/// If it fails it panics: that query answers 500, and the worker's next query tries again.
fn open_connection(db: &Path) -> Db {
    let conn = Connection::open(db).unwrap_or_else(|e| panic!("cannot open {db:?}: {e}"));
    // SQLite calls this every 1000 VM steps, and a `true` interrupts the running statement. So
    // any query on this connection stops soon after its caller drops the `JobHandle`, for
    // example on a timeout. Outside a job, `is_cancelled` is false.
    conn.progress_handler(1000, Some(is_cancelled));
    CONNECTIONS_OPENED.fetch_add(1, Relaxed);
    Db(conn)
}

/// The program: runs on a worker, with the request's overrides and span in force.
fn run_query(Db(conn): &mut Db, query: Query) -> QueryOutput {
    let tenant = TENANT.get().ok_or(DbError::NoTenant)?;
    let worker = worker_index().expect("programs run on the pool's threads");
    match query {
        Query::Orders => {
            let (orders, total_cents): (i64, i64) = conn
                .prepare_cached(ORDERS_SQL)?
                .query_row([&tenant], |row| Ok((row.get(0)?, row.get(1)?)))?;
            // Logged on the worker, inside the request's span.
            tracing::info!(rows = orders, total_cents, worker, "orders counted");
            Ok(Answer::Orders {
                tenant,
                orders,
                total_cents,
                worker,
            })
        }
        Query::Report { ended } => {
            let started = Instant::now();
            let result = conn.query_row(RUNAWAY_SQL, [&tenant], |row| row.get::<_, i64>(0));
            let stopped = Instant::now();
            let interrupted = matches!(&result, Err(e)
                if e.sqlite_error_code() == Some(ErrorCode::OperationInterrupted));
            let _ = ended.send(RunawayEnd {
                worker,
                started,
                stopped,
                interrupted,
            });
            if interrupted {
                let ran_ms = stopped.duration_since(started).as_millis() as u64;
                tracing::warn!(
                    ran_ms,
                    worker,
                    "runaway query interrupted: its caller gave up"
                );
            }
            Ok(Answer::Report { rows: result? })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The async side: axum handlers.

#[derive(Clone)]
struct App {
    /// The main program, on a pool of 4 workers.
    queries: QueryProgram,
    /// The same program on the export pool (1 worker, a queue of 2), behind `load_shed`.
    export: ExportService,
    /// How long after each `/report` timeout its query stopped.
    runaways: Arc<Mutex<Vec<RunawayStop>>>,
}

#[derive(Debug, Clone, Copy)]
struct RunawayStop {
    /// Time from dropping the handle (the timeout) to the query's end on the worker; `None` if
    /// no end was reported within a minute (or the job never started).
    stopped_after_timeout: Option<Duration>,
    /// How long the worker spent on the query.
    worker_busy: Option<Duration>,
    interrupted: bool,
    /// The worker that ran it.
    worker: Option<usize>,
}

type Reply = (StatusCode, String);

fn no_tenant() -> Reply {
    (StatusCode::BAD_REQUEST, "missing x-tenant header\n".into())
}

fn failed(e: impl std::fmt::Display) -> Reply {
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))
}

fn render(answer: Answer) -> Reply {
    match answer {
        Answer::Orders {
            tenant,
            orders,
            total_cents,
            worker,
        } => (
            StatusCode::OK,
            format!("tenant={tenant} orders={orders} total_cents={total_cents} worker={worker}\n"),
        ),
        Answer::Report { rows } => (StatusCode::OK, format!("rows={rows}\n")),
    }
}

/// `GET /orders`: the tenant's order count and total, from SQLite on a worker.
async fn orders(State(app): State<App>) -> Reply {
    // The layer's overrides are in force on the async side too.
    let Some(tenant) = TENANT.get() else {
        return no_tenant();
    };
    let span = info_span!("request", tenant = %tenant, route = "/orders");
    // Entered around `call`, so the pool captures the span and the worker's events have it.
    let handle = span.in_scope(|| app.queries.call(Query::Orders));
    match handle.await {
        Ok(Ok(answer)) => render(answer),
        Ok(Err(e)) => failed(e),
        Err(e) => failed(e),
    }
}

/// `GET /report`: a query that would run for days, cut off after [`REPORT_TIMEOUT`].
async fn report(State(app): State<App>) -> Reply {
    let Some(tenant) = TENANT.get() else {
        return no_tenant();
    };
    let span = info_span!("request", tenant = %tenant, route = "/report");
    let (ended_tx, ended_rx) = oneshot::channel();
    let mut handle = span.in_scope(|| app.queries.call(Query::Report { ended: ended_tx }));
    match tokio::time::timeout(REPORT_TIMEOUT, &mut handle).await {
        Ok(Ok(Ok(answer))) => render(answer),
        Ok(Ok(Err(e))) => failed(e),
        Ok(Err(e)) => failed(e),
        Err(_elapsed) => {
            let gave_up = Instant::now();
            // Cancels the call: `is_cancelled()` turns true on the worker, and the progress
            // handler interrupts SQLite.
            drop(handle);
            // Off the request path: learn when the query actually stopped.
            let runaways = Arc::clone(&app.runaways);
            tokio::spawn(async move {
                let end = tokio::time::timeout(Duration::from_secs(60), ended_rx).await;
                let end = end.ok().and_then(Result::ok);
                runaways.lock().unwrap().push(RunawayStop {
                    stopped_after_timeout: end
                        .map(|e| e.stopped.saturating_duration_since(gave_up)),
                    worker_busy: end.map(|e| e.stopped.duration_since(e.started)),
                    interrupted: end.is_some_and(|e| e.interrupted),
                    worker: end.map(|e| e.worker),
                });
            });
            let ms = REPORT_TIMEOUT.as_millis();
            (
                StatusCode::GATEWAY_TIMEOUT,
                format!("report took longer than {ms} ms; its query was stopped\n"),
            )
        }
    }
}

/// `GET /export`: the same count on the export pool, shed with 503 while its queue is full.
async fn export(State(mut app): State<App>) -> Reply {
    let Some(tenant) = TENANT.get() else {
        return no_tenant();
    };
    let span = info_span!("request", tenant = %tenant, route = "/export");
    // `app.export` is this request's own clone: its `poll_ready` asks the pool for a queue
    // slot. `load_shed` is always ready, but if the pool was not, its `call` fails at once with
    // `Overloaded`.
    let service = &mut app.export;
    if let Err(e) = std::future::poll_fn(|cx| service.poll_ready(cx)).await {
        return failed(e);
    }
    let response = span.in_scope(|| service.call(Query::Orders));
    match response.await {
        Ok(Ok(answer)) => render(answer),
        Ok(Err(e)) => failed(e),
        Err(e) if e.is::<Overloaded>() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "export queue full, try again later\n".into(),
        ),
        Err(e) => failed(e),
    }
}

/// The tenant overrides for a request: from its `x-tenant` header, if any.
fn tenant_overrides(request: &Request) -> Overrides {
    match request
        .headers()
        .get("x-tenant")
        .and_then(|v| v.to_str().ok())
    {
        Some(tenant) => Overrides::new().with(&TENANT, tenant.to_owned()),
        None => Overrides::new(),
    }
}

fn router(app: App) -> Router {
    Router::new()
        .route("/orders", get(orders))
        .route("/report", get(report))
        .route("/export", get(export))
        .layer(OverridesLayer::new(tenant_overrides))
        .with_state(app)
}

// ---------------------------------------------------------------------------------------------
// The database, the pools and the server.

/// A SQLite file in a directory of its own under the temp dir, removed on drop.
struct TempDb {
    dir: PathBuf,
    path: PathBuf,
}

impl TempDb {
    /// Creates the database and fills it with every tenant's orders.
    fn create() -> rusqlite::Result<TempDb> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "asyncify-pool-service-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        let db = TempDb {
            path: dir.join("orders.sqlite3"),
            dir,
        };
        let mut conn = Connection::open(&db.path)?;
        conn.execute_batch(
            "CREATE TABLE orders (
                 id INTEGER PRIMARY KEY,
                 tenant TEXT NOT NULL,
                 amount_cents INTEGER NOT NULL
             );
             CREATE INDEX orders_by_tenant ON orders (tenant, amount_cents);",
        )?;
        let tx = conn.transaction()?;
        {
            let mut insert =
                tx.prepare("INSERT INTO orders (tenant, amount_cents) VALUES (?1, ?2)")?;
            for (tenant, n) in TENANTS {
                for i in 0..n {
                    insert.execute((tenant, amount_cents(i)))?;
                }
            }
        }
        tx.commit()?;
        Ok(db)
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running server.
struct Server {
    addr: SocketAddr,
    app: App,
    pool: WorkerPool,
    export_pool: WorkerPool,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    db: TempDb,
}

impl Server {
    async fn start(addr: SocketAddr) -> std::io::Result<Server> {
        let db = TempDb::create().map_err(std::io::Error::other)?;
        let pool = WorkerPool::builder()
            .threads(4)
            .thread_name("sql")
            .build()
            .map_err(std::io::Error::other)?;
        let export_pool = WorkerPool::builder()
            .threads(1)
            .queue_capacity(EXPORT_QUEUE)
            .thread_name("export")
            .build()
            .map_err(std::io::Error::other)?;
        // Each worker of each pool opens its own connection on its first query.
        let path = db.path.clone();
        let queries = pool
            .asyncify_with(move || open_connection(&path), run_query)
            .boxed();
        let path = db.path.clone();
        let exports: QueryProgram = export_pool
            .asyncify_with(move || open_connection(&path), run_query)
            .boxed();
        let app = App {
            queries,
            export: ServiceBuilder::new().load_shed().service(exports.service()),
            runaways: Arc::default(),
        };
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let server = axum::serve(listener, router(app.clone())).with_graceful_shutdown(async {
            let _ = stopped.await;
        });
        let task = tokio::spawn(async move { server.await });
        Ok(Server {
            addr,
            app,
            pool,
            export_pool,
            stop,
            task,
            db,
        })
    }

    /// Stops the server, then the pools (their queued work runs first). Returns whether both
    /// finished within `limit`.
    async fn stop(self, limit: Duration) -> bool {
        let _ = self.stop.send(());
        let server = tokio::time::timeout(limit, self.task).await;
        let pools = tokio::time::timeout(limit, async {
            self.pool.shutdown_async().await;
            self.export_pool.shutdown_async().await;
        })
        .await;
        drop(self.db);
        matches!(server, Ok(Ok(Ok(())))) && pools.is_ok()
    }
}

// ---------------------------------------------------------------------------------------------
// Tracing: fmt to stderr, and a counter of worker events inside request spans.

static WORKER_EVENTS: AtomicU64 = AtomicU64::new(0);
static WORKER_EVENTS_IN_REQUEST: AtomicU64 = AtomicU64::new(0);

/// Counts the events logged on pool threads, and those whose parent span is a `request`.
struct WorkerEventCounter;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for WorkerEventCounter {
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if worker_index().is_none() {
            return;
        }
        WORKER_EVENTS.fetch_add(1, Relaxed);
        if ctx
            .event_span(event)
            .is_some_and(|span| span.name() == "request")
        {
            WORKER_EVENTS_IN_REQUEST.fetch_add(1, Relaxed);
        }
    }
}

/// Installs the global subscriber once: fmt on stderr for events at `level` and above, and the
/// counter (every event). The fmt layer records every span, so that an event it prints shows
/// the request span around it.
fn install_tracing(level: LevelFilter) {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_target(false)
            .with_filter(filter_fn(move |meta| {
                meta.is_span() || level >= *meta.level()
            }));
        let subscriber = tracing_subscriber::registry()
            .with(fmt)
            .with(WorkerEventCounter);
        // If a global subscriber was installed before, this one is not: the counts stay at 0
        // and the self-test's tracing check fails.
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

// ---------------------------------------------------------------------------------------------
// The self-test: a raw HTTP/1.1 client over loopback.

/// One response: status and body, or what went wrong.
type Answered = Result<(u16, String), String>;

/// `GET path` with `Connection: close`, by hand. At most 30 s, so that a hang is a failure.
async fn http_get(addr: SocketAddr, path: &str, tenant: Option<&str>) -> Answered {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
        if let Some(tenant) = tenant {
            request.push_str(&format!("x-tenant: {tenant}\r\n"));
        }
        request.push_str("Connection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = match tokio::time::timeout(Duration::from_secs(30), exchange).await {
        Err(_) => return Err(format!("GET {path}: no answer in 30 s")),
        Ok(Err(e)) => return Err(format!("GET {path}: {e}")),
        Ok(Ok(raw)) => String::from_utf8_lossy(&raw).into_owned(),
    };
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET {path}: malformed response {raw:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("GET {path}: no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// The value of `key=` in an `/orders` answer.
fn field(body: &str, key: &str) -> Option<i64> {
    body.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// Checks an `/orders` or `/export` answer for `tenant`; returns the worker that served it.
fn check_orders(tenant: &str, answer: &Answered) -> Result<usize, String> {
    let (status, body) = answer.as_ref().map_err(Clone::clone)?;
    let want = expected(tenant);
    let got = (field(body, "orders"), field(body, "total_cents"));
    if *status != 200 || got != (Some(want.0), Some(want.1)) {
        return Err(format!(
            "{tenant}: expected 200 orders={} total_cents={}, got {status} {body:?}",
            want.0, want.1
        ));
    }
    Ok(field(body, "worker").unwrap_or(-1) as usize)
}

/// What the self-test saw.
#[derive(Debug)]
struct Report {
    /// Every request sent, of all routes (`orders_requests` to `/orders`, 2 to `/report`,
    /// `export_sent` to `/export`, and 2 edge cases).
    requests: usize,
    ok: usize,
    timed_out: usize,
    shed: usize,
    bad_request: usize,
    /// Any other status, or no answer.
    other: usize,
    /// `/orders` requests, and how many of them had the right count and total.
    orders_requests: usize,
    orders_right: usize,
    orders_p50: Duration,
    orders_p99: Duration,
    workers_used: BTreeSet<usize>,
    /// The `/report` requests: their status, and when their query stopped.
    runaway_status: Vec<u16>,
    runaways: Vec<RunawayStop>,
    /// SQLite's speed at the runaway's recursive CTE, measured on a short count.
    cte_rows_per_sec: f64,
    export_sent: usize,
    export_ok: usize,
    export_shed: usize,
    /// The slowest 503: how soon `load_shed` answered.
    export_slowest_shed: Duration,
    worker_events: u64,
    worker_events_in_request: u64,
    pool_stats: Stats,
    export_stats: Stats,
    live_threads_after_shutdown: usize,
    /// The workers' SQLite connections (`asyncify_with`'s states): opened, and closed by the
    /// pools' shutdown.
    connections_opened: usize,
    connections_closed: usize,
    wall: Duration,
    failures: Vec<String>,
}

impl Report {
    fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    fn print(&self) {
        println!("asyncify-pool service self-test (axum + SQLite on a 4-thread pool)");
        println!(
            "  requests           {} ({} /orders, {} /report, {} /export, 2 edge cases) in {:.2} s: {} ok, {} 504, {} 503, {} 400, {} other",
            self.requests,
            self.orders_requests,
            self.runaway_status.len(),
            self.export_sent,
            self.wall.as_secs_f64(),
            self.ok,
            self.timed_out,
            self.shed,
            self.bad_request,
            self.other
        );
        println!(
            "  /orders            {}/{} right counts per tenant; latency p50 {:.2} ms, p99 {:.2} ms; served by workers {:?}",
            self.orders_right,
            self.orders_requests,
            ms(self.orders_p50),
            ms(self.orders_p99),
            self.workers_used
        );
        for (status, stop) in self.runaway_status.iter().zip(&self.runaways) {
            let after = stop
                .stopped_after_timeout
                .map_or("never".into(), |d| format!("{:.2} ms", ms(d)));
            let busy = stop
                .worker_busy
                .map_or("?".into(), |d| format!("{:.0} ms", ms(d)));
            let worker = stop.worker.map_or("?".into(), |w| w.to_string());
            println!(
                "  /report            {status} after {} ms; query {} {after} after the timeout (worker {worker} busy {busy})",
                REPORT_TIMEOUT.as_millis(),
                if stop.interrupted { "interrupted" } else { "ended" },
            );
        }
        let days = RUNAWAY_ROWS / self.cte_rows_per_sec / 86_400.0;
        println!(
            "  without is_cancelled() in the progress handler, each runaway would have kept its worker busy\n\
             \x20                    until the CTE reached 1e12 rows: ~{days:.0} days at the {:.1} M rows/s measured here (not run)",
            self.cte_rows_per_sec / 1e6
        );
        println!(
            "  /export            burst of {} while its 1 worker was busy: {} queued and answered (queue {}), {} shed with 503 (slowest in {:.2} ms)",
            self.export_sent,
            self.export_ok,
            EXPORT_QUEUE,
            self.export_shed,
            ms(self.export_slowest_shed)
        );
        println!(
            "  tracing            {}/{} worker-thread events had a `request` span as parent",
            self.worker_events_in_request, self.worker_events
        );
        let s = &self.pool_stats;
        println!(
            "  pool stats         sql: {} completed (the interrupted runaways among them), {} cancelled before starting, {} panicked, {} threads; export: {} completed",
            s.completed, s.cancelled, s.panicked, s.threads, self.export_stats.completed
        );
        println!(
            "  shutdown_async     {} live threads left; {} of {} per-worker connections closed",
            self.live_threads_after_shutdown, self.connections_closed, self.connections_opened
        );
        if self.passed() {
            println!("all checks passed");
        } else {
            println!("{} check(s) FAILED:", self.failures.len());
            for failure in &self.failures {
                println!("  - {failure}");
            }
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The nearest-rank percentile `p` (0..=100) of sorted `samples`.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// How many rows per second SQLite produces from the runaway's recursive CTE, from a short
/// count on a worker of `pool`.
async fn measure_cte_speed(pool: &WorkerPool, db: &Path) -> f64 {
    const ROWS: i64 = 200_000;
    let db = db.to_owned();
    // A one-off job with a connection of its own, not one of the query program's.
    let timed = pool.spawn(move || {
        let conn = Connection::open(&db)?;
        let start = Instant::now();
        let n: i64 = conn.query_row(
            "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < ?1) \
             SELECT COUNT(*) FROM n",
            [ROWS],
            |row| row.get(0),
        )?;
        Ok::<_, rusqlite::Error>(n as f64 / start.elapsed().as_secs_f64())
    });
    match timed.await {
        Ok(Ok(rate)) => rate,
        _ => f64::NAN,
    }
}

/// Starts the server on 127.0.0.1 (an unused port), sends `requests` `/orders` requests from
/// `concurrency` client tasks, two runaway `/report`s and a burst of `/export`s, checks every
/// answer, and shuts everything down.
async fn self_test(requests: usize, concurrency: usize) -> Report {
    let begin = Instant::now();
    let mut failures = Vec::new();
    let events_before = (
        WORKER_EVENTS.load(Relaxed),
        WORKER_EVENTS_IN_REQUEST.load(Relaxed),
    );
    let connections_before = (
        CONNECTIONS_OPENED.load(Relaxed),
        CONNECTIONS_CLOSED.load(Relaxed),
    );
    let server = Server::start(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("start the server");
    let addr = server.addr;
    let cte_rows_per_sec = measure_cte_speed(&server.pool, &server.db.path).await;

    // Two runaway reports first, so that their jobs are queued ahead of the load; then the
    // load, which the other workers serve while the runaways are stuck.
    let runaway_clients: Vec<_> = ["acme", "globex"]
        .into_iter()
        .map(|tenant| tokio::spawn(async move { http_get(addr, "/report", Some(tenant)).await }))
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;

    let next = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                loop {
                    let i = next.fetch_add(1, Relaxed);
                    if i >= requests {
                        return seen;
                    }
                    let tenant = TENANTS[i % TENANTS.len()].0;
                    let start = Instant::now();
                    let answer = http_get(addr, "/orders", Some(tenant)).await;
                    seen.push((tenant, start.elapsed(), answer));
                }
            })
        })
        .collect();

    let mut statuses: Vec<Option<u16>> = Vec::new();
    let mut latencies = Vec::new();
    let mut orders_right = 0;
    let mut workers_used = BTreeSet::new();
    for client in clients {
        for (tenant, latency, answer) in client.await.expect("a client task") {
            statuses.push(answer.as_ref().ok().map(|(s, _)| *s));
            latencies.push(latency);
            match check_orders(tenant, &answer) {
                Ok(worker) => {
                    orders_right += 1;
                    workers_used.insert(worker);
                }
                Err(e) => failures.push(e),
            }
        }
    }
    latencies.sort();

    // Edge cases: an unknown tenant has no orders; no tenant at all is refused.
    let unknown = http_get(addr, "/orders", Some("nobody")).await;
    statuses.push(unknown.as_ref().ok().map(|(s, _)| *s));
    if let Err(e) = check_orders("nobody", &unknown) {
        failures.push(e);
    }
    let anonymous = http_get(addr, "/orders", None).await;
    statuses.push(anonymous.as_ref().ok().map(|(s, _)| *s));
    if !matches!(anonymous, Ok((400, _))) {
        failures.push(format!("no x-tenant: expected 400, got {anonymous:?}"));
    }

    let mut runaway_status = Vec::new();
    for client in runaway_clients {
        let answer = client.await.expect("a runaway client task");
        statuses.push(answer.as_ref().ok().map(|(s, _)| *s));
        match answer {
            Ok((status, _)) => runaway_status.push(status),
            Err(e) => failures.push(e),
        }
    }
    if runaway_status != [504, 504] {
        failures.push(format!(
            "/report: expected two 504s, got {runaway_status:?}"
        ));
    }

    // The export burst, while the export pool's one worker is held by a long job (a gate):
    // exactly EXPORT_QUEUE requests find room in its queue, the rest are shed.
    let (export_sent, export_ok, export_shed, export_slowest_shed) =
        export_burst(&server, &mut failures, &mut statuses).await;

    // The runaways' ends, reported by their workers after the 504s went out.
    let deadline = Instant::now() + Duration::from_secs(20);
    let runaways = loop {
        let seen = server.app.runaways.lock().unwrap().clone();
        if seen.len() >= runaway_status.len() || Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    if runaways.len() != 2 {
        failures.push(format!(
            "/report: {} of 2 runaway queries reported their end",
            runaways.len()
        ));
    }
    for stop in &runaways {
        match stop.stopped_after_timeout {
            Some(after) if stop.interrupted && after <= Duration::from_secs(5) => {}
            _ => failures.push(format!(
                "/report: the query did not stop within 5 s of its timeout: {stop:?}"
            )),
        }
    }

    let pool_stats = server.pool.stats();
    let export_stats = server.export_pool.stats();
    let (pool, export_pool) = (server.pool.clone(), server.export_pool.clone());
    if !server.stop(Duration::from_secs(30)).await {
        failures.push("the server or the pools did not stop within 30 s".into());
    }
    let live_threads_after_shutdown = pool.stats().live_threads + export_pool.stats().live_threads;
    if live_threads_after_shutdown != 0 {
        failures.push(format!(
            "{live_threads_after_shutdown} pool threads alive after shutdown_async"
        ));
    }
    // One connection per worker that ran a query, each closed as its worker left.
    let connections_opened = CONNECTIONS_OPENED.load(Relaxed) - connections_before.0;
    let connections_closed = CONNECTIONS_CLOSED.load(Relaxed) - connections_before.1;
    let workers = pool_stats.threads + export_stats.threads;
    if connections_opened == 0 || connections_opened > workers {
        failures.push(format!(
            "connections: {connections_opened} opened, expected 1 to {workers} (one per worker)"
        ));
    }
    if connections_closed != connections_opened {
        failures.push(format!(
            "connections: {connections_closed} of {connections_opened} closed after shutdown_async"
        ));
    }

    let worker_events = WORKER_EVENTS.load(Relaxed) - events_before.0;
    let worker_events_in_request = WORKER_EVENTS_IN_REQUEST.load(Relaxed) - events_before.1;
    let answered_on_workers = (orders_right + 1 + export_ok) as u64;
    if worker_events < answered_on_workers || worker_events_in_request != worker_events {
        failures.push(format!(
            "tracing: {worker_events_in_request} of {worker_events} worker events in a request span, \
             expected all, and at least {answered_on_workers}"
        ));
    }

    let count = |want: u16| statuses.iter().filter(|s| **s == Some(want)).count();
    let (ok, timed_out, shed, bad_request) = (count(200), count(504), count(503), count(400));
    Report {
        requests: statuses.len(),
        ok,
        timed_out,
        shed,
        bad_request,
        other: statuses.len() - ok - timed_out - shed - bad_request,
        orders_requests: requests,
        orders_right,
        orders_p50: percentile(&latencies, 50),
        orders_p99: percentile(&latencies, 99),
        workers_used,
        runaway_status,
        runaways,
        cte_rows_per_sec,
        export_sent,
        export_ok,
        export_shed,
        export_slowest_shed,
        worker_events,
        worker_events_in_request,
        pool_stats,
        export_stats,
        live_threads_after_shutdown,
        connections_opened,
        connections_closed,
        wall: begin.elapsed(),
        failures,
    }
}

/// Sends a burst of `/export`s while the export worker is busy; returns (sent, ok, shed, the
/// slowest 503's latency).
async fn export_burst(
    server: &Server,
    failures: &mut Vec<String>,
    statuses: &mut Vec<Option<u16>>,
) -> (usize, usize, usize, Duration) {
    const BURST: usize = 8;
    let (started_tx, started_rx) = oneshot::channel();
    let (release, gate) = mpsc::channel::<()>();
    let busy = server.export_pool.spawn(move || {
        let _ = started_tx.send(());
        // Bounded, so that a failed check cannot hang the test.
        let _ = gate.recv_timeout(Duration::from_secs(30));
    });
    if tokio::time::timeout(Duration::from_secs(10), started_rx)
        .await
        .is_err()
    {
        failures.push("/export: the export worker did not start the long job".into());
    }

    let addr = server.addr;
    let (answers_tx, mut answers_rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..BURST {
        let tenant = TENANTS[i % TENANTS.len()].0;
        let answers_tx = answers_tx.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let answer = http_get(addr, "/export", Some(tenant)).await;
            let _ = answers_tx.send((tenant, start.elapsed(), answer));
        });
    }
    drop(answers_tx);

    // The shed ones answer while the worker is still busy; then let it go.
    let mut answers = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while answers.len() < BURST - EXPORT_QUEUE {
        match tokio::time::timeout_at(deadline, answers_rx.recv()).await {
            Ok(Some(answer)) => answers.push(answer),
            _ => break,
        }
    }
    let shed_while_busy = answers.len();
    let _ = release.send(());
    let _ = busy.await;
    while let Ok(Some(answer)) =
        tokio::time::timeout(Duration::from_secs(30), answers_rx.recv()).await
    {
        answers.push(answer);
    }

    let (mut ok, mut shed, mut slowest_shed) = (0, 0, Duration::ZERO);
    for (i, (tenant, latency, answer)) in answers.iter().enumerate() {
        statuses.push(answer.as_ref().ok().map(|(s, _)| *s));
        match answer {
            Ok((503, _)) if i < shed_while_busy => {
                shed += 1;
                slowest_shed = slowest_shed.max(*latency);
            }
            _ => match check_orders(tenant, answer) {
                Ok(_) => ok += 1,
                Err(e) => failures.push(format!("/export {e}")),
            },
        }
    }
    if (ok, shed) != (EXPORT_QUEUE, BURST - EXPORT_QUEUE) {
        failures.push(format!(
            "/export: expected {EXPORT_QUEUE} answered and {} shed, got {ok} and {shed} of {}",
            BURST - EXPORT_QUEUE,
            answers.len()
        ));
    }
    (answers.len(), ok, shed, slowest_shed)
}

// ---------------------------------------------------------------------------------------------

async fn serve() -> std::io::Result<()> {
    let server = Server::start(SocketAddr::from(([127, 0, 0, 1], 3000))).await?;
    let addr = server.addr;
    println!("serving on http://{addr} (Enter to stop gracefully, Ctrl-C to kill); try:");
    for tenant in ["acme", "globex", "initech", "umbrella"] {
        println!("  curl -H 'x-tenant: {tenant}' http://{addr}/orders");
    }
    println!("  curl -i -H 'x-tenant: acme' http://{addr}/report   # 504 after 300 ms; the query is interrupted");
    println!(
        "  curl -i -H 'x-tenant: acme' http://{addr}/export   # 503 while the export queue is full"
    );
    println!("  curl -i http://{addr}/orders                       # 400: no tenant");
    // Enter (or the end of stdin) stops it. A line read blocks, so it runs off the runtime.
    let _ = tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new())).await;
    println!("shutting down");
    if !server.stop(Duration::from_secs(30)).await {
        eprintln!("the server or the pools did not stop within 30 s");
    }
    Ok(())
}

fn main() {
    // A runtime built by hand rather than with `#[tokio::main]`: tokio's macros would bring
    // syn and its kin into every build of the workspace (cargo unifies features across its
    // default members), the quickstart's too.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run());
}

async fn run() {
    match std::env::args().nth(1).as_deref() {
        None => {
            install_tracing(LevelFilter::WARN);
            let report = self_test(200, 32).await;
            report.print();
            if !report.passed() {
                std::process::exit(1);
            }
        }
        Some("--serve") => {
            install_tracing(LevelFilter::INFO);
            if let Err(e) = serve().await {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
        Some(other) => {
            eprintln!("unknown argument {other:?}; usage: service [--serve]");
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_a_bounded_self_test_on_loopback() {
        install_tracing(LevelFilter::WARN);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let report = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(240), self_test(200, 32))
                .await
                .expect("the self-test finished within 4 minutes")
        });
        report.print();
        assert!(report.passed(), "failed checks: {:#?}", report.failures);
        // Every tenant's count was right.
        assert_eq!(report.orders_right, 200);
        assert_eq!(report.ok, 200 + 1 + EXPORT_QUEUE);
        // Both runaways got 504, and their queries were interrupted soon after.
        assert_eq!(report.runaway_status, [504, 504]);
        assert_eq!(report.timed_out, 2);
        for stop in &report.runaways {
            assert!(stop.interrupted, "{stop:?}");
            assert!(
                stop.stopped_after_timeout.unwrap() <= Duration::from_secs(5),
                "{stop:?}"
            );
        }
        // Backpressure reached tower: the burst beyond the queue was shed.
        assert_eq!((report.export_ok, report.export_shed), (EXPORT_QUEUE, 6));
        assert_eq!(report.shed, 6);
        assert_eq!(report.bad_request, 1);
        assert_eq!(report.other, 0);
        // The worker's events carried the request span.
        assert!(report.worker_events >= 200);
        assert_eq!(report.worker_events_in_request, report.worker_events);
        assert_eq!(report.live_threads_after_shutdown, 0);
        // One connection per worker at most (4 + 1), every one closed at shutdown.
        assert!((1..=5).contains(&report.connections_opened), "{report:?}");
        assert_eq!(report.connections_closed, report.connections_opened);
    }
}
