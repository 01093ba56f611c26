#!/usr/bin/env python3
"""paho-mqtt 2.x steps for certmq's persistence tests (MQTT 5).

Usage:
  paho_persist.py take-unacked HOST PORT CLIENT TOPIC
      Subscribes (QoS 1, session expiry 3600, clean start off), receives
      one message and leaves without acknowledging it. Prints the payload.
  paho_persist.py resume HOST PORT CLIENT
      Resumes that session and prints `PAYLOAD dup=0|1` of the first
      message.
  paho_persist.py puback-codes HOST PORT TOPIC SIZE COUNT
      Publishes COUNT retained QoS 1 messages of SIZE bytes under TOPIC/i
      and prints each PUBACK reason code (decimal), one per line.

Every wait is bounded; a failed step exits non-zero with its reason.
"""

import queue
import sys
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

WAIT = 10.0


def client(client_id, manual_ack=False):
    c = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )
    events = queue.Queue()
    c.on_connect = lambda c, u, flags, rc, props: events.put(("connack", flags, rc))
    c.on_subscribe = lambda c, u, mid, rcs, props: events.put(("suback", rcs))
    c.on_message = lambda c, u, msg: events.put(("message", msg))
    c.on_publish = lambda c, u, mid, rc, props: events.put(("puback", mid, rc))
    return c, events


def wait(events, kind):
    deadline = time.monotonic() + WAIT
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            sys.exit(f"no {kind} within {WAIT} s")
        try:
            e = events.get(timeout=left)
        except queue.Empty:
            continue
        if e[0] == kind:
            return e


def connect(c, events, host, port):
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    c.connect(host, port, clean_start=False, properties=props)
    c.loop_start()
    _, flags, rc = wait(events, "connack")
    if rc != 0:
        sys.exit(f"CONNACK {rc}")
    return flags


def main():
    cmd, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if cmd == "take-unacked":
        client_id, topic = sys.argv[4], sys.argv[5]
        c, events = client(client_id, manual_ack=True)
        connect(c, events, host, port)
        c.subscribe(topic, qos=1)
        wait(events, "suback")
        print("subscribed", flush=True)
        _, msg = wait(events, "message")
        print(msg.payload.decode(), flush=True)
        # Leaves without PUBACK: the message stays in flight.
        c.disconnect()
        c.loop_stop()
    elif cmd == "resume":
        client_id = sys.argv[4]
        c, events = client(client_id)
        flags = connect(c, events, host, port)
        if not flags.session_present:
            sys.exit("session not present")
        _, msg = wait(events, "message")
        print(f"{msg.payload.decode()} dup={int(msg.dup)}", flush=True)
        c.disconnect()
        c.loop_stop()
    elif cmd == "puback-codes":
        topic, size, count = sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
        c, events = client("paho-puback")
        connect(c, events, host, port)
        for i in range(count):
            c.publish(f"{topic}/{i}", b"x" * size, qos=1, retain=True)
            _, _, rc = wait(events, "puback")
            print(int(rc.value), flush=True)
        c.disconnect()
        c.loop_stop()
    else:
        sys.exit(f"unknown step {cmd}")


if __name__ == "__main__":
    main()
