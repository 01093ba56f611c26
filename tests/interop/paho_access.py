#!/usr/bin/env python3
"""One paho-mqtt 2.x client for certmq's authentication and authorization
tests, driven by arguments; it prints one line per event (flushed), so the
test can follow it:

  connack RC               the CONNACK (RC as a number)
  suback RC [RC...]        a SUBACK's reason codes
  puback RC                a QoS 1 PUBLISH's acknowledgement
  msg TOPIC PAYLOAD        a message received
  disconnect RC TEXT       the broker closed the connection (MQTT 5: its
                           DISCONNECT reason code and reason string)
  done                     the steps ran and HOLD seconds passed

Usage: paho_access.py HOST PORT VERSION(311|5) [--user U] [--password P]
       [--client-id ID] [--cafile F [--cert F --key F]]
       [--subscribe FILTER]... [--publish TOPIC[=PAYLOAD]]... [--retain]
       [--hold SECS]
Every wait is bounded.
"""

import argparse
import queue
import ssl
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

WAIT = 5.0


_out = threading.Lock()


def say(*parts):
    # Whole lines only: paho calls back from its own thread.
    line = " ".join(str(p) for p in parts) + "\n"
    with _out:
        sys.stdout.write(line)
        sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("version", choices=["311", "5"])
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--client-id", default="")
    ap.add_argument("--cafile")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--subscribe", action="append", default=[])
    ap.add_argument("--publish", action="append", default=[])
    ap.add_argument("--retain", action="store_true")
    ap.add_argument("--hold", type=float, default=0.0)
    a = ap.parse_args()

    v5 = a.version == "5"
    proto = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                    client_id=a.client_id, protocol=proto)
    events = queue.Queue()
    c.on_connect = lambda cl, u, flags, rc, props: events.put(("connack", rc.value))
    c.on_subscribe = lambda cl, u, mid, rcs, props: events.put(("suback", [r.value for r in rcs]))
    c.on_publish = lambda cl, u, mid, rc, props: events.put(("puback", rc.value))

    def on_disconnect(cl, u, flags, rc, props):
        text = getattr(props, "ReasonString", "") if props is not None else ""
        events.put(("disconnect", rc.value, text))

    c.on_disconnect = on_disconnect
    c.on_message = lambda cl, u, m: say("msg", m.topic, m.payload.decode(errors="replace"))
    if a.user is not None:
        c.username_pw_set(a.user, a.password)
    if a.cafile:
        ctx = ssl.create_default_context(cafile=a.cafile)
        if a.cert:
            ctx.load_cert_chain(a.cert, a.key)
        c.tls_set_context(ctx)
    c.connect(a.host, a.port, keepalive=30)
    c.loop_start()

    def wait(kind):
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                ev = events.get(timeout=deadline - time.monotonic())
            except queue.Empty:
                break
            if ev[0] == "disconnect":
                say("disconnect", ev[1], ev[2])
                return None
            if ev[0] == kind:
                return ev
        say("timeout", kind)
        return None

    ev = wait("connack")
    if ev is None:
        sys.exit(0)
    say("connack", ev[1])
    if ev[1] != 0:
        c.loop_stop()
        sys.exit(0)
    for f in a.subscribe:
        c.subscribe(f, qos=1)
        ev = wait("suback")
        if ev is None:
            sys.exit(0)
        say("suback", *ev[1])
    for p in a.publish:
        topic, _, payload = p.partition("=")
        c.publish(topic, payload or "x", qos=1, retain=a.retain)
        ev = wait("puback")
        if ev is None:
            sys.exit(0)
        say("puback", ev[1])
    deadline = time.monotonic() + a.hold
    while time.monotonic() < deadline:
        try:
            ev = events.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            continue
        if ev[0] == "disconnect":
            say("disconnect", ev[1], ev[2])
            c.loop_stop()
            sys.exit(0)
    say("done")
    c.disconnect()
    c.loop_stop()


if __name__ == "__main__":
    main()
