"""The sans-IO holepunch core (``p2p_transport.hyperdht.holepunch``) without trio: NAT
classification as ``nat.js``, the payload box and tokens, the client's round decisions, the
server's answers, the strategies' probe schedules, the random-punch limiter, and the path choice."""

from __future__ import annotations

import random

import pytest

from p2p_transport.cenc import SocketAddress as A
from p2p_transport.hyperdht import holepunch as hp
from p2p_transport.hyperdht.messages import (
    Error,
    Firewall,
    HolepunchInfo,
    HolepunchPayload,
    NoisePayload,
    RelayInfo,
)

NODES = [A("100.64.0.2", 4000 + i) for i in range(6)]


def sampler(seen: list[A], firewalled: bool = True) -> hp.NatSampler:
    nat = hp.NatSampler(firewalled=firewalled)
    for node, addr in zip(NODES, seen, strict=False):
        nat.add(addr, node)
    return nat


def test_nat_consistent_after_three_equal_samples() -> None:
    nat = sampler([A("1.2.3.4", 5000)] * 2)
    assert nat.firewall == Firewall.UNKNOWN and not nat.done
    nat.add(A("1.2.3.4", 5000), NODES[5])
    assert nat.firewall == Firewall.CONSISTENT and nat.done
    assert nat.addresses == (A("1.2.3.4", 5000),)


def test_nat_random_when_every_port_differs() -> None:
    nat = sampler([A("1.2.3.4", 5000 + i) for i in range(4)])
    assert nat.firewall == Firewall.RANDOM and nat.done
    assert nat.addresses == (A("1.2.3.4", 0),)


def test_nat_two_of_four_on_one_host_is_random_and_one_node_counts_once() -> None:
    nat = hp.NatSampler()
    nat.add(A("1.2.3.4", 5000), NODES[0])
    nat.add(A("1.2.3.4", 5000), NODES[0])  # the same node again: ignored
    assert nat.sampled == 1
    for node, port in zip(NODES[1:4], (5000, 6000, 7000), strict=True):
        nat.add(A("1.2.3.4", port), node)
    assert nat.firewall == Firewall.RANDOM


def test_nat_not_firewalled_is_open_and_frozen_keeps_its_answer() -> None:
    assert sampler([A("1.2.3.4", 1)], firewalled=False).firewall == Firewall.OPEN
    nat = sampler([A("1.2.3.4", 5000)] * 3)
    nat.freeze()
    nat.add(A("1.2.3.4", 9), NODES[4])
    nat.add(A("1.2.3.4", 8), NODES[5])
    assert nat.firewall == Firewall.CONSISTENT
    nat.unfreeze()
    assert nat.firewall == Firewall.CONSISTENT  # 3 of 5 still agree


def test_secure_payload_round_trip_tamper_and_tokens() -> None:
    secret = bytes(range(32))
    a, b = hp.SecurePayload(secret), hp.SecurePayload(secret)
    msg = HolepunchPayload(firewall=Firewall.CONSISTENT, round=2, punching=True,
                           addresses=(A("1.2.3.4", 5),), token=b"t" * 32)
    box = a.encrypt(msg)
    assert b.decrypt(box) == msg
    assert b.decrypt(box[:-1] + bytes([box[-1] ^ 1])) is None
    assert hp.SecurePayload(bytes(32)).decrypt(box) is None
    assert b.decrypt(b"short") is None
    assert a.token(A("1.2.3.4", 1)) == a.token(A("1.2.3.4", 9))  # keyed by host only
    assert a.token(A("1.2.3.4", 1)) != b.token(A("1.2.3.4", 1))  # local secrets differ


def test_secure_payload_layout_is_nonce_then_secretbox() -> None:
    import nacl.secret
    secret = bytes(range(32))
    box = hp.SecurePayload(secret).encrypt(HolepunchPayload(round=1), nonce=bytes(24))
    # PyNaCl's SecretBox output is nonce ‖ MAC ‖ ciphertext: libsodium's secretbox_easy
    assert nacl.secret.SecretBox(secret).decrypt(box) == bytes([0, 0, 0, 1])


def remote(firewall: int, *addrs: tuple[A, bool], punching: bool = True) -> hp.RemoteState:
    return hp.RemoteState(firewall, tuple(hp.RemoteAddress(a, v) for a, v in addrs), punching)


def test_strategies() -> None:
    r1 = A("5.6.7.8", 1000)
    assert hp.punch_strategy(Firewall.CONSISTENT, remote(Firewall.CONSISTENT, (r1, False))) == \
        (hp.Strategy.CONSISTENT, None)
    assert hp.punch_strategy(Firewall.OPEN, remote(Firewall.RANDOM, (r1, True))) == \
        (hp.Strategy.RANDOM_PROBES, r1)
    assert hp.punch_strategy(Firewall.RANDOM, remote(Firewall.CONSISTENT, (r1, True))) == \
        (hp.Strategy.BIRTHDAY, r1)
    # random needs a verified address; random against random never punches
    assert hp.punch_strategy(Firewall.RANDOM, remote(Firewall.CONSISTENT, (r1, False))) is None
    assert hp.punch_strategy(Firewall.RANDOM, remote(Firewall.RANDOM, (r1, True))) is None
    assert hp.punch_strategy(Firewall.CONSISTENT, remote(Firewall.CONSISTENT)) is None


def test_consistent_plan_probes_verified_each_second_unverified_every_fourth() -> None:
    v, u = A("5.6.7.8", 1), A("5.6.7.8", 2)
    plan = list(hp.punch_plan(hp.Strategy.CONSISTENT, remote(Firewall.CONSISTENT, (v, True),
                                                             (u, False)), None, is_initiator=True))
    probes = [a for a in plan if isinstance(a, hp.Probe)]
    assert sum(p.address == v for p in probes) == hp.CONSISTENT_PROBES
    assert sum(p.address == u for p in probes) == 2  # tries 4 and 8
    assert sum(a.seconds for a in plan if isinstance(a, hp.Wait)) == hp.CONSISTENT_PROBES
    server = list(hp.punch_plan(hp.Strategy.CONSISTENT, remote(Firewall.CONSISTENT, (v, True)),
                                None, is_initiator=False))
    assert server[0] == hp.Wait(1.0)


def test_random_and_birthday_plans() -> None:
    t = A("5.6.7.8", 4444)
    spray = list(hp.punch_plan(hp.Strategy.RANDOM_PROBES, remote(Firewall.RANDOM), t,
                               is_initiator=True, rng=random.Random(1)))
    ports = [a.address.port for a in spray if isinstance(a, hp.Probe)]
    assert len(ports) == hp.RANDOM_PROBES and all(1000 <= p < 65536 for p in ports)
    assert {a.seconds for a in spray if isinstance(a, hp.Wait)} == {hp.RANDOM_PROBE_INTERVAL}
    bday = list(hp.punch_plan(hp.Strategy.BIRTHDAY, remote(Firewall.CONSISTENT), t,
                              is_initiator=False))
    assert sum(isinstance(a, hp.OpenSocket) for a in bday) == hp.BIRTHDAY_SOCKETS - 1
    probes = [a for a in bday if isinstance(a, hp.Probe)]
    assert {p.address for p in probes} == {t}
    assert {p.socket for p in probes} == set(range(hp.BIRTHDAY_SOCKETS))
    assert probes[0].low_ttl and not probes[-1].low_ttl


def test_random_punch_limiter() -> None:
    lim = hp.RandomPunchLimiter()
    assert lim.allowed(0.0)
    lim.start()
    assert not lim.allowed(0.0)  # one at a time
    lim.finish(5.0)
    assert not lim.allowed(24.9)  # 20 s apart
    assert lim.allowed(25.0)


def test_after_probe_decisions() -> None:
    consistent = sampler([A("1.2.3.4", 5)] * 3)
    unknown = hp.NatSampler()
    random_nat = sampler([A("1.2.3.4", p) for p in range(4)])
    assert hp.after_probe(remote(Firewall.UNKNOWN), consistent, b"t", retry=True) == \
        hp.ProbeVerdict.RETRY
    assert hp.after_probe(remote(Firewall.CONSISTENT), consistent, None, retry=True) == \
        hp.ProbeVerdict.RETRY
    assert hp.after_probe(remote(Firewall.RANDOM), consistent, b"t", retry=False) == \
        hp.ProbeVerdict.PUNCH
    with pytest.raises(hp.HolepunchFailed) as e:
        hp.after_probe(remote(Firewall.CONSISTENT), unknown, b"t", retry=False)
    assert e.value.code == "HOLEPUNCH_PROBE_TIMEOUT"
    with pytest.raises(hp.HolepunchFailed) as e:
        hp.after_probe(remote(Firewall.RANDOM), random_nat, b"t", retry=False)
    assert e.value.code == "HOLEPUNCH_DOUBLE_RANDOMIZED_NATS"
    assert isinstance(e.value, hp.PeerConnectionFailed)


def test_check_reply() -> None:
    with pytest.raises(hp.HolepunchFailed, match="HOLEPUNCH_INVALID"):
        hp.check_reply(None, try_later_ok=False)
    with pytest.raises(hp.HolepunchFailed, match="REMOTE_ABORTED"):
        hp.check_reply(HolepunchPayload(error=Error.ABORTED), try_later_ok=False)
    with pytest.raises(hp.HolepunchFailed, match="TRY_LATER"):
        hp.check_reply(HolepunchPayload(error=Error.TRY_LATER), try_later_ok=False)
    assert hp.check_reply(HolepunchPayload(error=Error.TRY_LATER), try_later_ok=True).error == \
        Error.TRY_LATER


def test_server_answers_rounds_and_verifies_echoed_tokens() -> None:
    secret = bytes(range(32))
    client_box = hp.SecurePayload(secret)
    server = hp.ServerPunch(hp.SecurePayload(secret), sampler([A("9.9.9.9", 7)] * 3))
    client = A("1.2.3.4", 5555)
    probe = hp.probe_payload(0, sampler([A("1.2.3.4", 5555)] * 3), A("9.9.9.9", 7))
    msg = server.receive(client_box.encrypt(probe), client, True)
    assert msg is not None and server.fast_open(msg)
    reply = client_box.decrypt(server.answer(msg, client, True))
    assert reply is not None and reply.token is not None and reply.firewall == Firewall.CONSISTENT
    assert not server.remote.addresses[0].verified
    # round two echoes the token: the client's address is verified
    punch = hp.punch_payload(1, sampler([A("1.2.3.4", 5555)] * 3), token=None,
                             remote_token=reply.token)
    msg = server.receive(client_box.encrypt(punch), client, True)
    assert msg is not None and server.remote.punching and server.remote.addresses[0].verified
    # a stale round does not overwrite, a foreign box is ignored, an abort is reported
    assert server.receive(hp.SecurePayload(bytes(32)).encrypt(punch), client, True) is None
    aborted = client_box.decrypt(server.abort(Error.TRY_LATER))
    assert aborted is not None and aborted.error == Error.TRY_LATER


def payload(firewall: int, addrs: tuple[A, ...], *, holepunch: bool) -> NoisePayload:
    info = HolepunchInfo(0, (RelayInfo(A("100.64.0.2", 1), A("100.64.0.9", 2)),)) \
        if holepunch else None
    return NoisePayload(firewall=firewall, addresses4=addrs, holepunch=info)


SERVER_SEEN = A("100.64.0.9", 2)
CLIENT_SEEN = A("100.64.0.7", 3)


def choose(remote_: NoisePayload, *, ours: int = Firewall.UNKNOWN, relayed: bool = True,
           first: A | None = None, client: A = CLIENT_SEEN) -> hp.PathDecision:
    return hp.choose_path(remote_, server_address=SERVER_SEEN, client_address=client,
                          relayed=relayed, our_firewall=ours, first_packet=first)


def test_path_choice() -> None:
    natted = payload(Firewall.UNKNOWN, (A("198.18.1.2", 2),), holepunch=True)
    old_python = payload(Firewall.UNKNOWN, (A("198.18.1.2", 2),), holepunch=False)
    public = payload(Firewall.OPEN, (A("198.18.1.2", 2), A("100.64.0.9", 2)), holepunch=False)
    assert choose(natted, first=A("1.1.1.1", 1)) == hp.Connect(A("1.1.1.1", 1))
    assert choose(natted, relayed=False) == hp.Connect(SERVER_SEEN)
    assert choose(public) == hp.Connect(A("100.64.0.9", 2))
    assert choose(natted) == hp.Punch()
    assert choose(natted, ours=Firewall.OPEN) == hp.PassiveWait()
    lan = payload(Firewall.UNKNOWN, (A("192.168.1.2", 2), A("198.18.1.2", 2)), holepunch=True)
    assert choose(lan, client=A(SERVER_SEEN.host, 9)) == \
        hp.LanPing((A("192.168.1.2", 2),), then_punch=True)
    # 198.18/15 is reserved (bogon's isReserved), so no LAN ping there: punch
    assert choose(natted, client=A(SERVER_SEEN.host, 9)) == hp.Punch()
    unreachable = choose(old_python)
    assert isinstance(unreachable, hp.Unreachable)
    assert isinstance(unreachable.error, hp.HolepunchFailed)
    assert unreachable.error.code == "CANNOT_HOLEPUNCH"
    # a server that does not punch, reachable because we are OPEN: connect to what it said
    assert choose(old_python, ours=Firewall.OPEN) == hp.Connect(SERVER_SEEN)
    # ... unless the relay saw it at its own address, or its address is unknown
    at_home = payload(Firewall.UNKNOWN, (SERVER_SEEN,), holepunch=False)
    wildcard = payload(Firewall.UNKNOWN, (A("0.0.0.0", 4000),), holepunch=False)
    assert choose(at_home) == hp.Connect(SERVER_SEEN)
    assert choose(wildcard) == hp.Connect(SERVER_SEEN)
    assert hp.is_bogon("127.0.0.1") and hp.is_bogon("192.168.1.20")
    assert not hp.is_bogon("8.8.8.8")


def test_blind_relay_pair_codec_matches_node_bytes() -> None:
    """blind-relay's ``pair`` message; the hex is what Node's ``blind-relay`` 1.6.1 encodes."""
    from p2p_transport.hyperdht import relay

    a = relay.Pair(True, bytes([7]) * 32, 300)
    b = relay.Pair(False, bytes([1]) * 32, 5, 2)
    assert relay.encode_pair(a).hex() == "01" + "07" * 32 + "fd2c0100"
    assert relay.encode_pair(b).hex() == "00" + "01" * 32 + "0502"
    assert relay.decode_pair(relay.encode_pair(a)) == a
    with pytest.raises(relay.RelayFailed):
        relay.decode_pair(b"\x01short")


def test_server_decisions() -> None:
    """``ServerPunch.decide``: fast open, starting the punch once, TRY_LATER under the random
    limit, aborts."""
    secret = bytes(range(32))
    box = hp.SecurePayload(secret)
    client = A("1.2.3.4", 5555)
    me = A("9.9.9.9", 7)
    client_nat = sampler([client] * 3)

    def server(nat_seen: list[A]) -> hp.ServerPunch:
        return hp.ServerPunch(hp.SecurePayload(secret), sampler(nat_seen))

    s = server([me] * 3)
    lim = hp.RandomPunchLimiter()
    msg = s.receive(box.encrypt(hp.probe_payload(0, client_nat, me)), client, True)
    assert msg is not None
    first = s.decide(msg, client, True, lim, 0.0)
    assert first.fast_open == client and first.punch is None
    reply = box.decrypt(first.reply)
    assert reply is not None and reply.token is not None
    msg = s.receive(box.encrypt(hp.punch_payload(1, client_nat, token=None,
                                                 remote_token=reply.token)), client, True)
    assert msg is not None
    second = s.decide(msg, client, True, lim, 0.0)
    assert second.punch == (hp.Strategy.CONSISTENT, None) and not second.random_punch
    punching = box.decrypt(second.reply)
    assert punching is not None and punching.punching
    assert s.decide(msg, client, True, lim, 0.0).punch is None  # started once
    # a random client while another random punch runs: TRY_LATER
    r = server([me] * 3)
    random_client = sampler([A("1.2.3.4", p) for p in range(4)])
    r.receive(box.encrypt(hp.probe_payload(0, random_client, None)), client, True)
    first = r.decide(hp.probe_payload(0, random_client, None), client, True, lim, 0.0)
    token = box.decrypt(first.reply)
    assert token is not None
    msg = r.receive(box.encrypt(hp.punch_payload(1, random_client, token=None,
                                                 remote_token=token.token)), client, True)
    assert msg is not None
    lim.start()
    busy = box.decrypt(r.decide(msg, client, True, lim, 0.0).reply)
    assert busy is not None and busy.error == Error.TRY_LATER
    # our NAT unknown: abort
    u = hp.ServerPunch(hp.SecurePayload(secret), hp.NatSampler())
    msg = u.receive(box.encrypt(hp.probe_payload(0, client_nat, None)), client, True)
    assert msg is not None
    aborted = box.decrypt(u.decide(msg, client, True, lim, 0.0).reply)
    assert aborted is not None and aborted.error == Error.ABORTED
