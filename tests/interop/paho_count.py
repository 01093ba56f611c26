#!/usr/bin/env python3
"""A paho-mqtt 2.x subscriber for certmq's flow-control tests.

Usage:
  paho_count.py HOST PORT TOPIC QOS COUNT SECONDS [PROTOCOL]
      Subscribes to TOPIC, prints "subscribed" once SUBACK is in, then
      counts messages until COUNT arrived or SECONDS passed without a new
      one. Payloads start with a decimal sequence number (then, maybe, a
      space and padding); prints
      "received N in_order=True|False" and exits 0 when all COUNT arrived
      in order, 1 otherwise. PROTOCOL: 5 (default) or 3 (3.1.1).
"""

import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def main():
    host, port, topic, qos, count, seconds = sys.argv[1:7]
    port, qos, count, seconds = int(port), int(qos), int(count), float(seconds)
    protocol = mqtt.MQTTv311 if len(sys.argv) > 7 and sys.argv[7] == "3" else mqtt.MQTTv5
    state = {"n": 0, "next": 0, "in_order": True, "last": time.monotonic()}
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(c, u, msg):
        seq = int(msg.payload.split(b" ", 1)[0])
        if seq != state["next"]:
            state["in_order"] = False
        state["next"] = seq + 1
        state["n"] += 1
        state["last"] = time.monotonic()
        if state["n"] >= count:
            done.set()

    c = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id="paho-count",
        protocol=protocol,
    )
    c.on_message = on_message
    c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos)
    c.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
    c.connect(host, port, keepalive=60)
    c.loop_start()
    if not subscribed.wait(10):
        print("no SUBACK within 10 s", flush=True)
        sys.exit(1)
    print("subscribed", flush=True)
    while not done.wait(0.2):
        if time.monotonic() - state["last"] > seconds:
            break
    c.disconnect()
    c.loop_stop()
    ok = state["n"] == count and state["in_order"]
    print(f"received {state['n']} in_order={state['in_order']}", flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
