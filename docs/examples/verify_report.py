#!/usr/bin/env python3
"""An auditor's own check of a lockstep pre-open report, written from
docs/protocol.md alone (no lockstep code): the audit chain of the report's
segment, that the report's check record is in it with the facts the report
gives (its hosts from the gate state it names), and the bytes its Ed25519
signature covers.

    verify_report.py REPORT.json AUDIT-EXPORT.jsonl OUT-DIR

Exits 1 naming what does not hold. On success it writes OUT-DIR/signed.bin
(the signed bytes), OUT-DIR/signature.bin and OUT-DIR/public.pem, for:

    openssl pkeyutl -verify -pubin -inkey OUT-DIR/public.pem -rawin \\
        -in OUT-DIR/signed.bin -sigfile OUT-DIR/signature.bin
"""
import base64
import hashlib
import json
import os
import sys

ORDER = ["seq", "at_unix_ms", "actor", "action", "host", "role", "detail", "facts", "prev_hash", "hash"]


def compact(value, sort_keys=False):
    return json.dumps(value, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(record):
    ordered = {}
    for name in ORDER:
        if name == "facts" and not record.get("facts"):
            continue  # absent when empty
        ordered[name] = "" if name == "hash" else record.get(name, "" if name not in ("seq", "at_unix_ms") else 0)
    return hashlib.sha256(b"lockstep.v1.audit\0" + compact(ordered)).hexdigest()


def state_hosts(records, role, seq):
    """The hosts of the gate state at record `seq`: back through `base` to a
    complete state, then forwards, each step's digest checked."""
    chain = []
    while True:
        r = records.get(seq)
        if r is None:
            fail("gate state record %d is missing from the export" % seq)
        if r["action"] != "gate.state" or r["role"] != role:
            fail("record %d is not a gate state of %s" % (seq, role))
        state = json.loads(r["facts"])
        chain.append((seq, state))
        if state["base"] == 0:
            break
        seq = state["base"]
    hosts = {}
    for seq, state in reversed(chain):
        if state["base"] == 0:
            hosts = {}
        for gone in state.get("removed", []):
            hosts.pop(gone, None)
        for h in state["hosts"]:
            hosts[h["host"]] = h
        listed = [hosts[name] for name in sorted(hosts, key=lambda n: n.encode())]
        if hashlib.sha256(b"lockstep.v1.gate-state\0" + compact(listed)).hexdigest() != state["digest"]:
            fail("gate state record %d does not add up to its digest" % seq)
    return listed, state["digest"], chain[-1][0]


def fail(why):
    print("DOES NOT HOLD: " + why)
    sys.exit(1)


def main(report_path, export_path, out_dir):
    doc = json.load(open(report_path, encoding="utf-8"))
    body, sig = doc["report"], doc["signature"]
    seg = body["segment"]
    records = {}
    for line in open(export_path, encoding="utf-8"):
        if line.strip():
            r = json.loads(line)
            records[r["seq"]] = r
    prev = seg["first_prev_hash"]
    for seq in range(seg["first_seq"], seg["last_seq"] + 1):
        r = records.get(seq)
        if r is None:
            fail("record %d is missing from the export" % seq)
        if r["prev_hash"] != prev:
            fail("record %d does not follow the one before it" % seq)
        if record_hash(r) != r["hash"]:
            fail("record %d does not match its hash" % seq)
        prev = r["hash"]
    if prev != seg["last_hash"]:
        fail("the segment does not end in the hash the report names")
    check = records[body["check"]["seq"]]
    facts = json.loads(check["facts"])
    if check["action"] != "gate.checked" or check["role"] != body["role"]:
        fail("the report's check record is not a gate check of its role")
    hosts = facts.get("hosts", [])
    if "state" in facts:
        hosts, digest, first = state_hosts(records, body["role"], facts["state"]["seq"])
        if digest != facts["state"]["digest"]:
            fail("the check names a gate state digest its records do not give")
        if first < seg["first_seq"]:
            fail("the segment does not reach back to the gate state the check rests on")
    if hosts != body["hosts"] or facts["release"] != body["release"] or facts["exit"] != body["check"]["exit"]:
        fail("the check record's facts are not the report's hosts, release and exit")
    if sig["algorithm"] != "Ed25519":
        fail("not an Ed25519 signature")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "signed.bin"), "wb") as f:
        f.write(b"lockstep.v1.report\0" + compact(body, sort_keys=True))
    with open(os.path.join(out_dir, "signature.bin"), "wb") as f:
        f.write(bytes.fromhex(sig["value"]))
    # SubjectPublicKeyInfo for Ed25519: a fixed 12-byte prefix, then the key.
    spki = bytes.fromhex("302a300506032b6570032100") + bytes.fromhex(sig["public_key"])
    with open(os.path.join(out_dir, "public.pem"), "w") as f:
        f.write("-----BEGIN PUBLIC KEY-----\n" + base64.b64encode(spki).decode() + "\n-----END PUBLIC KEY-----\n")
    print("chain and facts hold: records %d to %d; check the signature with openssl" % (seg["first_seq"], seg["last_seq"]))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print(__doc__)
        sys.exit(2)
    main(*sys.argv[1:])
