#!/usr/bin/python3
"""A DNS forwarder that writes down every name asked of it (standard library only).

The end-to-end tests point a container's /etc/resolv.conf at it, so every lookup any
process of the stack makes (glibc, uv, apt, Python's socket) passes here and lands in
the log as `NAME TYPE`, one line each, in the order asked. Queries go on to the
upstream resolver unchanged; answers come back unchanged.

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


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        packet, sock = self.request
        asked = question(packet)
        if asked:
            with log_lock, open(self.server.log_file, "a") as log:
                log.write("%s %s\n" % asked)
        upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        upstream.settimeout(5)
        try:
            upstream.sendto(packet, (self.server.upstream, 53))
            answer, _ = upstream.recvfrom(65535)
            sock.sendto(answer, self.client_address)
        except OSError:
            pass
        finally:
            upstream.close()


class Server(socketserver.ThreadingUDPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    listen, upstream, log_file = sys.argv[1:4]
    server = Server((listen, 53), Handler)
    server.upstream = upstream
    server.log_file = log_file
    open(log_file, "a").close()
    server.serve_forever()


if __name__ == "__main__":
    main()
