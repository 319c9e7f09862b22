//! A stock python3 program for the same-node fast path test: plain sockets, no knowledge of
//! sockmesh. Modes (argv[1]):
//! - `pair LISTEN VIP CONNS BYTES SEED`: listens on LISTEN, opens CONNS connections to VIP
//!   (routed to LISTEN), and on each sends BYTES random bytes in both directions at once, in
//!   random write sizes, reading in random sizes; then one more connection that the client
//!   resets (SO_LINGER 0) after a partial send. Prints JSON: bytes moved, whether every
//!   direction arrived byte-exact (sha256), and whether the reset side saw a prefix of what
//!   was sent followed by EOF or ECONNRESET.
//! - `sink LISTEN`: accepts one connection, reads to EOF, replies with the sha256 of what it
//!   read (run outside the agent's cgroup: the fallback case).
//! - `send VIP BYTES SEED`: sends BYTES random bytes, half-closes, reads the sink's digest.

pub const SAME_NODE_PY: &str = r#"
import hashlib, json, random, socket, struct, sys, threading

def blob(rng, n):
    return rng.randbytes(n)

def send_all(sock, data, rng):
    i = 0
    while i < len(data):
        n = rng.randint(1, 65536)
        i += sock.send(data[i:i + n])

def recv_n(sock, n, rng):
    h, got = hashlib.sha256(), 0
    while got < n:
        chunk = sock.recv(min(rng.randint(1, 65536), n - got))
        if not chunk:
            break
        h.update(chunk)
        got += len(chunk)
    return got, h.hexdigest()

def host_port(s):
    h, p = s.rsplit(":", 1)
    return h, int(p)

def pair(listen, vip, conns, size, seed):
    rng = random.Random(seed)
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(host_port(listen)); ls.listen(64)
    exact, moved = 0, 0
    for c in range(conns):
        n = size + rng.randint(0, 65536)
        up = blob(random.Random(seed * 1000 + 2 * c), n)
        down = blob(random.Random(seed * 1000 + 2 * c + 1), n)[:n]
        up = up[:n]
        cl = socket.create_connection(host_port(vip), timeout=30)
        sv, _ = ls.accept(); sv.settimeout(30)
        res = {}
        def side(name, s, out, inn, r):
            t = threading.Thread(target=send_all, args=(s, out, random.Random(r)))
            t.start()
            res[name] = recv_n(s, len(inn), random.Random(r + 1))
            t.join()
        a = threading.Thread(target=side, args=("client", cl, up, down, 2 * c))
        b = threading.Thread(target=side, args=("server", sv, down, up, 2 * c + 7))
        a.start(); b.start(); a.join(); b.join()
        ok_up = res["server"] == (n, hashlib.sha256(up).hexdigest())
        ok_down = res["client"] == (n, hashlib.sha256(down).hexdigest())
        exact += int(ok_up) + int(ok_down)
        moved += 2 * n
        # Orderly close: both ends see EOF after all data.
        cl.shutdown(socket.SHUT_WR)
        eof_server = sv.recv(1) == b""
        sv.close()
        eof_client = cl.recv(1) == b""
        cl.close()
        exact += int(eof_server and eof_client) - 1
    # Reset after a partial send.
    data = blob(random.Random(seed + 99), 1 << 20)[:1 << 20]
    cl = socket.create_connection(host_port(vip), timeout=30)
    sv, _ = ls.accept(); sv.settimeout(30)
    part = rng.randint(1, len(data))
    send_all(cl, data[:part], rng)
    cl.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    cl.close()
    got, end = b"", "eof"
    try:
        while True:
            chunk = sv.recv(65536)
            if not chunk:
                break
            got += chunk
    except ConnectionResetError:
        end = "reset"
    sv.close(); ls.close()
    print(json.dumps({"conns": conns, "directions_exact": exact, "directions": 2 * conns,
                      "bytes_moved": moved, "reset_sent": part, "reset_received": len(got),
                      "reset_prefix": data[:len(got)] == got, "reset_end": end}))

def sink(listen):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(host_port(listen)); ls.listen(1)
    print("ready", flush=True)
    s, _ = ls.accept(); s.settimeout(30)
    h = hashlib.sha256()
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        h.update(chunk)
    s.sendall(h.hexdigest().encode()); s.close(); ls.close()

def send(vip, size, seed):
    rng = random.Random(seed)
    data = blob(rng, size)[:size]
    s = socket.create_connection(host_port(vip), timeout=30)
    send_all(s, data, rng)
    s.shutdown(socket.SHUT_WR)
    digest = b""
    while True:
        chunk = s.recv(128)
        if not chunk:
            break
        digest += chunk
    s.close()
    print(json.dumps({"bytes": size, "exact": digest.decode() == hashlib.sha256(data).hexdigest()}))

mode = sys.argv[1]
if mode == "pair":
    pair(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
elif mode == "sink":
    sink(sys.argv[2])
else:
    send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
"#;
