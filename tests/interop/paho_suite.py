#!/usr/bin/env python3
"""certmq interoperability checks with paho-mqtt 2.x (MQTT 3.1.1 and 5.0).

Usage: paho_suite.py HOST PORT. Exits non-zero, naming the failed check,
if any check fails. Every wait is bounded.
"""

import queue
import sys
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

HOST, PORT = sys.argv[1], int(sys.argv[2])
WAIT = 5.0
V5 = mqtt.MQTTv5
V311 = mqtt.MQTTv311


class Client:
    """A paho client whose callbacks feed queues the checks wait on."""

    def __init__(self, protocol, client_id=None, clean=True, will=None, expiry=None):
        self.protocol = protocol
        self.client_id = client_id or "paho-" + uuid.uuid4().hex[:8]
        kwargs = {"callback_api_version": CallbackAPIVersion.VERSION2, "client_id": self.client_id, "protocol": protocol}
        if protocol != V5:
            kwargs["clean_session"] = clean
        self.c = mqtt.Client(**kwargs)
        self.messages = queue.Queue()
        self.events = queue.Queue()
        self.c.on_connect = lambda c, u, flags, rc, props: self.events.put(("connack", flags, rc, props))
        self.c.on_subscribe = lambda c, u, mid, rcs, props: self.events.put(("suback", mid, rcs))
        self.c.on_unsubscribe = lambda c, u, mid, rcs, props: self.events.put(("unsuback", mid, rcs))
        self.c.on_message = lambda c, u, msg: self.messages.put(msg)
        self.c.on_disconnect = lambda c, u, flags, rc, props: self.events.put(("disconnect", rc))
        if will:
            topic, payload, wprops = will
            self.c.will_set(topic, payload, qos=1, properties=wprops)
        self.clean = clean
        self.expiry = expiry

    def connect(self):
        props = None
        kwargs = {}
        if self.protocol == V5:
            kwargs["clean_start"] = self.clean
            if self.expiry is not None:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = self.expiry
                kwargs["properties"] = props
        self.c.connect(HOST, PORT, keepalive=30, **kwargs)
        self.c.loop_start()
        kind, flags, rc, props = self.event("connack")
        check(not rc.is_failure, f"CONNACK refused: {rc}")
        return flags, props

    def event(self, kind):
        deadline = time.monotonic() + WAIT
        while True:
            left = deadline - time.monotonic()
            check(left > 0, f"no {kind} within {WAIT}s")
            try:
                ev = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if ev[0] == kind:
                return ev

    def subscribe(self, topic, qos=0, options=None, props=None):
        if self.protocol == V5:
            opts = options or SubscribeOptions(qos=qos)
            self.c.subscribe(topic, options=opts, properties=props)
        else:
            self.c.subscribe(topic, qos)
        return self.event("suback")[2]

    def publish(self, topic, payload, qos=0, retain=False, props=None):
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=props)
        info.wait_for_publish(WAIT)
        check(info.is_published(), f"publish to {topic} not acknowledged")

    def message(self):
        try:
            return self.messages.get(timeout=WAIT)
        except queue.Empty:
            fail(f"{self.client_id}: no message within {WAIT}s")

    def no_message(self, wait=0.3):
        try:
            msg = self.messages.get(timeout=wait)
            fail(f"{self.client_id}: unexpected message on {msg.topic}: {msg.payload!r}")
        except queue.Empty:
            pass

    def disconnect(self):
        self.c.disconnect()
        self.c.loop_stop()

    def kill(self):
        """Drop the socket without DISCONNECT."""
        self.c.loop_stop()
        self.c.socket().close()


class Failure(Exception):
    pass


def fail(msg):
    raise Failure(msg)


def check(cond, msg):
    if not cond:
        fail(msg)


CHECKS = []


def case(fn):
    CHECKS.append(fn)
    return fn


@case
def qos_levels_v311_and_v5():
    for proto in (V311, V5):
        sub = Client(proto)
        sub.connect()
        sub.subscribe("paho/q/#", 2)
        pub = Client(proto)
        pub.connect()
        for qos in (0, 1, 2):
            pub.publish(f"paho/q/{qos}", f"m{qos}".encode(), qos=qos)
            msg = sub.message()
            check(msg.topic == f"paho/q/{qos}" and msg.payload == f"m{qos}".encode() and msg.qos == qos,
                  f"qos {qos}: got {msg.topic} {msg.payload} qos {msg.qos}")
        pub.disconnect()
        sub.disconnect()


@case
def retained_message():
    pub = Client(V311)
    pub.connect()
    pub.publish("paho/retained", b"kept", qos=1, retain=True)
    sub = Client(V5)
    sub.connect()
    sub.subscribe("paho/retained", 1)
    msg = sub.message()
    check(msg.retain and msg.payload == b"kept", f"retained: {msg.payload} retain={msg.retain}")
    pub.publish("paho/retained", b"", qos=1, retain=True)
    sub.message()
    late = Client(V311)
    late.connect()
    late.subscribe("paho/retained", 1)
    late.no_message()
    for c in (pub, sub, late):
        c.disconnect()


@case
def will_message_on_abrupt_close():
    watcher = Client(V5)
    watcher.connect()
    watcher.subscribe("paho/will", 1)
    wprops = Properties(PacketTypes.WILLMESSAGE)
    wprops.UserProperty = ("why", "test")
    dying = Client(V5, will=("paho/will", b"bye", wprops))
    dying.connect()
    dying.kill()
    msg = watcher.message()
    check(msg.payload == b"bye", f"will payload {msg.payload}")
    check(("why", "test") in (msg.properties.UserProperty or []), "will user property lost")
    watcher.disconnect()


@case
def persistent_session_v5_and_v311():
    for proto in (V5, V311):
        cid = "paho-persist-" + uuid.uuid4().hex[:6]
        sub = Client(proto, cid, clean=True, expiry=300)
        sub.connect()
        sub.subscribe("paho/persist", 1)
        sub.disconnect()
        if proto == V311:
            sub = Client(proto, cid, clean=False)
            sub.connect()
            sub.subscribe("paho/persist", 1)
            sub.disconnect()
        pub = Client(V311)
        pub.connect()
        pub.publish("paho/persist", b"while-away", qos=1)
        pub.disconnect()
        back = Client(proto, cid, clean=False, expiry=300)
        flags, _ = back.connect()
        check(flags.session_present, f"{proto}: session not present on resume")
        msg = back.message()
        check(msg.payload == b"while-away", f"queued message: {msg.payload}")
        back.disconnect()


@case
def v5_properties_and_options():
    sub = Client(V5)
    sub.connect()
    sprops = Properties(PacketTypes.SUBSCRIBE)
    sprops.SubscriptionIdentifier = 42
    sub.subscribe("paho/props", options=SubscribeOptions(qos=1, noLocal=True), props=sprops)
    # no-local: the subscriber's own message does not come back.
    sub.publish("paho/props", b"self", qos=1)
    sub.no_message()
    pub = Client(V5)
    pub.connect()
    p = Properties(PacketTypes.PUBLISH)
    p.ResponseTopic = "paho/reply"
    p.CorrelationData = b"corr-1"
    p.UserProperty = [("a", "1"), ("b", "2")]
    p.ContentType = "text/plain"
    p.MessageExpiryInterval = 60
    p.PayloadFormatIndicator = 1
    pub.publish("paho/props", b"req", qos=1, props=p)
    msg = sub.message()
    mp = msg.properties
    check(mp.ResponseTopic == "paho/reply", "response topic lost")
    check(mp.CorrelationData == b"corr-1", "correlation data lost")
    check(mp.UserProperty == [("a", "1"), ("b", "2")], f"user properties: {mp.UserProperty}")
    check(mp.ContentType == "text/plain", "content type lost")
    check(42 in (mp.SubscriptionIdentifier or []), f"subscription id: {getattr(mp, 'SubscriptionIdentifier', None)}")
    check(0 < mp.MessageExpiryInterval <= 60, "message expiry not forwarded")
    sub.disconnect()
    pub.disconnect()


@case
def shared_subscription():
    members = [Client(V5) for _ in range(2)]
    for m in members:
        m.connect()
        m.subscribe("$share/workers/paho/jobs", 1)
    pub = Client(V5)
    pub.connect()
    for i in range(6):
        pub.publish("paho/jobs", str(i).encode(), qos=1)
    got = []
    for m in members:
        for _ in range(3):
            got.append(int(m.message().payload))
        m.no_message(0.2)
    check(sorted(got) == list(range(6)), f"shared delivery: {sorted(got)}")
    for c in members + [pub]:
        c.disconnect()


@case
def takeover():
    cid = "paho-takeover-" + uuid.uuid4().hex[:6]
    first = Client(V5, cid)
    first.connect()
    second = Client(V5, cid)
    second.connect()
    ev = first.event("disconnect")
    check(ev[1] == 0x8E or getattr(ev[1], "value", None) == 0x8E, f"takeover reason: {ev[1]}")
    first.c.loop_stop()
    second.disconnect()


@case
def unsubscribe():
    c = Client(V5)
    c.connect()
    c.subscribe("paho/unsub", 0)
    c.c.unsubscribe("paho/unsub")
    rcs = c.event("unsuback")[2]
    check([int(r.value) for r in rcs] == [0], f"unsuback {rcs}")
    c.publish("paho/unsub", b"x")
    c.no_message()
    c.disconnect()


def main():
    failed = 0
    for fn in CHECKS:
        start = time.monotonic()
        try:
            fn()
            print(f"ok    {fn.__name__} ({time.monotonic() - start:.2f}s)")
        except Failure as e:
            failed += 1
            print(f"FAIL  {fn.__name__}: {e}")
    print(f"{len(CHECKS) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
