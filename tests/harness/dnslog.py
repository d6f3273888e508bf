#!/usr/bin/python3
"""A DNS forwarder that writes down every name asked of it (standard library only).

The end-to-end tests point a container's /etc/resolv.conf at it, so every lookup any
process of the stack makes (glibc, uv, apt, Python's socket) passes here and lands in
the log as `NAME TYPE`, one line each, in the order asked. Queries go on to the
upstream resolver unchanged (over UDP or TCP, as asked); answers come back unchanged.

    dnslog.py LISTEN_ADDRESS UPSTREAM_ADDRESS LOG_FILE
"""

import socket
import socketserver
import sys
import threading

QTYPES = {1: "A", 28: "AAAA", 5: "CNAME", 12: "PTR", 15: "MX", 16: "TXT", 33: "SRV", 65: "HTTPS", 64: "SVCB"}
log_lock = threading.Lock()


def question(packet):
    """The first question's name and type, or None for a packet that is not a query."""
    if len(packet) < 12:
        return None
    labels, at = [], 12
    while at < len(packet):
        length = packet[at]
        if length == 0:
            at += 1
            break
        if length & 0xC0:
            return None
        labels.append(packet[at + 1 : at + 1 + length].decode("ascii", "replace"))
        at += 1 + length
    if at + 2 > len(packet):
        return None
    qtype = int.from_bytes(packet[at : at + 2], "big")
    return ".".join(labels).lower(), QTYPES.get(qtype, str(qtype))


def ask_upstream(upstream, packet):
    """The upstream resolver's answer to `packet`, over UDP."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(packet, (upstream, 53))
        answer, _ = sock.recvfrom(65535)
        return answer


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        packet, sock = self.request
        write_down(self.server, packet)
        try:
            sock.sendto(ask_upstream(self.server.upstream, packet), self.client_address)
        except OSError:
            pass


def write_down(server, packet):
    asked = question(packet)
    if asked:
        with log_lock, open(server.log_file, "a") as log:
            log.write("%s %s\n" % asked)


def read_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


class TcpHandler(socketserver.BaseRequestHandler):
    """DNS over TCP (what a resolver falls back to for large answers, and what some
    clients use first): each message behind its two-byte length."""

    def handle(self):
        try:
            while True:
                length = int.from_bytes(read_exactly(self.request, 2), "big")
                packet = read_exactly(self.request, length)
                write_down(self.server, packet)
                # Upstream over UDP: not every resolver answers TCP.
                answer = ask_upstream(self.server.upstream, packet)
                self.request.sendall(len(answer).to_bytes(2, "big") + answer)
        except OSError:
            pass


class Server(socketserver.ThreadingUDPServer):
    daemon_threads = True
    allow_reuse_address = True


class TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    listen, upstream, log_file = sys.argv[1:4]
    servers = [Server((listen, 53), Handler), TcpServer((listen, 53), TcpHandler)]
    for server in servers:
        server.upstream = upstream
        server.log_file = log_file
    open(log_file, "a").close()
    threading.Thread(target=servers[1].serve_forever, daemon=True).start()
    servers[0].serve_forever()


if __name__ == "__main__":
    main()
