"""A local attacker on a notify socket (tests/notify_attack.rs,
tests/interop_ffi.rs): passes a TCP socket whose last close blocks for an
hour (SO_LINGER {1, 3600}, its data unacknowledged by a peer that never
reads) over SCM_RIGHTS to the NOTIFY_SOCKET in argv[1], then closes its own
copy. Prints `sent` once that is done, or `refused <errno>` if the socket
cannot be reached, then keeps the never-reading peer alive (its death would
reset the connection and unblock the close) until it is killed."""
import array, os, socket, struct, sys, time
name = sys.argv[1]
addr = "\0" + name[1:] if name.startswith("@") else name
peer = socket.socket()
peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
peer.bind(("127.0.0.1", 0))
peer.listen(1)
conn = socket.socket()
conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
conn.connect(peer.getsockname())
accepted, _ = peer.accept()  # never read
conn.setblocking(False)
try:
    while True:
        conn.send(b"x" * 65536)
except BlockingIOError:
    pass
conn.setblocking(True)
conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 3600))
out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
try:
    out.sendmsg([b"READY=1"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                array.array("i", [conn.fileno()]))], 0, addr)
    conn.close()  # not the last copy: the datagram holds one
    print("sent", flush=True)
except OSError as e:
    # Not sent: closing our copy would linger here; keep it instead.
    print("refused %d" % e.errno, flush=True)
time.sleep(3600)
