//! Hostile test plugin: tries to escape its sandbox (read files, read environment variables,
//! open sockets) and reports what happened. Under busbar every attempt must fail inside the
//! plugin: the call itself succeeds and the report lists the errors.

use busbar_plugin_sdk::{Action, Error, Event, Plugin, Target, export};
use serde_json::json;

struct Sandbox;

fn attempt<T>(result: std::io::Result<T>) -> String {
    match result {
        Ok(_) => "allowed".to_string(),
        Err(e) => format!("denied: {e}"),
    }
}

impl Plugin for Sandbox {
    fn handle(_event: &Event) -> Result<Vec<Action>, Error> {
        let report = json!({
            "read_etc_passwd": attempt(std::fs::read("/etc/passwd")),
            "read_cwd": attempt(std::fs::read_dir(".")),
            "write_file": attempt(std::fs::write("/tmp/busbar-escape", b"x")),
            "env_vars": std::env::vars().count(),
            "env_home": std::env::var("HOME").ok(),
            "env_path": std::env::var("PATH").ok(),
            "tcp_connect": attempt(std::net::TcpStream::connect("127.0.0.1:22")),
            "udp_bind": attempt(std::net::UdpSocket::bind("0.0.0.0:0")),
            "tcp_listen": attempt(std::net::TcpListener::bind("127.0.0.1:0")),
            "dns": attempt(std::net::ToSocketAddrs::to_socket_addrs("localhost:80")),
            "args": std::env::args().count(),
        });
        Ok(vec![Action::send_json(Target::Everyone, "sandbox:report", &report)?])
    }
}

export!(Sandbox);
