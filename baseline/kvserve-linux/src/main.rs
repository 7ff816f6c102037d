//! The Linux baseline of the sample unikernel's bench (docs/kvstore.md,
//! "Bench"): `/init` of a tiny initramfs under Debian's kernel, serving the
//! same routes as `guests/kvstore` from the same `kvlib` code.
//!
//! As process 1 it mounts `/proc`, loads the kernel modules listed in
//! `/modules.order` (xtask put them there in dependency order; the
//! `virtio_mmio.device=` parameters QEMU's microvm appends to the kernel
//! command line are handed to `virtio_mmio`, as modprobe would), gives
//! `eth0` the address `kv.ip=` (default 10.0.2.10/24) and serves HTTP on
//! port 80 with one thread and `poll(2)`: like the unikernel's loop, every
//! turn reads every ready connection, drives it, commits once for all of
//! them (group commit), answers, and sends. The store is a RAM disk of
//! `kv.disk_kib=` KiB (default 4096), as the Tahoma bench scenario's
//! (`bench-kv-host`, no `[[guest.vblk]]` yet), or with `kv.store=vda` the
//! virtio disk `/dev/vda` (`pread`/`pwrite`, flush = `fdatasync`, which
//! the virtio-blk driver turns into a device flush), as the unikernel's
//! store on its vblk. At most 16 connections at
//! once, as the unikernel's 16 sockets. `POST /quit` (always on: this is a
//! bench fixture) ends it: the machine resets (`reboot=t`), QEMU exits.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use kvlib::http::{Conn, Server};
use kvlib::store::{BlockDevice, Error, MemDisk, Store, SECTOR};

const PORT: u16 = 80;
const CONNECTIONS: usize = 16;
const MODULE_DIR: &str = "/lib/modules";

fn main() {
    if let Err(e) = run() {
        println!("kvserve: {e}");
    }
    println!("@ kv-done");
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: `reboot` takes no pointers; as process 1 we may restart the
    // machine (the command line says `reboot=t`, QEMU runs `-no-reboot`).
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
}

fn run() -> Result<(), String> {
    let _ = std::fs::create_dir_all("/proc");
    mount_proc()?;
    let cmdline = std::fs::read_to_string("/proc/cmdline")
        .map_err(|e| format!("cannot read /proc/cmdline: {e}"))?;
    let param = |k: &str| {
        cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
            .map(str::to_string)
    };
    load_modules(&cmdline)?;
    let ip = param("kv.ip").unwrap_or_else(|| "10.0.2.10".into());
    let ip: std::net::Ipv4Addr = ip.parse().map_err(|e| format!("kv.ip={ip}: {e}"))?;
    bring_up("lo", std::net::Ipv4Addr::LOCALHOST, 8)?;
    bring_up("eth0", ip, 24)?;
    if param("kv.store").as_deref() == Some("vda") {
        let disk = Vda::open()?;
        println!(
            "kvserve: store on /dev/vda ({} KiB)",
            disk.sectors * SECTOR as u64 / 1024
        );
        return serve(disk, "vda");
    }
    let kib: u64 = param("kv.disk_kib")
        .and_then(|s| s.parse().ok())
        .unwrap_or(4096)
        .clamp(64, 1 << 20);
    serve(MemDisk::new(kib * 1024 / SECTOR as u64), "ram")
}

/// The store's device on `/dev/vda` (devtmpfs mounted on `/dev` first).
struct Vda {
    file: std::fs::File,
    sectors: u64,
}

impl Vda {
    fn open() -> Result<Vda, String> {
        // SAFETY: every pointer is a NUL-terminated literal that outlives the call.
        let r = unsafe {
            libc::mount(
                c"devtmpfs".as_ptr(),
                c"/dev".as_ptr(),
                c"devtmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if r != 0 {
            return Err(format!(
                "cannot mount devtmpfs on /dev: {}",
                std::io::Error::last_os_error()
            ));
        }
        let started = Instant::now();
        let file = loop {
            match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/vda")
            {
                Ok(f) => break f,
                Err(e) if started.elapsed() > Duration::from_secs(5) => {
                    return Err(format!(
                        "cannot open /dev/vda: {e} (is the virtio_blk module loaded, the disk given to QEMU?)"
                    ))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        use std::io::Seek;
        let bytes = (&file)
            .seek(std::io::SeekFrom::End(0))
            .map_err(|e| format!("cannot size /dev/vda: {e}"))?;
        Ok(Vda {
            file,
            sectors: bytes / SECTOR as u64,
        })
    }
}

impl BlockDevice for Vda {
    fn sectors(&self) -> u64 {
        self.sectors
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), Error> {
        use std::os::unix::fs::FileExt;
        self.file
            .read_exact_at(buf, sector * SECTOR as u64)
            .map_err(|_| Error::Io)
    }
    fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), Error> {
        use std::os::unix::fs::FileExt;
        self.file
            .write_all_at(buf, sector * SECTOR as u64)
            .map_err(|_| Error::Io)
    }
    fn flush(&mut self) -> Result<(), Error> {
        self.file.sync_data().map_err(|_| Error::Io)
    }
}

fn mount_proc() -> Result<(), String> {
    // SAFETY: every pointer is a NUL-terminated literal that outlives the call.
    let r = unsafe {
        libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(format!(
            "cannot mount /proc: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Loads `/lib/modules/<name>` for each line of `/modules.order`, in order.
/// `virtio_mmio` gets the `virtio_mmio.*` parameters of the kernel command
/// line (the kernel keeps none for modules: modprobe passes them).
fn load_modules(cmdline: &str) -> Result<(), String> {
    let order = std::fs::read_to_string("/modules.order")
        .map_err(|e| format!("cannot read /modules.order: {e}"))?;
    for name in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let module = name.trim_end_matches(".ko").replace('-', "_");
        let params: Vec<&str> = cmdline
            .split_whitespace()
            .filter_map(|w| w.strip_prefix(module.as_str())?.strip_prefix('.'))
            .collect();
        let params = std::ffi::CString::new(params.join(" "))
            .map_err(|_| "a NUL in the kernel command line".to_string())?;
        let path = format!("{MODULE_DIR}/{name}");
        let file = std::fs::File::open(&path).map_err(|e| format!("cannot open {path}: {e}"))?;
        // SAFETY: the descriptor is open for the call; `params` is a
        // NUL-terminated string that outlives it.
        let r =
            unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(format!("cannot load {path}: {e}"));
            }
        }
        println!("kvserve: loaded {name}");
    }
    Ok(())
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: `ifreq` is plain data (a name and a union of integers and
    // socket addresses); all zeroes is a valid value.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r.ifr_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s as libc::c_char;
    }
    r
}

fn sockaddr(a: std::net::Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `sockaddr_in` and `sockaddr` are both 16 bytes of plain data;
    // the kernel reads the former through the latter by design.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Gives interface `name` the address `ip/prefix` and brings it up, waiting
/// up to 5 s for it to appear (the driver probes as its module loads).
fn bring_up(name: &str, ip: std::net::Ipv4Addr, prefix: u32) -> Result<(), String> {
    // SAFETY: plain system call, no pointers.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    let ioctl = |req: libc::Ioctl, r: &mut libc::ifreq, what: &str| -> Result<(), String> {
        // SAFETY: `r` is a valid, writable `ifreq` for the whole call, as
        // these interface requests expect.
        if unsafe { libc::ioctl(fd, req, r as *mut libc::ifreq) } != 0 {
            return Err(format!(
                "{what} {name}: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    };
    let started = Instant::now();
    let mut flags = loop {
        let mut r = ifreq(name);
        match ioctl(libc::SIOCGIFFLAGS, &mut r, "get the flags of") {
            Ok(()) => break r,
            Err(e) if started.elapsed() > Duration::from_secs(5) => {
                return Err(format!("{e} (is the virtio_net module loaded?)"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let mut r = ifreq(name);
    r.ifr_ifru.ifru_addr = sockaddr(ip);
    ioctl(libc::SIOCSIFADDR, &mut r, "set the address of")?;
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    let mut r = ifreq(name);
    r.ifr_ifru.ifru_netmask = sockaddr(std::net::Ipv4Addr::from(mask));
    ioctl(libc::SIOCSIFNETMASK, &mut r, "set the netmask of")?;
    // SAFETY: the union was filled by SIOCGIFFLAGS, whose answer is `ifru_flags`.
    let f = unsafe { flags.ifr_ifru.ifru_flags };
    flags.ifr_ifru.ifru_flags = f | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    ioctl(libc::SIOCSIFFLAGS, &mut flags, "bring up")?;
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    println!("kvserve: {name} up, {ip}/{prefix}");
    Ok(())
}

struct Client {
    sock: TcpStream,
    conn: Conn,
    peer_done: bool,
}

fn serve<D: BlockDevice>(disk: D, kind: &str) -> Result<(), String> {
    let disk_kib = disk.sectors() * SECTOR as u64 / 1024;
    let store = Store::open(disk).map_err(|e| format!("cannot open the store: {e:?}"))?;
    let started = Instant::now();
    let now_ms = || started.elapsed().as_millis() as u64;
    let mut server = Server::new(store, now_ms());
    server.quit_route = true;
    let listener = TcpListener::bind(("0.0.0.0", PORT))
        .map_err(|e| format!("cannot bind port {PORT}: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot make the listener non-blocking: {e}"))?;
    println!("@ kv-listen port={PORT} connections={CONNECTIONS} disk_kib={disk_kib} store={kind}");
    let mut clients: Vec<Client> = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut accepted = 0u64;
    let mut quit_at: Option<Instant> = None;
    loop {
        if quit_at.is_some_and(|q| Instant::now() >= q) {
            break;
        }
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(clients.len() + 1);
        fds.push(libc::pollfd {
            fd: listener.as_raw_fd(),
            events: if clients.len() < CONNECTIONS {
                libc::POLLIN
            } else {
                0
            },
            revents: 0,
        });
        for c in &clients {
            let mut events = 0;
            if c.conn.wants_input() && !c.peer_done {
                events |= libc::POLLIN;
            }
            if !c.conn.out.is_empty() {
                events |= libc::POLLOUT;
            }
            fds.push(libc::pollfd {
                fd: c.sock.as_raw_fd(),
                events,
                revents: 0,
            });
        }
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd for the call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 200) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != ErrorKind::Interrupted {
                return Err(format!("poll: {e}"));
            }
        }
        let now = now_ms();
        while clients.len() < CONNECTIONS {
            match listener.accept() {
                Ok((sock, _)) => {
                    let _ = sock.set_nonblocking(true);
                    let _ = sock.set_nodelay(true);
                    clients.push(Client {
                        sock,
                        conn: Conn::new(now),
                        peer_done: false,
                    });
                    accepted += 1;
                }
                Err(_) => break,
            }
        }
        for (c, fd) in clients.iter_mut().zip(fds.iter().skip(1)) {
            if fd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                while c.conn.wants_input() && !c.peer_done {
                    match c.sock.read(&mut buf) {
                        Ok(0) => c.peer_done = true,
                        Ok(n) => c.conn.feed(&buf[..n], now),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => c.peer_done = true,
                    }
                }
            }
            server.drive(&mut c.conn, now);
        }
        server.commit();
        clients.retain_mut(|c| {
            server.drive(&mut c.conn, now);
            let expired = server.expire(&mut c.conn, now);
            while !c.conn.out.is_empty() {
                match c.sock.write(&c.conn.out) {
                    Ok(n) if n > 0 => {
                        c.conn.out.drain(..n);
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    // The peer is gone: drop what it would have got.
                    _ => {
                        c.conn.out.clear();
                        return false;
                    }
                }
            }
            let done = expired || c.conn.closing() || (c.peer_done && !c.conn.waiting());
            !(c.conn.out.is_empty() && done)
        });
        if server.quit_requested && quit_at.is_none() {
            quit_at = Some(Instant::now() + Duration::from_millis(300));
        }
    }
    let st = server.store.stats();
    println!(
        "@ kv-served accepted={accepted} keys={} records={} batches={} flushes={}",
        st.keys, st.records, st.batches, st.flushes
    );
    Ok(())
}
