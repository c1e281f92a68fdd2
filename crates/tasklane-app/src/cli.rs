//! The command line: `tasklane [serve]`, `migrate`, `demo-data`, `healthcheck`.

use crate::settings::Settings;
use crate::startup::{self, Application};
use crate::telemetry;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;
use tasklane_domain::{Description, NewTask, Status, Title};

const USAGE: &str = "\
Tasklane: a self-hosted task service.

Usage: tasklane [COMMAND]

Commands:
  serve        Serve the API (the default)
  migrate      Apply database migrations and exit
  demo-data    Insert the three sample tasks if there are no tasks yet (--force: always)
  healthcheck  Ask the running server on TASKLANE_LISTEN whether it is ready (exit 0) or not
               (exit 1); --live asks only whether it is alive. Needs no shell or curl.
  help         Show this text

Settings come from the environment (DATABASE_URL, REDIS_URL, TASKLANE_LISTEN, TASKLANE_*);
see the README's configuration table.";

enum Command {
    Serve,
    Migrate,
    DemoData { force: bool },
    Healthcheck { live: bool },
    Help,
    Version,
}

fn parse(args: &[String]) -> Result<Command, String> {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        [] | ["serve"] => Ok(Command::Serve),
        ["migrate"] => Ok(Command::Migrate),
        ["demo-data"] => Ok(Command::DemoData { force: false }),
        ["demo-data", "--force"] => Ok(Command::DemoData { force: true }),
        ["healthcheck"] => Ok(Command::Healthcheck { live: false }),
        ["healthcheck", "--live"] => Ok(Command::Healthcheck { live: true }),
        ["help" | "--help" | "-h"] => Ok(Command::Help),
        ["--version" | "-V" | "version"] => Ok(Command::Version),
        _ => Err(format!("unknown arguments: {}", words.join(" "))),
    }
}

/// Runs a command line; the exit code is 0 on success, 1 on failure, 2 on bad usage or
/// settings.
pub fn main(args: Vec<String>) -> ExitCode {
    let command = match parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tasklane: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            println!("tasklane {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tasklane: {e}");
            return ExitCode::from(2);
        }
    };
    if let Command::Healthcheck { live } = command {
        return healthcheck(&settings, live);
    }
    telemetry::init(settings.log_format, &settings.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tasklane: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match command {
            Command::Migrate => startup::migrate_only(&settings)
                .await
                .map_err(|e| e.to_string()),
            Command::DemoData { force } => demo_data(&settings, force).await,
            _ => serve(settings).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "tasklane stopped");
            eprintln!("tasklane: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> Result<(), String> {
    let app = Application::build(settings)
        .await
        .map_err(|e| e.to_string())?;
    app.run_until_stopped().await.map_err(|e| e.to_string())?;
    tracing::info!("stopped");
    Ok(())
}

/// The seed's three sample tasks.
pub fn demo_tasks() -> Vec<(&'static str, &'static str, Status)> {
    vec![
        (
            "Learn Docker",
            "Complete Docker tutorial series",
            Status::InProgress,
        ),
        ("Build API", "Create RESTful API with Flask", Status::Done),
        (
            "Deploy Application",
            "Deploy to production environment",
            Status::Todo,
        ),
    ]
}

async fn demo_data(settings: &Settings, force: bool) -> Result<(), String> {
    let wiring = startup::wire(settings).await.map_err(|e| e.to_string())?;
    let counts = wiring.service.counts().await.map_err(|e| e.to_string())?;
    if counts.total() > 0 && !force {
        println!(
            "{} tasks exist already; no sample tasks inserted (use --force to insert anyway)",
            counts.total()
        );
        return Ok(());
    }
    for (title, description, status) in demo_tasks() {
        let new = NewTask {
            title: Title::new(title).map_err(|e| e.to_string())?,
            description: Description::new(description).map_err(|e| e.to_string())?,
            status,
        };
        let task = wiring
            .service
            .create(new, None)
            .await
            .map_err(|e| e.to_string())?
            .task;
        println!("inserted task {}: {}", task.id, task.title.as_str());
    }
    Ok(())
}

/// Where to reach our own server: a wildcard listen address means loopback.
fn own_address(settings: &Settings) -> Option<SocketAddr> {
    let addr = settings.listen.to_socket_addrs().ok()?.next()?;
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    Some(SocketAddr::new(ip, addr.port()))
}

fn healthcheck(settings: &Settings, live: bool) -> ExitCode {
    let path = if live {
        "/api/health/live"
    } else {
        "/api/health"
    };
    let outcome = (|| -> Result<String, String> {
        let addr = own_address(settings).ok_or("TASKLANE_LISTEN does not resolve")?;
        let timeout = Duration::from_secs(3);
        let mut stream =
            TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(|e| e.to_string())?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: tasklane-healthcheck\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut response = Vec::with_capacity(1024);
        stream
            .take(64 * 1024)
            .read_to_end(&mut response)
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&response);
        Ok(text.lines().next().unwrap_or_default().to_owned())
    })();
    match outcome {
        Ok(status_line) if status_line.split_whitespace().nth(1) == Some("200") => {
            println!("healthy: {status_line}");
            ExitCode::SUCCESS
        }
        Ok(status_line) => {
            println!("unhealthy: {status_line}");
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("unhealthy: {e}");
            ExitCode::FAILURE
        }
    }
}
