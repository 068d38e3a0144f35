//! The `turnd` binary: parses the command line, loads the configuration and
//! runs the server: TCP, TLS, HTTP and signals on this thread's tokio
//! current-thread runtime, the UDP relay workers on threads of their own with
//! plain epoll loops (see `turnd::server`).

#![allow(clippy::disallowed_methods)] // the binary is IO shell: it reads the clock

use std::process::ExitCode;

use clap::Parser;
use turnd::cli::{Cli, Command};
use turnd::config::Config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::CheckConfig { file }) = &cli.command {
        return match Config::check_file(file) {
            Ok(c) => {
                for w in &c.warnings {
                    println!("warning: {w}");
                }
                println!(
                    "{}: ok ({} listening address(es), port {}, relay ports {}-{}, realm {:?}, {} user(s))",
                    file.display(),
                    c.listening_ips.len(),
                    c.listening_port,
                    c.min_port,
                    c.max_port,
                    c.realm,
                    c.users.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("turnd: invalid configuration: {e}");
                ExitCode::from(2)
            }
        };
    }
    match &cli.command {
        Some(Command::Credentials {
            secret,
            user,
            ttl,
            separator,
            url,
        }) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let username = turnd::auth::rest_username(now + ttl, *separator, user);
            let password = turnd::auth::rest_password(secret, &username);
            println!("username: {username}");
            println!("password: {password}");
            println!("expires:  {} (unix time, in {ttl} s)", now + ttl);
            println!("iceServers snippet for RTCPeerConnection:");
            let snippet = serde_json::json!({
                "iceServers": [{ "urls": [url], "username": username, "credential": password }]
            });
            println!("{snippet}");
            return ExitCode::SUCCESS;
        }
        Some(Command::HashKey {
            user,
            realm,
            password,
        }) => {
            let key = turnd::stun::long_term_key(user, realm, password);
            println!("0x{}", turnd::auth::to_hex(&key));
            return ExitCode::SUCCESS;
        }
        Some(Command::User {
            db:
                turnd::cli::UserDbArgs {
                    userdb,
                    redis_userdb,
                    realm,
                },
            command,
        }) => {
            if let Some(redis) = redis_userdb {
                use turnd::userdb::UserCommand as U;
                let cmd = match command {
                    U::Add { name, password } => turnd::fleet::Command::AddUser(name, password),
                    U::Delete { name } => turnd::fleet::Command::DeleteUser(name),
                    U::List => turnd::fleet::Command::ListUsers,
                    U::Revoke { name, seconds } => turnd::fleet::Command::Revoke(name, *seconds),
                };
                return print_redis_result(redis, realm, cmd);
            }
            let db = userdb.as_deref().unwrap_or(std::path::Path::new(""));
            return print_result(turnd::userdb::run_user_command(db, realm, command));
        }
        Some(Command::Secret {
            db:
                turnd::cli::UserDbArgs {
                    userdb,
                    redis_userdb,
                    realm,
                },
            command,
        }) => {
            if let Some(redis) = redis_userdb {
                use turnd::userdb::SecretCommand as S;
                let cmd = match command {
                    S::Add { secret } => turnd::fleet::Command::AddSecret(secret),
                    S::Delete { secret } => turnd::fleet::Command::DeleteSecret(secret),
                    S::List => turnd::fleet::Command::ListSecrets,
                };
                return print_redis_result(redis, realm, cmd);
            }
            let db = userdb.as_deref().unwrap_or(std::path::Path::new(""));
            return print_result(turnd::userdb::run_secret_command(db, realm, command));
        }
        Some(Command::Probe(args)) => {
            return if turnd::probe::run(args) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        Some(Command::ConvertConfig { file }) => {
            return match turnd::config::convert_coturn_file(file) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("turnd: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Some(Command::CheckConfig { .. }) | None => {}
    }
    let config = match Config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("turnd: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let default_level = if config.verbose {
        "turnd=debug"
    } else {
        "turnd=info"
    };
    if let Err(e) =
        turnd::server::logging::init(default_level, config.log_json, config.log_file.as_deref())
    {
        eprintln!(
            "turnd: cannot open log file {}: {e}",
            config
                .log_file
                .as_deref()
                .map_or(String::new(), |p| p.display().to_string())
        );
        return ExitCode::FAILURE;
    }
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    // A panic on any thread or in any task ends the process (status 101)
    // rather than leaving a half-alive server: systemd restarts it.
    turnd::server::fault::exit_on_panic();

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("turnd: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = tokio::task::LocalSet::new();
    match local.block_on(&runtime, turnd::server::run(cli, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("turnd: {e}");
            tracing::error!(error = %e, "turnd failed");
            ExitCode::FAILURE
        }
    }
}

/// Runs a user or secret command against Redis and prints its result.
fn print_redis_result(redis: &str, realm: &str, cmd: turnd::fleet::Command<'_>) -> ExitCode {
    let result = turnd::fleet::RedisTarget::parse(redis)
        .map_err(|e| format!("option `redis-userdb`: {e}"))
        .and_then(|target| turnd::fleet::run_command(&target, realm, cmd));
    match result {
        Ok(text) => {
            if !text.is_empty() {
                println!("{text}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("turnd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_result(r: Result<String, turnd::userdb::UserDbError>) -> ExitCode {
    match r {
        Ok(text) => {
            if !text.is_empty() {
                println!("{}", text.trim_end());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("turnd: {e}");
            ExitCode::FAILURE
        }
    }
}
