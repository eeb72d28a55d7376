//! A serverless-style function using Rust's standard library broadly, for
//! tracing the slim Rust image (recipes/rust.yaml slim.workload): files, a
//! hand-rolled JSON reply, an HTTP server and client on loopback, hashing,
//! a subprocess, threads and channels. Built with cargo (offline) and rustc.
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

fn serve(listener: TcpListener) {
    let (mut stream, _) = listener.accept().expect("accept");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header");
        if line == "\r\n" {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().expect("length");
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("body");
    let sum: i64 = String::from_utf8(body).expect("utf8").split(',').map(|n| n.trim().parse::<i64>().expect("number")).sum();
    let reply = format!("{{\"sum\":{}}}", sum);
    write!(stream, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}", reply.len(), reply).expect("reply");
}

fn main() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    let server = thread::spawn(move || serve(listener));
    let mut client = TcpStream::connect(address).expect("connect");
    write!(client, "POST / HTTP/1.1\r\nHost: {}\r\nContent-Length: 5\r\n\r\n1,2,3", address).expect("request");
    let mut response = String::new();
    client.read_to_string(&mut response).expect("response");
    server.join().expect("server");
    assert!(response.ends_with("{\"sum\":6}"), "{}", response);

    let dir = std::env::temp_dir().join("service");
    fs::create_dir_all(&dir).expect("mkdir");
    fs::write(dir.join("data.txt"), "x".repeat(1000)).expect("write");
    let data = fs::read_to_string(dir.join("data.txt")).expect("read");
    fs::remove_dir_all(&dir).expect("rm");
    let mut hasher = DefaultHasher::new();
    data.hash(&mut hasher);

    let output = Command::new("/bin/sh").args(["-c", "echo subprocess"]).output().expect("subprocess");
    let counts = Arc::new(Mutex::new(HashMap::new()));
    let (sender, receiver) = mpsc::channel();
    let workers: Vec<_> = (0..4)
        .map(|i| {
            let (counts, sender) = (Arc::clone(&counts), sender.clone());
            thread::spawn(move || {
                counts.lock().unwrap().insert(i, i * i);
                sender.send(i).unwrap();
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    drop(sender);
    assert_eq!(receiver.iter().count(), 4);
    print!("service workload ok {:x} {}", hasher.finish(), String::from_utf8_lossy(&output.stdout));
}
