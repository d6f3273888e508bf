#!/usr/bin/python3
"""An SMTP relay and a webhook receiver that keep what they are sent, for the
end-to-end test of alert delivery (tests/e2e_metrics.rs starts it in a network
namespace on the test's bridge, as another host of that network would be).

  alert_sinks.py DIR SMTP_PORT HTTP_PORT

Each message the SMTP side accepts is written to DIR/mail-N.eml (the envelope's
recipients on its first line), each webhook POST body to DIR/hook-N.json, each
file complete before it appears (written beside, then renamed). The SMTP side
offers neither STARTTLS nor AUTH: the stack under test is told to require neither.
"""

import asyncio
import http.server
import os
import sys
import threading

out, smtp_port, http_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
counter = {"mail": 0, "hook": 0}
lock = threading.Lock()


def keep(kind, suffix, data):
    with lock:
        counter[kind] += 1
        name = os.path.join(out, f"{kind}-{counter[kind]}.{suffix}")
    with open(name + ".partial", "wb") as f:
        f.write(data)
    os.rename(name + ".partial", name)


async def smtp_session(reader, writer):
    def say(line):
        writer.write(line.encode() + b"\r\n")

    say("220 alert-sink ESMTP")
    recipients = []
    while True:
        line = await reader.readline()
        if not line:
            break
        verb = line.decode(errors="replace").strip().split(" ", 1)[0].upper()
        if verb in ("EHLO", "HELO"):
            say("250-alert-sink")
            say("250 8BITMIME")
        elif verb == "MAIL":
            recipients = []
            say("250 OK")
        elif verb == "RCPT":
            recipients.append(line.decode(errors="replace").strip())
            say("250 OK")
        elif verb == "DATA":
            say("354 go on")
            await writer.drain()
            body = []
            while True:
                part = await reader.readline()
                if not part or part in (b".\r\n", b".\n"):
                    break
                body.append(part)
            keep("mail", "eml", ("\n".join(recipients) + "\n").encode() + b"".join(body))
            say("250 kept")
        elif verb == "RSET" or verb == "NOOP":
            say("250 OK")
        elif verb == "QUIT":
            say("221 bye")
            await writer.drain()
            break
        else:
            say("502 not here")
        await writer.drain()
    writer.close()


class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        keep("hook", "json", self.rfile.read(length))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    hooks = http.server.ThreadingHTTPServer(("0.0.0.0", http_port), Hook)
    threading.Thread(target=hooks.serve_forever, daemon=True).start()

    async def serve():
        server = await asyncio.start_server(smtp_session, "0.0.0.0", smtp_port)
        # Both are listening: the test may go on.
        open(os.path.join(out, "ready"), "w").close()
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


main()
